"""The cascade policy: pick the tier to start at from the prompt classifier's probabilities.

Where to start is the only decision made before any model answers; after that the learned verifier
(``classifier.verifier.LearnedVerifierCheck``) decides, answer by answer, whether to escalate.
Both knobs are calibrated together in training and saved in the artifact.
"""

from __future__ import annotations

from typing import Any

from classifier.policy import RoutingPolicy, register_policy
from core.messages import Prediction, PromptMessage, Tier


@register_policy("cascade")
class CascadePolicy(RoutingPolicy):
    """Start at the expensive tier when ``p(complex)`` is high, skip the cheap tier when ``p(simple)``
    is low, otherwise start cheap and let the verifier escalate."""

    def __init__(self, expensive_if_complex_at_least: float = 1.01, skip_cheap_if_simple_below: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expensive_if_complex_at_least = expensive_if_complex_at_least
        self.skip_cheap_if_simple_below = skip_cheap_if_simple_below

    def params(self) -> dict[str, Any]:
        return {"expensive_if_complex_at_least": self.expensive_if_complex_at_least,
                "skip_cheap_if_simple_below": self.skip_cheap_if_simple_below}

    def base_tier(self, prediction: Prediction, prompt: PromptMessage) -> tuple[Tier, str]:
        p_simple = prediction.probabilities.get("simple", 0.0)
        p_complex = prediction.probabilities.get("complex", 0.0)
        if p_complex >= self.expensive_if_complex_at_least:
            return Tier.expensive, f"p(complex)={p_complex:.2f} >= {self.expensive_if_complex_at_least:.2f}"
        if p_simple < self.skip_cheap_if_simple_below:
            return Tier.mid, f"p(simple)={p_simple:.2f} < {self.skip_cheap_if_simple_below:.2f}: skip cheap"
        return Tier.cheap, f"start cheap (p(simple)={p_simple:.2f}); the verifier escalates"
