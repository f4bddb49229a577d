"""The OpenAI-compatible provider and the ladder against the local stub on loopback, through the real SDK.

The stub reports usage as word counts, so every cost below is computed by hand from word counts and
the list prices: cheap 130/520, mid 590/790, expensive 2500/10000 micro-USD per 1k tokens.
"""

from __future__ import annotations

import time
from datetime import UTC, timedelta
from pathlib import Path

import httpx
import pytest

from core.messages import PromptMessage, RoutedMessage, RoutingDecision, Tier, utcnow
from core.registry import ModelRegistry
from providers.base import ProviderError
from providers.costs import RegistryCostBook
from providers.executor import LadderExecutor
from providers.health import CircuitBreaker
from providers.openai_compatible import MissingApiKeyError, OpenAICompatibleProvider
from providers.tokens import count_chat_prompt_tokens, count_tokens
from routing.escalation import Escalation

REGISTRY_YAML = """
counterfactual: big
models:
  - {name: small, tier: cheap, base_url: "STUB", model_id: stub-small, tokenizer: phi3,
     prices: {input: 0.13, output: 0.52}, timeout_s: 0.5, max_retries: 2}
  - {name: medium, tier: mid, base_url: "STUB", model_id: stub-medium, tokenizer: llama3,
     prices: {input: 0.59, output: 0.79}, timeout_s: 0.5, max_retries: 1}
  - {name: big, tier: expensive, base_url: "STUB", model_id: stub-big, tokenizer: o200k,
     prices: {input: 2.5, output: 10.0}, timeout_s: 5, max_retries: 1}
"""

PROMPT = "one two three four five six seven eight nine ten"  # 10 words
REPLY = "alpha beta gamma delta"  # 4 words


@pytest.fixture()
def registry(stub_server: str, tmp_path: Path) -> ModelRegistry:
    path = tmp_path / "models.yaml"
    path.write_text(REGISTRY_YAML.replace("STUB", stub_server))
    return ModelRegistry.from_yaml(path)


def set_faults(stub_server: str, **faults: dict) -> None:
    base = stub_server.removesuffix("/v1")
    response = httpx.post(f"{base}/_stub/faults", json={"faults": faults})
    response.raise_for_status()


def stub_calls(stub_server: str) -> list[dict]:
    return httpx.get(stub_server.removesuffix("/v1") + "/_stub/calls").json()


def routed_to(model: str, tier: Tier, prompt: str = PROMPT) -> RoutedMessage:
    message = PromptMessage(prompt=prompt, max_tokens=64)
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9, "medium": 0.05,
                                                                             "complex": 0.05},
                               model=model, tier=tier, reasons=["test"], policy="threshold", classifier="test")
    return RoutedMessage(prompt=message, decision=decision, target_model=model)


def executor(registry: ModelRegistry, **kwargs) -> LadderExecutor:
    providers = {spec.name: OpenAICompatibleProvider(spec) for spec in registry.models}
    return LadderExecutor(registry, providers, Escalation(registry), RegistryCostBook(registry), **kwargs)


def half_up(numerator: int) -> int:
    return (numerator + 500) // 1000


async def test_retries_then_success_records_the_retry_count(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 500, "fail_times": 2, "reply": REPLY}})
    result = await OpenAICompatibleProvider(registry.get("small")).complete(PromptMessage(prompt=PROMPT))
    assert result.retries == 2
    assert len(stub_calls(stub_server)) == 3  # the SDK's retries only: no second loop doubling them
    assert (result.text, result.input_tokens, result.output_tokens, result.usage_reported) == (REPLY, 10, 4, True)


async def test_retry_after_is_honoured(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 429, "fail_times": 1, "retry_after_s": 1.2}})
    started = time.perf_counter()
    result = await OpenAICompatibleProvider(registry.get("small")).complete(PromptMessage(prompt=PROMPT))
    assert time.perf_counter() - started >= 1.2  # the SDK's own backoff would be at most 0.5 s
    assert result.retries == 1


