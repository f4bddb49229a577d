"""The cascade policy: pick the tier to start at, per kind of prompt, and the output budget per tier.

Where to start is the only decision made before any model answers; after that the learned verifier
(``routing.verifier.LearnedVerifierCheck``) decides, answer by answer, whether to escalate.
Start thresholds, output budgets and verifier margins are kept per prompt kind
(``routing.prompt_kind``) and calibrated together in training; a kind the artifact has no
settings for uses the top-level ones.
"""

from __future__ import annotations

from typing import Any

from core.messages import Prediction, PromptMessage, RoutingDecision, Tier
from core.registry import ModelRegistry
from routing.policy import RoutingPolicy
from routing.prompt_kind import routing_kind, settings_for_kind

_TIER_NAMES = {t.value for t in Tier}


def _budgets(value: dict[str, int] | None) -> dict[str, int]:
    budgets = {str(k): int(v) for k, v in (value or {}).items()}
    unknown = set(budgets) - _TIER_NAMES
    if unknown or any(v < 1 for v in budgets.values()):
        raise ValueError(f"max_output_tokens must map tiers {sorted(_TIER_NAMES)} to positive ints, got {value}")
    return budgets


class KindSettings:
    def __init__(self, expensive_if_complex_at_least: float = 1.01, skip_cheap_if_simple_below: float = 0.0,
                 max_output_tokens: dict[str, int] | None = None) -> None:
        self.expensive_if_complex_at_least = float(expensive_if_complex_at_least)
        self.skip_cheap_if_simple_below = float(skip_cheap_if_simple_below)
        self.max_output_tokens = _budgets(max_output_tokens)

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"expensive_if_complex_at_least": self.expensive_if_complex_at_least,
                               "skip_cheap_if_simple_below": self.skip_cheap_if_simple_below}
        if self.max_output_tokens:
            doc["max_output_tokens"] = dict(self.max_output_tokens)
        return doc


class CascadePolicy(RoutingPolicy):
    """Start at the expensive tier when ``p(complex)`` is high, skip the cheap tier when ``p(simple)``
    is low, otherwise start cheap and let the verifier escalate; each with the prompt kind's settings."""

    name = "cascade"

    def __init__(self, expensive_if_complex_at_least: float = 1.01, skip_cheap_if_simple_below: float = 0.0,
                 max_output_tokens: dict[str, int] | None = None,
                 by_kind: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default = KindSettings(expensive_if_complex_at_least, skip_cheap_if_simple_below, max_output_tokens)
        self.by_kind = {kind: KindSettings(**settings) for kind, settings in (by_kind or {}).items()}

    def params(self) -> dict[str, Any]:
        doc = self.default.as_json()
        if self.by_kind:
            doc["by_kind"] = {kind: s.as_json() for kind, s in sorted(self.by_kind.items())}
        return doc

    def settings_for(self, kind: str) -> KindSettings:
        return settings_for_kind(self.by_kind, kind, self.default)

    def base_tier(self, prediction: Prediction, prompt: PromptMessage) -> tuple[Tier, str]:
        kind = routing_kind(prompt.prompt, prediction.topic)
        settings = self.settings_for(kind)
        p_simple = prediction.probabilities.get("simple", 0.0)
        p_complex = prediction.probabilities.get("complex", 0.0)
        if p_complex >= settings.expensive_if_complex_at_least:
            return Tier.expensive, (f"{kind}: p(complex)={p_complex:.2f} >= "
                                    f"{settings.expensive_if_complex_at_least:.2f}")
        if p_simple < settings.skip_cheap_if_simple_below:
            return Tier.mid, f"{kind}: p(simple)={p_simple:.2f} < {settings.skip_cheap_if_simple_below:.2f}: skip cheap"
        return Tier.cheap, f"{kind}: start cheap (p(simple)={p_simple:.2f}); the verifier escalates"

    def decide(self, prompt: PromptMessage, prediction: Prediction, registry: ModelRegistry,
               classifier_name: str) -> RoutingDecision:
        decision = super().decide(prompt, prediction, registry, classifier_name)
        kind = routing_kind(prompt.prompt, prediction.topic)
        return decision.model_copy(update={"prompt_kind": kind, "topic": prediction.topic,
                                           "max_output_tokens": dict(self.settings_for(kind).max_output_tokens)})
