"""The router: classifier + policy on the model ladder. The live classify agent, the offline harness
and replay all route through ``Router.route``; a request that names its model is sent to it by
``direct_decision`` (the API does so without the classify hop, and the provider agent then adds the
prediction with ``Router.with_prediction``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from classifier.base import Classifier
from classifier.topic import TopicModel
from core.messages import TIER_ORDER, Prediction, PromptMessage, RoutingDecision
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

    def predict(self, prompts: Sequence[PromptMessage]) -> list[Prediction]:
        texts = [p.prompt for p in prompts]
        predictions = self.classifier.predict(texts)
        if self.topic_model is not None:
            predictions = [prediction.model_copy(update={"topic": topic})
                           for prediction, topic in zip(predictions, self.topic_model.predict(texts), strict=True)]
        return predictions

    def route(self, prompts: Sequence[PromptMessage]) -> list[RoutingDecision]:
        decisions = [
            self.with_prediction(direct_decision(prompt, self.registry), prediction) if prompt.requested_model
            else self.policy.decide(prompt, prediction, self.registry, self.classifier.name)
            for prompt, prediction in zip(prompts, self.predict(prompts), strict=True)
        ]
        for decision in decisions:
            decision.router_version, decision.artifact = self.version, self.artifact
        return decisions

    def with_prediction(self, decision: RoutingDecision, prediction: Prediction | None = None,
                        prompt: PromptMessage | None = None) -> RoutingDecision:
        """``decision`` (a direct one) with this router's prediction for its prompt, recorded for A/B: what
        the classifier would have said of a request that named its model."""
        if prediction is None:
            assert prompt is not None
            [prediction] = self.predict([prompt])
        return decision.model_copy(update={
            "label": prediction.label, "confidence": prediction.confidence, "probabilities": prediction.probabilities,
            "classifier": self.classifier.name, "topic": prediction.topic,
            "router_version": self.version, "artifact": self.artifact})


def direct_decision(prompt: PromptMessage, registry: ModelRegistry) -> RoutingDecision:
    """The decision for a request that names a configured model: that model, alone (no escalation), capped
    by ``max_tier`` like any decision. Unclassified (``label`` None) until ``Router.with_prediction``."""
    spec = registry.get(prompt.requested_model or "")
    return capped(RoutingDecision(model=spec.name, tier=spec.tier, reasons=[f"requested model {spec.name}"],
                                  policy="direct"), prompt, registry)


def capped(decision: RoutingDecision, prompt: PromptMessage, registry: ModelRegistry) -> RoutingDecision:
    """The decision moved down to ``prompt.max_tier`` when it chose a tier above it (a budget is near)."""
    if prompt.max_tier is None or TIER_ORDER.index(decision.tier) <= TIER_ORDER.index(prompt.max_tier):
        return decision
    spec = registry.by_tier(prompt.max_tier)
    return decision.model_copy(update={
        "model": spec.name, "tier": spec.tier,
        "reasons": [*decision.reasons, f"budget near: capped at the {spec.tier.value} tier ({spec.name})"]})