async def test_persistent_500s_fall_back_to_the_next_tier(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 500, "fail_times": 99},
                               "stub-medium": {"reply": REPLY}})
    completion = await executor(registry).run(routed_to("small", Tier.cheap))
    first, second = completion.attempts
    assert (first.model, first.status, first.retries, first.cost_micro_usd) == ("small", "error", 2, 0)
    assert "HTTP 500" in first.error and first.next_reason.startswith("fallback to medium")
    assert (first.next_model, first.next_reason_kind) == ("medium", "error")
    assert (second.model, second.status, second.retries) == ("medium", "ok", 0)
    assert (completion.status, completion.final_model, completion.response) == ("ok", "medium", REPLY)
    # medium: 10 in x 590 + 4 out x 790 = 9060 -> 9 micro-USD
    assert second.cost_micro_usd == completion.cost_micro_usd == half_up(10 * 590 + 4 * 790) == 9
    assert [c["model"] for c in stub_calls(stub_server)] == ["stub-small"] * 3 + ["stub-medium"]


async def test_timeouts_are_retried_then_fall_back(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"delay_s": 2.0}, "stub-medium": {"reply": REPLY}})
    completion = await executor(registry).run(routed_to("small", Tier.cheap))
    first, second = completion.attempts
    assert (first.status, first.retries) == ("error", 2)
    assert "timeout" in first.error
    assert (first.next_model, first.next_reason_kind) == ("medium", "timeout")
    assert 1500 <= first.latency_ms < 4000  # three tries of 0.5 s plus the SDK's backoff
    assert (second.model, second.status, completion.final_model) == ("medium", "ok", "medium")


async def test_refusal_escalates_once_and_pays_for_both_calls(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"refuse": True}, "stub-medium": {"reply": REPLY}})
    completion = await executor(registry).run(routed_to("small", Tier.cheap))
    first, second = completion.attempts
    assert (first.status, first.error) == ("rejected", "refusal")
    assert first.next_reason == "escalate to medium: refusal"
    assert (first.next_model, first.next_reason_kind) == ("medium", "refusal")
    # The refusal "I'm sorry, but I can't help with that." is 8 words.
    assert first.cost_micro_usd == half_up(10 * 130 + 8 * 520) == 5
    assert second.cost_micro_usd == half_up(10 * 590 + 4 * 790) == 9
    assert completion.cost_micro_usd == 5 + 9
    assert (completion.final_model, completion.response) == ("medium", REPLY)


async def test_length_cutoff_escalates(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"truncate": True, "reply": REPLY}, "stub-medium": {"reply": REPLY}})
    completion = await executor(registry).run(routed_to("small", Tier.cheap))
    assert [(a.model, a.status, a.finish_reason) for a in completion.attempts] == [
        ("small", "rejected", "length"), ("medium", "ok", "stop")]
    assert completion.attempts[0].error == "finish_reason=length (truncated)"
    assert (completion.attempts[0].next_model, completion.attempts[0].next_reason_kind) == ("medium", "length")


async def test_the_policys_output_budget_is_sent_as_max_tokens(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"truncate": True, "reply": REPLY}, "stub-medium": {"reply": REPLY}})
    message = routed_to("small", Tier.cheap)
    message.decision.max_output_tokens = {"cheap": 7, "expensive": 500}
    completion = await executor(registry).run(message)
    assert [a.model for a in completion.attempts] == ["small", "medium"]
    # The cheap tier's budget is below the prompt's max_tokens (64); the mid tier has none.
    assert [(c["model"], c["max_tokens"]) for c in stub_calls(stub_server)] == [("stub-small", 7), ("stub-medium", 64)]


async def test_escalates_only_once(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"refuse": True}, "stub-medium": {"refuse": True}})
    completion = await executor(registry).run(routed_to("small", Tier.cheap))
    assert [(a.model, a.status) for a in completion.attempts] == [("small", "rejected"), ("medium", "rejected")]
    assert completion.final_model == "medium"  # the best answer there is; no third call
    assert "stub-big" not in [c["model"] for c in stub_calls(stub_server)]


async def test_counterfactual_is_the_expensive_models_price(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-big": {"reply": REPLY}})
    completion = await executor(registry).run(routed_to("big", Tier.expensive))
    # The expensive model answered: its own billed tokens, 10 x 2500 + 4 x 10000 = 65000 -> 65.
    assert completion.cost_micro_usd == completion.counterfactual_cost_micro_usd == 65

    set_faults(stub_server, **{"stub-small": {"reply": REPLY}})
    completion = await executor(registry, token_counter=lambda spec, text: len(text.split())).run(
        routed_to("small", Tier.cheap))
    assert completion.cost_micro_usd == half_up(10 * 130 + 4 * 520) == 3
    # Another model answered: the same prompt and answer counted for the expensive model (here 1 token per
    # word) plus its 7 tokens of chat framing, at its rates: 17 x 2500 + 4 x 10000 = 82500 -> 83 (half up).
    assert completion.counterfactual_model == "big"
    assert completion.counterfactual_cost_micro_usd == half_up(17 * 2500 + 4 * 10000) == 83


async def test_missing_usage_is_counted_with_the_model_tokenizer(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"omit_usage": True, "reply": REPLY}})
    completion = await executor(registry).run(routed_to("small", Tier.cheap))
    attempt = completion.attempts[0]
    spec = registry.get("small")
    assert attempt.usage_reported is False
    assert attempt.input_tokens == count_chat_prompt_tokens(spec, PROMPT) == count_tokens(spec, PROMPT) + 10
    assert attempt.output_tokens == count_tokens(spec, REPLY)
    assert attempt.cost_micro_usd == half_up(attempt.input_tokens * 130 + attempt.output_tokens * 520)


