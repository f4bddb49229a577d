import pytest

from classifier.heuristic import HeuristicClassifier
from core.messages import Prediction, PromptMessage, Tier
from core.registry import ModelRegistry, ModelSpec, Prices
from routing.policy import ThresholdPolicy
from routing.registry import build_policy
from routing.router import Router


def _registry(cheap_window: int = 4096) -> ModelRegistry:
    return ModelRegistry(models=[
        ModelSpec(name="small", tier=Tier.cheap, context_window=cheap_window, prices=Prices(input=0.1, output=0.5)),
        ModelSpec(name="mid", tier=Tier.mid, context_window=8192, prices=Prices(input=0.6, output=0.8)),
        ModelSpec(name="big", tier=Tier.expensive, context_window=128000, prices=Prices(input=2.5, output=10)),
    ])


def _pred(label: str, confidence: float) -> Prediction:
    return Prediction(label=label, confidence=confidence, probabilities={label: confidence})


@pytest.mark.parametrize(
    ("label", "confidence", "model"),
    [("simple", 0.7, "small"), ("simple", 0.69, "big"), ("medium", 0.6, "mid"), ("medium", 0.59, "big"),
     ("complex", 0.99, "big")],
)
def test_threshold_rules(label: str, confidence: float, model: str) -> None:
    decision = ThresholdPolicy().decide(PromptMessage(prompt="hi"), _pred(label, confidence), _registry(), "test")
    assert decision.model == model
    assert decision.reasons and str(confidence)[:3] in decision.reasons[0]


def test_keyword_override_and_premium_each_bump_one_level() -> None:
    policy = ThresholdPolicy()
    decision = policy.decide(PromptMessage(prompt="Is this legal?"), _pred("simple", 0.9), _registry(), "t")
    assert decision.tier == Tier.mid and "keyword override 'legal'" in decision.reason
    decision = policy.decide(PromptMessage(prompt="hello", customer_tier="premium"), _pred("simple", 0.9),
                             _registry(), "t")
    assert decision.tier == Tier.mid and "premium" in decision.reason
    decision = policy.decide(PromptMessage(prompt="legal question", customer_tier="premium"),
                             _pred("simple", 0.9), _registry(), "t")
    assert decision.tier == Tier.expensive


def test_context_window_escalates() -> None:
    policy = ThresholdPolicy(token_counter=lambda spec, text: len(text))
    prompt = PromptMessage(prompt="x" * 100, max_tokens=50)
    assert policy.decide(prompt, _pred("simple", 0.9), _registry(cheap_window=149), "t").model == "mid"
    decision = policy.decide(prompt, _pred("simple", 0.9), _registry(cheap_window=150), "t")
    assert decision.model == "small"


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'nope'"):
        build_policy("nope")


def test_router_uses_heuristic_labels() -> None:
    router = Router(HeuristicClassifier(), ThresholdPolicy(), _registry())
    short, long_ = PromptMessage(prompt="What is the capital of France?"), PromptMessage(prompt="word " * 120)
    decisions = router.route([short, long_])
    assert [d.label for d in decisions] == ["simple", "complex"]
    assert [d.model for d in decisions] == ["small", "big"]
