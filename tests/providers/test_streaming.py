"""Streaming from the provider and the streaming rule of the ladder, against the local stub through the real SDK."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from core.messages import PromptMessage, RoutedMessage, RoutingDecision, Tier
from core.registry import ModelRegistry
from providers.costs import RegistryCostBook
from providers.executor import LadderExecutor
from providers.openai_compatible import OpenAICompatibleProvider
from routing.escalation import Escalation

REGISTRY_YAML = """
models:
  - {name: small, tier: cheap, base_url: "STUB", model_id: stub-small, prices: {input: 0.13, output: 0.52},
     max_retries: 0}
  - {name: medium, tier: mid, base_url: "STUB", model_id: stub-medium, prices: {input: 0.59, output: 0.79},
     max_retries: 0}
  - {name: big, tier: expensive, base_url: "STUB", model_id: stub-big, prices: {input: 2.5, output: 10.0},
     max_retries: 0}
"""


@pytest.fixture()
def registry(stub_server: str, tmp_path: Path) -> ModelRegistry:
    path = tmp_path / "models.yaml"
    path.write_text(REGISTRY_YAML.replace("STUB", stub_server))
    return ModelRegistry.from_yaml(path)


@pytest.fixture(autouse=True)
def no_faults_left(stub_server: str):
    """The stub is shared by the whole session: leave no injected fault behind for the next test module."""
    yield
    set_faults(stub_server, {})


def set_faults(stub_server: str, faults: dict) -> None:
    httpx.post(f"{stub_server.removesuffix('/v1')}/_stub/faults", json={"faults": faults}).raise_for_status()


def routed(model: str, tier: Tier, **prompt_fields) -> RoutedMessage:
    prompt = PromptMessage(**{"prompt": "Say hello to the world", "max_tokens": 64, **prompt_fields})
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9}, model=model, tier=tier,
                               reasons=["test"], policy="threshold", classifier="heuristic")
    return RoutedMessage(prompt=prompt, decision=decision, target_model=model)


def executor(registry: ModelRegistry) -> LadderExecutor:
    providers = {spec.name: OpenAICompatibleProvider(spec) for spec in registry.models}
    return LadderExecutor(registry, providers, Escalation(registry), RegistryCostBook(registry))


async def test_provider_streams_deltas_with_usage_and_passes_the_conversation(registry, stub_server):
    set_faults(stub_server, {})
    provider = OpenAICompatibleProvider(registry.get("big"))
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    prompt = PromptMessage(messages=[{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Say hello to the world"}],
                           params={"temperature": 0.3, "seed": 1, "not_a_param": 1})
    result = await provider.complete(prompt, on_delta=on_delta)
    assert prompt.prompt == "Say hello to the world"  # the last user turn
    assert result.text == "[stub-big] answer: Be brief.\nSay hello to the world" == "".join(deltas)
    assert len(deltas) == len(result.text.split()) and result.usage_reported
    assert result.output_tokens == len(result.text.split()) and result.finish_reason == "stop"
    call = httpx.get(f"{stub_server.removesuffix('/v1')}/_stub/calls").json()[-1]
    assert call["stream"] and call["temperature"] == 0.3 and call["seed"] == 1 and "not_a_param" not in call
    assert [m["role"] for m in call["messages"]] == ["system", "user"]
    await provider.aclose()


async def test_streaming_rule_holds_a_checkable_answer_and_streams_the_last_tier_live(registry, stub_server):
    set_faults(stub_server, {"stub-small": {"refuse": True}})
    ladder = executor(registry)
    assert not ladder.streams_live(routed("small", Tier.cheap).prompt, registry.get("small"), [])
    assert ladder.streams_live(routed("big", Tier.expensive).prompt, registry.get("big"), [])
    assert ladder.streams_live(routed("small", Tier.cheap, requested_model="small").prompt, registry.get("small"), [])
    streamed: list[tuple[str, str]] = []

    async def sink(model: str, text: str) -> None:
        streamed.append((model, text))

    completion = await ladder.run(routed("small", Tier.cheap), stream=sink)
    # The cheap model's refusal was held and rejected, never streamed; one escalation is allowed, so the mid model
    # is the last step: its answer streams live.
    assert [a.status for a in completion.attempts] == ["rejected", "ok"]
    assert streamed and {model for model, _ in streamed} == {"medium"}
    assert "".join(text for _, text in streamed) == completion.response
    assert "sorry" not in completion.response.lower()


async def test_a_requested_model_is_not_escalated_or_replaced(registry, stub_server):
    set_faults(stub_server, {"stub-small": {"refuse": True}})
    completion = await executor(registry).run(routed("small", Tier.cheap, requested_model="small"))
    assert completion.final_model == "small" and [a.status for a in completion.attempts] == ["ok"]
    set_faults(stub_server, {"stub-small": {"fail_status": 500, "fail_times": 5}})
    failed = await executor(registry).run(routed("small", Tier.cheap, requested_model="small"))
    assert failed.status == "failed" and [a.model for a in failed.attempts] == ["small"]
