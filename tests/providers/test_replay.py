"""The replay provider: recorded answers and token counts for known prompts, a clear error otherwise."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from classifier.cascade import Escalation
from core.messages import PromptMessage, RoutedMessage, RoutingDecision, Tier
from core.outcomes import load_outcomes
from providers.base import ProviderError
from providers.costs import RegistryCostBook
from providers.executor import LadderExecutor
from providers.factory import build_providers
from providers.registry import ModelRegistry
from providers.replay import OutcomeIndex, ReplayProvider

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
    ]
    with gzip.open(folder / "outcomes" / "t.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return folder


def routed(prompt: str) -> RoutedMessage:
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9},
                               model="phi-3.5-mini-instruct", tier=Tier.cheap, reasons=["test"], policy="threshold",
                               classifier="test")
    return RoutedMessage(prompt=PromptMessage(prompt=prompt), decision=decision, target_model="phi-3.5-mini-instruct")


@pytest.fixture()
def demo(tmp_path: Path) -> tuple[ModelRegistry, LadderExecutor]:
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