async def test_every_model_failing_gives_a_failed_completion(registry, stub_server) -> None:
    set_faults(stub_server, **{m: {"fail_status": 503, "fail_times": 99} for m in ("stub-small", "stub-medium",
                                                                                   "stub-big")})
    completion = await executor(registry).run(routed_to("medium", Tier.mid))
    assert completion.status == "failed" and completion.final_model is None
    assert [a.model for a in completion.attempts] == ["medium", "big", "small"]
    assert all(a.status == "error" and a.cost_micro_usd == 0 for a in completion.attempts)
    assert "HTTP 503" in completion.error


async def test_a_model_that_keeps_failing_is_skipped_until_its_cooldown(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 500, "fail_times": 99},
                               "stub-medium": {"reply": REPLY}})
    ladder = executor(registry, breaker=CircuitBreaker(failure_threshold=2, cooldown_s=60))
    for _ in range(2):
        await ladder.run(routed_to("small", Tier.cheap))
    calls_before = len(stub_calls(stub_server))
    completion = await ladder.run(routed_to("small", Tier.cheap))
    skipped = completion.attempts[0]
    assert skipped.status == "error" and "circuit open after 2 consecutive failures" in skipped.error
    assert skipped.latency_ms == 0 and skipped.next_reason == "fallback to medium: circuit open"
    assert (skipped.next_model, skipped.next_reason_kind) == ("medium", "circuit_open")
    assert completion.final_model == "medium"
    assert [c["model"] for c in stub_calls(stub_server)[calls_before:]] == ["stub-medium"]  # small not called


async def test_missing_api_key_is_a_clear_error(registry, monkeypatch) -> None:
    monkeypatch.delenv("ROUTER_TEST_MISSING_KEY", raising=False)
    spec = registry.get("big").model_copy(update={"api_key_env": "ROUTER_TEST_MISSING_KEY"})
    with pytest.raises(MissingApiKeyError, match=r"\$ROUTER_TEST_MISSING_KEY"):
        OpenAICompatibleProvider(spec)


async def test_unexpanded_base_url_is_a_clear_error(registry) -> None:
    spec = registry.get("big").model_copy(update={"base_url": "${ROUTER_NOT_SET_ANYWHERE}"})
    with pytest.raises(ValueError, match="environment variable"):
        OpenAICompatibleProvider(spec)


