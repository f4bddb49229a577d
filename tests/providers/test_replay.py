"""The replay provider: recorded answers and token counts for known prompts, a clear error otherwise."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from core.messages import PromptMessage, RoutedMessage, RoutingDecision, Tier
from core.outcomes import load_outcomes
from core.registry import ModelRegistry
from providers.base import ProviderError
from providers.costs import RegistryCostBook
from providers.executor import LadderExecutor
from providers.factory import build_providers
from providers.replay import OutcomeIndex, ReplayProvider
from routing.escalation import Escalation

REPO = Path(__file__).resolve().parents[2]


def write_outcomes(folder: Path) -> Path:
    (folder / "outcomes").mkdir(parents=True)
    records = [
        {"id": "t/1", "source": "t", "prompt": "What is 6 x 7?", "outcomes": {
            "phi-3.5-mini-instruct": {"correct": True, "answer": "42", "input_tokens": 9, "output_tokens": 3,
                                      "response": "It is 42."},
            "llama-3-70b-instruct": {"correct": True, "answer": "42", "input_tokens": 8, "output_tokens": 2,
                                     "response": "42, of course."},
            "gpt-4o-2024-05-13": {"correct": True, "answer": "42", "input_tokens": 8, "output_tokens": 2,
                                  "response": "6 x 7 = 42"}}},
        {"id": "t/2", "source": "t", "prompt": "Integrate x^2 from 0 to 3.", "outcomes": {
            "phi-3.5-mini-instruct": {"correct": False, "answer": None, "input_tokens": 14, "output_tokens": 200,
                                      "response": ""},
            "llama-3-70b-instruct": {"correct": True, "answer": "9", "input_tokens": 12, "output_tokens": 40,
                                     "response": "The integral is x^3/3 from 0 to 3, which is 9."}}},
        {"id": "t/3", "source": "t", "prompt": "Prove that there are infinitely many primes.", "outcomes": {
            "llama-3-70b-instruct": {"correct": False, "answer": None, "input_tokens": 10, "output_tokens": 0,
                                     "response": ""},
            "gpt-4o-2024-05-13": {"correct": True, "answer": "proof", "input_tokens": 10, "output_tokens": 300,
                                  "response": "Suppose there are finitely many primes p1..pn. " * 30}}},
    ]
    with gzip.open(folder / "outcomes" / "t.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return folder


def routed(prompt: str, model: str = "phi-3.5-mini-instruct", tier: Tier = Tier.cheap,
           budgets: dict[str, int] | None = None) -> RoutedMessage:
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9}, model=model, tier=tier,
                               reasons=["test"], policy="threshold", classifier="test",
                               max_output_tokens=budgets or {})
    return RoutedMessage(prompt=PromptMessage(prompt=prompt), decision=decision, target_model=model)


@pytest.fixture()
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelRegistry, LadderExecutor]:
    monkeypatch.setenv("ROUTER_REPLAY_LATENCY_SCALE", "0")  # answer at once: these tests check content, not time
    monkeypatch.delenv("ROUTER_STUB_URL", raising=False)
    registry = ModelRegistry.from_yaml(REPO / "config" / "models.demo.yaml")
    providers = build_providers(registry, write_outcomes(tmp_path))
    return registry, LadderExecutor(registry, providers, Escalation(registry), RegistryCostBook(registry))


async def test_known_prompt_replays_the_recorded_answer(demo) -> None:
    _, ladder = demo
    completion = await ladder.run(routed("What is 6 x 7?"))
    attempt = completion.attempts[0]
    assert (completion.final_model, completion.response, completion.correct) == ("phi-3.5-mini-instruct", "It is 42.", True)
    assert (attempt.input_tokens, attempt.output_tokens) == (9, 3)
    assert attempt.cost_micro_usd == (9 * 130 + 3 * 520 + 500) // 1000 == 3


async def test_empty_recorded_answer_escalates_and_keeps_the_recorded_correctness(demo) -> None:
    _, ladder = demo
    completion = await ladder.run(routed("Integrate x^2 from 0 to 3."))
    assert [(a.model, a.status) for a in completion.attempts] == [("phi-3.5-mini-instruct", "rejected"),
                                                                  ("llama-3-70b-instruct", "ok")]
    assert completion.correct is True
    # Both calls are paid: 14 x 130 + 200 x 520 -> 106, then 12 x 590 + 40 x 790 -> 39.
    assert completion.cost_micro_usd == 106 + 39


async def test_unknown_prompt_is_a_clear_error_and_the_ladder_falls_back(demo) -> None:
    registry, ladder = demo
    with pytest.raises(ProviderError, match="no recorded outcome") as caught:
        await ladder.providers["gpt-4o-2024-05-13"].complete(PromptMessage(prompt="never recorded"))
    assert caught.value.status == 404
    completion = await ladder.run(routed("never recorded"))
    assert completion.status == "failed"
    assert [a.model for a in completion.attempts] == [m.name for m in registry.ladder]
    assert all("no recorded outcome" in a.error for a in completion.attempts)


async def test_configured_latency_is_applied(tmp_path: Path) -> None:
    registry = ModelRegistry.from_yaml(REPO / "config" / "models.demo.yaml")
    spec = registry.get("gpt-4o-2024-05-13").model_copy(update={"replay_latency_ms": 50})
    provider = ReplayProvider(spec, OutcomeIndex(load_outcomes([write_outcomes(tmp_path) / "outcomes"])))
    result = await provider.complete(PromptMessage(prompt="What is 6 x 7?"))
    assert result.latency_ms >= 50 and result.text == "6 x 7 = 42"


def test_replay_config_needs_the_data_dir() -> None:
    registry = ModelRegistry.from_yaml(REPO / "config" / "models.demo.yaml")
    with pytest.raises(ValueError, match="ROUTER_DATA_DIR"):
        build_providers(registry, None)


async def test_an_answer_over_its_output_budget_is_cut_off_charged_and_escalated(demo) -> None:
    _, ladder = demo
    completion = await ladder.run(routed("What is 6 x 7?", budgets={"cheap": 2}))
    cut, answered = completion.attempts
    assert (cut.model, cut.status, cut.finish_reason, cut.output_tokens) == ("phi-3.5-mini-instruct", "rejected",
                                                                           "length", 2)
    assert cut.cost_micro_usd == (9 * 130 + 2 * 520 + 500) // 1000  # the budget, not the recorded 3 tokens
    assert (answered.model, completion.final_model, completion.correct) == ("llama-3-70b-instruct",) * 2 + (True,)


async def test_a_cut_off_final_answer_gives_way_to_the_latest_finished_one(demo) -> None:
    _, ladder = demo
    message = routed("Prove that there are infinitely many primes.", "llama-3-70b-instruct", Tier.mid,
                     {"expensive": 50})
    completion = await ladder.run(message)
    assert [(a.model, a.finish_reason) for a in completion.attempts] == [("llama-3-70b-instruct", "stop"),
                                                                         ("gpt-4o-2024-05-13", "length")]
    top = completion.attempts[1]
    assert top.output_tokens == 50 and top.cost_micro_usd == (10 * 2500 + 50 * 10000 + 500) // 1000
    # The cut-off proof has no conclusion: the mid answer (recorded wrong) is returned, and both calls are paid.
    assert (completion.final_model, completion.response, completion.correct) == ("llama-3-70b-instruct", "", False)
    assert completion.cost_micro_usd == sum(a.cost_micro_usd for a in completion.attempts)


async def test_baseline_is_the_expensive_models_recorded_answer(demo) -> None:
    # core/savings.py: always-expensive = what gpt-4o really billed for this prompt, and its recorded grade.
    _, ladder = demo
    completion = await ladder.run(routed("What is 6 x 7?"))
    assert completion.counterfactual_cost_micro_usd == (8 * 2500 + 2 * 10000 + 500) // 1000
    assert completion.counterfactual_correct is True and completion.recorded is True
    assert completion.overhead_micro_usd == 0


async def test_escalated_request_counts_the_rejected_answer_as_overhead(demo) -> None:
    _, ladder = demo
    completion = await ladder.run(routed("Integrate x^2 from 0 to 3."))  # phi's empty answer is rejected
    rejected = completion.attempts[0]
    assert rejected.status == "rejected" and rejected.cost_micro_usd > 0
    assert completion.overhead_micro_usd == rejected.cost_micro_usd
    assert completion.cost_micro_usd == sum(a.cost_micro_usd for a in completion.attempts)


async def test_simulated_time_keeps_the_chain_on_the_simulated_clock(demo) -> None:
    from datetime import timedelta

    from core.messages import SIMULATED_TIME_KEY, utcnow

    _, ladder = demo
    message = routed("Integrate x^2 from 0 to 3.")
    message.prompt.created_at = utcnow() - timedelta(days=3)
    message.prompt.metadata[SIMULATED_TIME_KEY] = "true"
    completion = await ladder.run(message)
    for stamp in [a.started_at for a in completion.attempts] + [completion.completed_at]:
        assert abs(stamp - message.prompt.created_at) < timedelta(seconds=30)
