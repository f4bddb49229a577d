"""The router: classifier + policy on the model ladder. The live classify agent, the offline harness
and replay all route through ``Router.route``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from classifier.base import Classifier
from classifier.topic import TopicModel
from core.messages import Prediction, PromptMessage, RoutingDecision
from core.registry import ModelRegistry
from routing.policy import RoutingPolicy

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        classifier: Classifier,
        policy: RoutingPolicy,
        registry: ModelRegistry,
        topic_model: TopicModel | None = None,
    ) -> None:
        self.classifier = classifier
        self.policy = policy
        self.registry = registry
        self.topic_model = topic_model
        # Recorded on every decision: which policy / artifact decided (routing.factory sets an artifact's digest).
        self.version = f"heuristic:{policy.name}"
        self.artifact: str | None = None

    def route(self, prompts: Sequence[PromptMessage]) -> list[RoutingDecision]:
        texts = [p.prompt for p in prompts]
        predictions = self.classifier.predict(texts)
        if self.topic_model is not None:
            predictions = [prediction.model_copy(update={"topic": topic})
                           for prediction, topic in zip(predictions, self.topic_model.predict(texts), strict=True)]
        decisions = [
            self.requested(prompt, prediction) if prompt.requested_model
            else self.policy.decide(prompt, prediction, self.registry, self.classifier.name)
            for prompt, prediction in zip(prompts, predictions, strict=True)
        ]
        for decision in decisions:
            decision.router_version, decision.artifact = self.version, self.artifact
        return decisions

    def requested(self, prompt: PromptMessage, prediction: Prediction) -> RoutingDecision:
        """A request that names a configured model goes to it; the prediction is still recorded (for A/B)."""
        spec = self.registry.get(prompt.requested_model)
        return RoutingDecision(label=prediction.label, confidence=prediction.confidence,
                               probabilities=prediction.probabilities, model=spec.name, tier=spec.tier,
                               reasons=[f"requested model {spec.name}"], policy="direct",
                               classifier=self.classifier.name, topic=prediction.topic)