async def test_provider_error_carries_status_and_retries(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-medium": {"fail_status": 502, "fail_times": 99}})
    with pytest.raises(ProviderError) as caught:
        await OpenAICompatibleProvider(registry.get("medium")).complete(PromptMessage(prompt=PROMPT))
    assert (caught.value.status, caught.value.retries) == (502, 1)


async def test_rate_change_mid_stream_through_the_sdk(registry, stub_server, clean_db, tmp_path) -> None:
    """Real SDK, real stub, rates from Postgres: a request made before a price change keeps the old price
    even when it is answered after the change; one made after gets the new price."""
    from datetime import datetime, timedelta

    from providers.costs import build_db_cost_book
    from providers.prices import main as prices_main

    set_faults(stub_server, **{"stub-small": {"reply": REPLY}})
    ladder = LadderExecutor(registry, {s.name: OpenAICompatibleProvider(s) for s in registry.models},
                            Escalation(registry), build_db_cost_book(clean_db, registry, refresh_s=0.0))
    now = datetime.now(UTC)
    early, late = routed_to("small", Tier.cheap), routed_to("small", Tier.cheap)
    early.prompt.created_at = now - timedelta(seconds=1)
    late.prompt.created_at = now + timedelta(seconds=1)
    first = await ladder.run(early)
    assert first.cost_micro_usd == half_up(10 * 130 + 4 * 520) == 3

    prices = tmp_path / "prices.json"
    prices.write_text('{"small": {"input": 1.3, "output": 5.2}}')  # ten times the list price
    assert prices_main(["--dsn", clean_db, "update", "--prices", str(prices), "--effective-from", now.isoformat()]) == 0
    queued_before = await ladder.run(routed_to("small", Tier.cheap).model_copy(update={"prompt": early.prompt}))
    after = await ladder.run(late)
    assert queued_before.cost_micro_usd == 3
    assert after.cost_micro_usd == half_up(10 * 1300 + 4 * 5200) == 34


class RecordingCallLog:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    async def started(self, attempt_no: int, spec) -> None:
        self.events.append(("started", attempt_no, spec.name))

    async def finished(self, attempt_no: int, attempt) -> None:
        self.events.append(("finished", attempt_no, attempt.model, attempt.status, attempt.cost_micro_usd))


async def test_every_call_is_reported_before_it_is_made_and_when_it_ends(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 500, "fail_times": 99},
                               "stub-medium": {"reply": REPLY}})
    calls = RecordingCallLog()
    completion = await executor(registry).run(routed_to("small", Tier.cheap), calls)
    assert calls.events == [("started", 1, "small"), ("finished", 1, "small", "error", 0),
                            ("started", 2, "medium"), ("finished", 2, "medium", "ok", completion.cost_micro_usd)]


async def test_fallback_beyond_the_cost_cap_is_refused_and_recorded(registry, stub_server) -> None:
    failing = {"fail_status": 503, "fail_times": 99}
    set_faults(stub_server, **{"stub-small": failing, "stub-medium": failing, "stub-big": {"reply": REPLY}})
    completion = await executor(registry, fallback_cost_cap=3.0).run(routed_to("small", Tier.cheap))
    # medium lists at about 2x small's price (allowed), big at about 19x (refused): nothing goes to big.
    assert [a.model for a in completion.attempts] == ["small", "medium"]
    first, second = completion.attempts
    assert (first.next_model, first.next_reason_kind) == ("medium", "error")
    assert (second.next_model, second.next_reason_kind) == (None, "cost_cap")
    assert "no fallback to big" in second.error and "over the cap of 3x" in second.error
    assert completion.status == "failed"
    assert "stub-big" not in [c["model"] for c in stub_calls(stub_server)]
    # Without a cap the same outage falls back all the way.
    set_faults(stub_server, **{"stub-small": failing, "stub-medium": failing, "stub-big": {"reply": REPLY}})
    uncapped = await executor(registry).run(routed_to("small", Tier.cheap))
    assert [a.model for a in uncapped.attempts] == ["small", "medium", "big"] and uncapped.status == "ok"


async def test_a_failure_because_the_allowed_models_are_down_is_retryable(registry, stub_server) -> None:
    failing = {"fail_status": 503, "fail_times": 99}
    set_faults(stub_server, **{"stub-small": failing, "stub-medium": failing})
    outage = await executor(registry, fallback_cost_cap=3.0).run(routed_to("small", Tier.cheap))
    assert outage.status == "failed" and outage.retryable
    assert "retryable" not in outage.model_dump_json()  # it never leaves the worker
    # A request the models refuse (a 4xx) would fail the same way on every try: not retryable.
    refused = {"fail_status": 400, "fail_times": 99}
    set_faults(stub_server, **{"stub-small": refused, "stub-medium": refused})
    bad_request = await executor(registry, fallback_cost_cap=3.0).run(routed_to("small", Tier.cheap))
    assert bad_request.status == "failed" and not bad_request.retryable


async def test_an_open_circuit_with_no_allowed_fallback_is_waited_out_without_a_call(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 503, "fail_times": 99}})
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=60)
    capped = executor(registry, fallback_cost_cap=1.5, breaker=breaker)  # medium (about 2x) is beyond the cap
    first = await capped.run(routed_to("small", Tier.cheap), wait_out_open_circuit=True)
    assert [a.model for a in first.attempts] == ["small"] and first.retryable
    assert first.attempts[0].next_reason_kind == "cost_cap"
    assert breaker.is_open("small")
    calls_before = len(stub_calls(stub_server))
    # The circuit is open and no fallback is allowed: a request that can wait is not sent to the model.
    waited = await capped.run(routed_to("small", Tier.cheap), wait_out_open_circuit=True)
    assert waited.status == "failed" and waited.retryable and waited.attempts == []
    assert "circuit open" in waited.error
    assert len(stub_calls(stub_server)) == calls_before
    # Its last try before the deadline calls the model anyway (half-open), and succeeds once it is back.
    set_faults(stub_server, **{"stub-small": {"reply": REPLY}})
    last = await capped.run(routed_to("small", Tier.cheap))
    assert last.status == "ok" and last.final_model == "small"
    assert "stub-medium" not in [c["model"] for c in stub_calls(stub_server)]


