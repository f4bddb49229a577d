"""Runs one routed request along the ladder: call, check the answer, escalate or fall back, account cost.

Every call is one ``Attempt`` (model, status, latency, retries, tokens, cost). Costs are priced at the
request's ``created_at``, so a rate change mid-stream never reprices requests made before it. The
counterfactual is what the expensive model would have charged for the same prompt (core/savings.py): its
recorded answer's billed tokens when its provider has one (replay), else its own billed tokens when it
answered, else the prompt and the returned answer counted with its tokenizer (plus its chat framing when
it is a live endpoint). The recorded answer's correctness is the accuracy baseline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Protocol

from core.messages import SIMULATED_TIME_KEY, Attempt, CompletionMessage, RoutedMessage, utcnow
from core.registry import ModelRegistry, ModelSpec
from providers.base import Provider, ProviderError, ProviderResult
from providers.costs import CostBook
from providers.health import CircuitBreaker, is_outage
from routing.answer_checks import Answer
from routing.escalation import Escalation

# (spec, text) -> tokens; providers.tokens.count_tokens by default.
TokenCounter = Callable[[ModelSpec, str], int]

# (model name, text) -> None: passes a live answer's text on to the caller while it is generated.
StreamSink = Callable[[str, str], Awaitable[None]]


class AlreadyAnswered(Exception):
    """Raised by a ``CallLog`` instead of recording a call's start: the request's answer is already recorded (a
    redelivery), so nothing is called or paid for again."""


class CallLog(Protocol):
    """Told about every paid call as it starts and ends (the workers write each to Postgres, so a call cut off
    by a crash is still on record and a redelivery's second call is counted)."""

    # May raise AlreadyAnswered (the workers check the first call of a delivery in the same database flush).
    async def started(self, attempt_no: int, spec: ModelSpec) -> None: ...

    async def finished(self, attempt_no: int, attempt: Attempt) -> None: ...


class LadderExecutor:
    def __init__(
        self,
        registry: ModelRegistry,
        providers: Mapping[str, Provider],
        escalation: Escalation,
        costs: CostBook,
        *,
        breaker: CircuitBreaker | None = None,
        token_counter: TokenCounter | None = None,
        fallback_cost_cap: float | None = None,
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.escalation = escalation
        self.costs = costs
        self.breaker = breaker or CircuitBreaker()
        self.fallback_cost_cap = fallback_cost_cap
        if token_counter is None:
            from providers.tokens import count_tokens  # noqa: PLC0415 - tokenizers load lazily on first count

            token_counter = count_tokens
        self.token_counter = token_counter

    def streams_live(self, prompt, spec: ModelSpec, attempts: list[Attempt]) -> bool:
        """Streaming rule: an attempt's tokens go to the caller as they are generated only when no answer
        check could send the request on to another model after it (a requested model, no checks, or no
        escalation left from this tier); otherwise the answer is held until its checks have passed."""
        if prompt.requested_model or not self.escalation.checks:
            return True
        rejected = Attempt(model=spec.name, tier=spec.tier, status="rejected")
        return self.escalation.next_after_rejection(spec, [*attempts, rejected]) is None

    async def run(self, routed: RoutedMessage, calls: CallLog | None = None,
                  stream: StreamSink | None = None, *, wait_out_open_circuit: bool = False) -> CompletionMessage:
        """Run the ladder. ``calls`` hears of every paid call; with ``stream``, an attempt that ``streams_live``
        passes its text to it as generated.

        A failure caused by the allowed models being down is marked ``retryable``. With
        ``wait_out_open_circuit`` (the caller can park the request and try again later), a model whose circuit
        is open and that has no allowed fallback is not called at all: the request fails at once, retryable,
        with no new attempt. Without it such a model is called anyway (half-open), as a last try."""
        prompt = routed.prompt
        outage = False  # a call failed because its model was unwell, or a circuit was open
        direct = prompt.requested_model is not None
        streamed = False
        # Calls of earlier tries of a parked request are kept on the record and numbered on from, but the
        # ladder's choices (what was tried, what to fall back or escalate to) are this try's own.
        earlier: list[Attempt] = list(routed.attempts)
        attempts: list[Attempt] = []
        spec = self.registry.get(routed.target_model)
        priced_at = prompt.created_at
        final = complete = None
        answers: list[Answer] = []
        # A demo request on simulated days keeps its chain on that clock (labelled simulated where shown).
        shift = prompt.created_at - utcnow() if prompt.metadata.get(SIMULATED_TIME_KEY) else timedelta(0)
        plan = routed.decision.plan  # a pool policy's next models; empty on a ladder (the tiers above)
        budgets = routed.decision.max_output_tokens  # per model name (pool) or per tier (ladder)
        while spec is not None:
            started = utcnow() + shift
            if self.breaker.is_open(spec.name):
                skipped = Attempt(model=spec.name, tier=spec.tier, status="error", started_at=started,
                                  error=f"{spec.name}: circuit open after "
                                        f"{self.breaker.consecutive_failures(spec.name)} consecutive failures")
                next_spec = None if direct else self.escalation.next_after_error(spec, [*attempts, skipped], plan)
                if next_spec is not None and self._over_cost_cap(routed, next_spec, skipped):
                    next_spec = None  # the fallback would cost too much: try this model after all (half-open)
                if next_spec is not None:  # skip it only while another model is left to try
                    skipped.record_next(next_spec.name, "circuit_open", "circuit open")
                    attempts.append(skipped)
                    spec = next_spec
                    outage = True
                    continue
                if wait_out_open_circuit and not streamed:
                    return self._failed(routed, [*earlier, *attempts], skipped.error, shift, retryable=True)
            if calls is not None:
                await calls.started(len(earlier) + len(attempts) + 1, spec)
            on_delta = None
            if stream is not None and self.streams_live(prompt, spec, attempts):
                async def on_delta(text: str, model: str = spec.name) -> None:
                    nonlocal streamed
                    streamed = True
                    await stream(model, text)
            try:
                # on_delta only when streaming, so providers written before streaming keep working.
                live = {"on_delta": on_delta} if on_delta is not None else {}
                result = await self.providers[spec.name].complete(
                    prompt, budgets.get(spec.name, budgets.get(spec.tier.value)), **live)
            except ProviderError as exc:
                self.breaker.record_failure(spec.name, exc.status)
                outage = outage or exc.timed_out or is_outage(exc.status)
                attempt = Attempt(model=spec.name, tier=spec.tier, status="error", started_at=started,
                                  latency_ms=exc.latency_ms, retries=exc.retries, error=str(exc))
                attempts.append(attempt)
                if calls is not None:
                    await calls.finished(len(earlier) + len(attempts), attempt)
                # A requested model is that model or nothing; text already streamed cannot be taken back.
                spec = None if direct or streamed else self.escalation.next_after_error(spec, attempts, plan)
                if spec is not None and self._over_cost_cap(routed, spec, attempt):
                    spec = None  # beyond the cap the request fails (and can be retried) rather than overspend
                if spec is not None:
                    attempt.record_next(spec.name, "timeout" if exc.timed_out else "error", str(exc))
                continue
            self.breaker.record_success(spec.name)
            await self.costs.prepare(spec.name, priced_at)
            cost = self.costs.cost_micro_usd(spec.name, result.input_tokens, result.output_tokens, priced_at)
            answer = Answer(spec.name, result.text, result.finish_reason, result.output_tokens,
                            input_tokens=result.input_tokens, previous=tuple(answers),
                            label_probabilities=routed.decision.probabilities, kind=routed.decision.prompt_kind)
            answers.append(answer)
            # The answer checks read text: a tool call is an answer they cannot judge, so it stands.
            rejection = None if direct or result.tool_calls else self.escalation.rejection(prompt, answer)
            reason = rejection.reason if rejection else None
            attempt = Attempt(model=spec.name, tier=spec.tier, status="rejected" if rejection else "ok",
                              started_at=started, latency_ms=result.latency_ms, input_tokens=result.input_tokens,
                              output_tokens=result.output_tokens, cost_micro_usd=cost,
                              finish_reason=result.finish_reason, retries=result.retries, error=reason,
                              usage_reported=result.usage_reported)
            attempts.append(attempt)
            if calls is not None:
                await calls.finished(len(earlier) + len(attempts), attempt)
            final = (spec, result, cost)
            if result.finish_reason != "length":
                complete = final
            if rejection is None:
                break
            # A control arm's model answers alone: its answer is kept even when a check would escalate.
            next_spec = self.escalation.next_after_rejection(spec, attempts, plan) if routed.decision.escalate else None
            if next_spec is None:
                break  # nothing left to escalate to: keep the best answer we have
            attempt.record_next(next_spec.name, rejection.kind, rejection.reason)
            spec = next_spec

        counterfactual = self.registry.counterfactual_model
        if final is None:
            # Text already streamed cannot be taken back, so only a request that streamed nothing may be retried.
            return self._failed(routed, [*earlier, *attempts], attempts[-1].error if attempts else "no attempt made",
                                shift, retryable=outage and not streamed)
        attempts = [*earlier, *attempts]
        total_cost = sum(a.cost_micro_usd for a in attempts)
        if final[1].finish_reason == "length" and complete is not None:
            final = complete  # a cut-off answer is no answer: return the latest one that finished
        final_spec, result, answered_cost = final
        in_tokens, out_tokens = result.input_tokens, result.output_tokens
        provider = self.providers.get(counterfactual.name)
        recorded = provider.recorded_answer(prompt) if provider is not None else None
        return CompletionMessage(
            request_id=prompt.request_id, prompt=prompt, decision=routed.decision, attempts=attempts,
            status="ok", final_model=final_spec.name, response=result.text, finish_reason=result.finish_reason,
            input_tokens=in_tokens, output_tokens=out_tokens, cost_micro_usd=total_cost,
            counterfactual_model=counterfactual.name,
            counterfactual_cost_micro_usd=await self._counterfactual_cost(
                counterfactual, final_spec, prompt.conversation_text, recorded or result, priced_at,
                recorded=recorded is not None),
            correct=result.correct, tool_calls=result.tool_calls,
            counterfactual_correct=recorded.correct if recorded is not None else None,
            overhead_micro_usd=max(0, total_cost - answered_cost),
            recorded=result.recorded,
            completed_at=utcnow() + shift,
        )

    def _failed(self, routed: RoutedMessage, attempts: list[Attempt], error: str | None, shift: timedelta, *,
                retryable: bool) -> CompletionMessage:
        total_cost = sum(a.cost_micro_usd for a in attempts)
        return CompletionMessage(
            request_id=routed.prompt.request_id, prompt=routed.prompt, decision=routed.decision, attempts=attempts,
            status="failed", final_model=None, response=None, cost_micro_usd=total_cost,
            counterfactual_model=self.registry.counterfactual_model.name, error=error,
            overhead_micro_usd=total_cost, completed_at=utcnow() + shift, retryable=retryable,
        )

    def _over_cost_cap(self, routed: RoutedMessage, candidate: ModelSpec, attempt: Attempt) -> bool:
        """Whether falling back to ``candidate`` would break the cost cap; if so, say so on ``attempt``
        (``next_reason_kind`` "cost_cap", no ``next_model``: nothing is called next)."""
        if not self.fallback_cost_cap:
            return False
        routed_spec = self.registry.get(routed.target_model)
        if routed_spec is None:
            return False
        base = routed_spec.prices.input + routed_spec.prices.output
        price = candidate.prices.input + candidate.prices.output
        if base <= 0 or price <= self.fallback_cost_cap * base:
            return False
        attempt.next_reason_kind = "cost_cap"
        attempt.error = (f"{attempt.error}; " if attempt.error else "") + (
            f"no fallback to {candidate.name}: {price / base:.1f}x the price of the routed model "
            f"{routed_spec.name}, over the cap of {self.fallback_cost_cap:g}x")
        return True

    async def _counterfactual_cost(self, counterfactual: ModelSpec, final_spec: ModelSpec, prompt: str,
                                   result: ProviderResult, priced_at, *, recorded: bool = False) -> int:
        if recorded or final_spec.name == counterfactual.name:
            in_tokens, out_tokens = result.input_tokens, result.output_tokens
        else:
            in_tokens = self.token_counter(counterfactual, prompt)
            if counterfactual.kind == "openai":
                from providers.tokens import get_tokenizer  # noqa: PLC0415

                in_tokens += get_tokenizer(counterfactual.tokenizer).chat_overhead()
            out_tokens = self.token_counter(counterfactual, result.text)
        await self.costs.prepare(counterfactual.name, priced_at)
        return self.costs.cost_micro_usd(counterfactual.name, in_tokens, out_tokens, priced_at)
