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


def test_short_prompts_skip_token_counting_and_long_ones_are_counted() -> None:
    counted: list[str] = []

    def counter(spec: ModelSpec, text: str) -> int:
        counted.append(spec.name)
        return len(text)

    policy = ThresholdPolicy(token_counter=counter)
    short = policy.decide(PromptMessage(prompt="What is 2 + 2?", max_tokens=64), _pred("simple", 0.9), _registry(), "t")
    assert short.model == "small" and counted == []
    long = policy.decide(PromptMessage(prompt="x" * 2000, max_tokens=64), _pred("simple", 0.9), _registry(), "t")
    assert long.model == "small" and counted == ["small"]
    too_long = policy.decide(PromptMessage(prompt="x" * 5000, max_tokens=64), _pred("simple", 0.9), _registry(), "t")
    assert too_long.model == "mid" and "context" in too_long.reasons[-1]


@pytest.mark.parametrize("family", ["o200k", "llama3", "phi3"])
def test_the_no_count_bound_holds_for_every_tokenizer(family: str) -> None:
    """fits_for_sure may only skip counting where the real tokenizer agrees the prompt fits."""
    from providers.tokens import count_chat_prompt_tokens
    from routing.policy import CHAT_TEMPLATE_TOKENS_AT_MOST

    spec = ModelSpec(name="m", tier=Tier.cheap, tokenizer=family, context_window=4096, prices=Prices(input=1, output=1))
    samples = ["", "1", " 7", "hello world", "١٢٣ ٤٥٦", "日本語のテキスト", "🙂" * 50, "\x00\x01\x7f" * 30,
               "def f(x):\n\treturn x ** 2  # ok\n" * 20, " ".join(str(n) for n in range(300)), "  " * 200]
    for text in samples:
        assert count_chat_prompt_tokens(spec, text) <= 2 * len(text.encode("utf-8")) + CHAT_TEMPLATE_TOKENS_AT_MOST, text