async def test_a_parked_request_tries_its_ladder_afresh_and_keeps_the_earlier_calls(registry, stub_server) -> None:
    failing = {"fail_status": 503, "fail_times": 99}
    set_faults(stub_server, **{"stub-small": failing, "stub-medium": failing})
    capped = executor(registry, fallback_cost_cap=3.0)
    calls = RecordingCallLog()
    first = await capped.run(routed_to("small", Tier.cheap), calls)
    assert first.retryable and [a.model for a in first.attempts] == ["small", "medium"]
    parked = routed_to("small", Tier.cheap).model_copy(update={"attempts": first.attempts, "parks": 1})
    # Still down: the retry falls back to medium again (earlier tries do not count as tried), never to big.
    calls = RecordingCallLog()
    second = await capped.run(parked, calls)
    assert [a.model for a in second.attempts] == ["small", "medium", "small", "medium"] and second.retryable
    assert [e[1] for e in calls.events if e[0] == "started"] == [3, 4]  # call numbers go on from the earlier ones
    set_faults(stub_server, **{"stub-small": {"reply": REPLY}})
    parked = parked.model_copy(update={"attempts": second.attempts, "parks": 2})
    answered = await capped.run(parked, RecordingCallLog())
    assert answered.status == "ok" and answered.final_model == "small"
    assert [a.status for a in answered.attempts] == ["error"] * 4 + ["ok"]
    assert answered.cost_micro_usd == answered.attempts[-1].cost_micro_usd > 0


def _budgeted(registry: ModelRegistry, name: str, budget_s: float) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(registry.get(name).model_copy(update={"retry_budget_s": budget_s}))


async def test_with_a_retry_budget_errors_are_retried_by_time_not_by_count(registry, stub_server) -> None:
    # max_retries is 2 for this model; with a budget the count does not stop it: six failures, then the answer.
    set_faults(stub_server, **{"stub-small": {"fail_status": 503, "fail_times": 6, "reply": REPLY}})
    result = await _budgeted(registry, "small", 30).complete(PromptMessage(prompt=PROMPT))
    assert result.text == REPLY and result.retries == 6 and len(stub_calls(stub_server)) == 7


async def test_a_retry_budget_ends_the_call_and_no_retry_starts_after_it(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 503, "fail_times": 99}})
    started = time.perf_counter()
    with pytest.raises(ProviderError) as caught:
        await _budgeted(registry, "small", 2.0).complete(PromptMessage(prompt=PROMPT))
    elapsed = time.perf_counter() - started
    assert caught.value.status == 503 and caught.value.retries >= 1
    assert elapsed < 2.0 + 0.5 * 3  # the last try started within the budget (plus one try's timeout and slack)
    assert len(stub_calls(stub_server)) == caught.value.retries + 1


async def test_a_retry_budget_stops_at_the_request_deadline_and_4xx_is_not_retried(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 503, "fail_times": 99}})
    soon = PromptMessage(prompt=PROMPT, deadline_at=utcnow() + timedelta(seconds=1))
    started = time.perf_counter()
    with pytest.raises(ProviderError):
        await _budgeted(registry, "small", 60).complete(soon)
    assert time.perf_counter() - started < 3  # the request's deadline, not the 60 s budget
    set_faults(stub_server, **{"stub-small": {"fail_status": 400, "fail_times": 99}})
    with pytest.raises(ProviderError) as refused:
        await _budgeted(registry, "small", 60).complete(PromptMessage(prompt=PROMPT))
    assert refused.value.status == 400 and refused.value.retries == 0 and len(stub_calls(stub_server)) == 1


async def test_a_retry_budget_honours_retry_after(registry, stub_server) -> None:
    set_faults(stub_server, **{"stub-small": {"fail_status": 429, "fail_times": 1, "retry_after_s": 1.5}})
    started = time.perf_counter()
    result = await _budgeted(registry, "small", 30).complete(PromptMessage(prompt=PROMPT))
    assert time.perf_counter() - started >= 1.5 and result.retries == 1
