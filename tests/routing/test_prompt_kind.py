"""Prompt kinds and the cascade policy's per-kind settings (start tier and output budgets)."""

from __future__ import annotations

import pytest

from core.messages import Prediction, PromptMessage, Tier
from core.registry import ModelRegistry, Prices
from routing.cascade_policy import CascadePolicy
from routing.prompt_kind import prompt_kind
from training.data import Ladder, replay_registry


@pytest.mark.parametrize(("prompt", "kind"), [
    ("def f(x):\n    return x + 1\nassert f(1) == ??", "code"),
    ("Find all $x$ such that $x^2 = 4$.", "math"),
    ("Compute \\frac{1}{2} + \\frac{1}{3}.", "math"),
    ("Janet sells eggs at $2 each and buys feed for $3. What is her profit?", "general"),
    ("Which is a mammal?\nOptions:\nA. shark\nB. whale\nC. trout", "multiple_choice"),
    ("A car goes 60 km in 1.5 h, then 40 km in 0.5 h. Mean speed?\nOptions:\nA. 40\nB. 50\nC. 60",
     "multiple_choice_quantitative"),
])
def test_prompt_kind_reads_the_surface(prompt: str, kind: str) -> None:
    assert prompt_kind(prompt) == kind


def _registry() -> ModelRegistry:
    prices = {m: Prices(input=1.0, output=1.0) for m in ("small", "mid", "big")}
    return replay_registry(Ladder("small", "mid", "big"), prices)


def _prediction() -> Prediction:
    return Prediction(label="simple", confidence=0.6, probabilities={"simple": 0.6, "medium": 0.3, "complex": 0.1})


def test_cascade_policy_applies_the_kinds_settings_and_budgets() -> None:
    policy = CascadePolicy(max_output_tokens={"expensive": 900}, by_kind={
        "code": {"expensive_if_complex_at_least": 0.0, "max_output_tokens": {"expensive": 700}},
        "general": {"expensive_if_complex_at_least": 1.01, "skip_cheap_if_simple_below": 0.7},
    })
    registry = _registry()
    code = policy.decide(PromptMessage(prompt="def f(): return 1\nf()"), _prediction(), registry, "test")
    assert (code.tier, code.prompt_kind, code.max_output_tokens) == (Tier.expensive, "code", {"expensive": 700})
    general = policy.decide(PromptMessage(prompt="How many legs has a cat?"), _prediction(), registry, "test")
    assert (general.tier, general.prompt_kind, general.max_output_tokens) == (Tier.mid, "general", {})
    # A kind without its own settings uses the top-level ones.
    math = policy.decide(PromptMessage(prompt="Solve $x^2=4$."), _prediction(), registry, "test")
    assert (math.tier, math.max_output_tokens) == (Tier.cheap, {"expensive": 900})
    assert CascadePolicy(**policy.params()).params() == policy.params()  # round-trips through policy.json


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="max_output_tokens"):
        CascadePolicy(max_output_tokens={"huge": 10})
    with pytest.raises(ValueError, match="max_output_tokens"):
        CascadePolicy(by_kind={"code": {"max_output_tokens": {"cheap": 0}}})
