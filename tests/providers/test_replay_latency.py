"""The replay latency model: an answer takes time to first token plus its output tokens at the decode rate."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from core.messages import PromptMessage
from core.outcomes import ModelOutcome, OutcomeRecord
from core.registry import ModelRegistry, ModelSpec
from providers.replay import OutcomeIndex, ReplayProvider

DEMO_MODELS = Path(__file__).resolve().parents[2] / "config" / "models.demo.yaml"


def provider(latency: dict | None) -> ReplayProvider:
    spec = ModelSpec(name="m", kind="replay", tier="cheap", prices={"input": 1, "output": 1}, latency=latency)
    record = OutcomeRecord(id="r1", source="s", prompt="hi", outcomes={"m": ModelOutcome(
        correct=True, answer="x", input_tokens=3, output_tokens=100, response="x" * 100)})
    return ReplayProvider(spec, OutcomeIndex([record]))


def test_answer_takes_ttft_plus_tokens_at_the_decode_rate() -> None:
    result = asyncio.run(provider({"ttft_ms": 100, "output_tokens_per_s": 500}).complete(PromptMessage(prompt="hi")))
    assert result.latency_ms >= 100 + 1000 * 100 / 500  # 300 ms
    cut = asyncio.run(provider({"ttft_ms": 100, "output_tokens_per_s": 500}).complete(PromptMessage(prompt="hi"), 10))
    assert 120 <= cut.latency_ms < 300  # cut off after 10 tokens: 100 + 20 ms
    instant = asyncio.run(provider({"ttft_ms": 100, "output_tokens_per_s": 500, "scale": 0}).complete(
        PromptMessage(prompt="hi")))
    assert instant.latency_ms < 100


def test_the_demo_models_file_documents_a_latency_model_per_model(monkeypatch) -> None:
    monkeypatch.delenv("ROUTER_REPLAY_LATENCY_SCALE", raising=False)
    registry = ModelRegistry.from_yaml(DEMO_MODELS)
    assert all(m.latency is not None and m.latency.scale == 1 for m in registry.models)
    speeds = {m.tier.value: m.latency.seconds(300) for m in registry.models}
    assert speeds["cheap"] < speeds["expensive"] < speeds["mid"]  # 2.65 s, 4.2 s, 7.0 s
    monkeypatch.setenv("ROUTER_REPLAY_LATENCY_SCALE", "0")
    assert all(m.latency.seconds(300) == 0 for m in ModelRegistry.from_yaml(DEMO_MODELS).models)
    assert os.environ["ROUTER_REPLAY_LATENCY_SCALE"] == "0"
