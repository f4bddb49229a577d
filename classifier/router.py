"""The router: classifier + policy on the model ladder. The live classify agent, the offline harness
and replay all route through ``Router.route``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from classifier.base import Classifier
from classifier.cascade import Escalation
from classifier.policy import RoutingPolicy
from core.messages import PromptMessage, RoutingDecision
from providers.registry import ModelRegistry

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        classifier: Classifier,
        policy: RoutingPolicy,
        registry: ModelRegistry,
        escalation: Escalation | None = None,
    ) -> None:
        self.classifier = classifier
        self.policy = policy
        self.registry = registry
        self.escalation = escalation or Escalation(registry)

    def route(self, prompts: Sequence[PromptMessage]) -> list[RoutingDecision]:
        predictions = self.classifier.predict([p.prompt for p in prompts])
        return [
            self.policy.decide(prompt, prediction, self.registry, self.classifier.name)
            for prompt, prediction in zip(prompts, predictions, strict=True)
        ]
