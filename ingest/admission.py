"""Admission of a prompt before it is published: the tenant's guardrails, the key's rate limits and the
budget hold. Every route that sends a prompt to the models goes through ``Gatekeeper.admit``.

Order: limits on size and shape (413/400), the tenant's deny-list and PII mode (400), the key's rate limits
(429 ``rate_limit_exceeded``), then the request-id claim with the budget hold (409 / 429 ``budget_exceeded``).
Nothing is published unless all of them pass; a prompt that the broker then refuses has its hold released.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from core.messages import PromptMessage, Tier
from core.registry import ModelRegistry
from core.settings import Settings
from ingest.accept import with_deadline
from ingest.api.errors import ApiError
from providers.tokens import count_chat_prompt_tokens, warm_up
from routing.guardrails.limits import deny_list_hit, prompt_breaches
from routing.guardrails.pii import get_scanner
from sql.keys import (
    Admission,
    ApiKey,
    RateState,
    TenantPolicy,
    admit_request_or_refuse,
    forget_old_windows,
    release_request,
    release_stale_holds,
    tenant_policy,
)

log = logging.getLogger(__name__)

PERIOD_WORDS = {"day": "daily", "month": "monthly"}
# Prompts up to this long have their tokens counted on the event loop; longer ones in a thread.
INLINE_TOKEN_COUNT_CHARS = 2000


@dataclass
class Admitted:
    message: PromptMessage
    headers: dict[str, str] = field(default_factory=dict)
    # Whether this call recorded the request as accepted; False when a retry finds it accepted already (not
    # published again: the reconciler answers for it). A duplicate claim whose first try died before it was
    # accepted is accepted now.
    first_acceptance: bool = True


def usd(micro_usd: int | None) -> str:
    return "none" if micro_usd is None else f"${micro_usd / 1e6:,.6f}".rstrip("0").rstrip(".")


def _period_end(period: str, now: datetime) -> datetime:
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "day":
        return day + timedelta(days=1)
    return datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)


def rate_headers(state: RateState) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the limits the key has."""
    headers = {}
    reset = f"{max(state.reset_s, 0):.0f}s"
    if state.requests_limit is not None:
        headers |= {"x-ratelimit-limit-requests": str(state.requests_limit),
                    "x-ratelimit-remaining-requests": str(state.remaining_requests),
                    "x-ratelimit-reset-requests": reset}
    if state.tokens_limit is not None:
        headers |= {"x-ratelimit-limit-tokens": str(state.tokens_limit),
                    "x-ratelimit-remaining-tokens": str(state.remaining_tokens),
                    "x-ratelimit-reset-tokens": reset}
    return headers


class Gatekeeper:
    def __init__(self, settings: Settings, registry: ModelRegistry, pool: AsyncConnectionPool | None) -> None:
        self.settings = settings
        self.registry = registry
        self.pool = pool
        # "loading" until the background warm-up has built the PII scanner (or failed to): /readyz waits for it, as
        # the import holds the GIL for seconds and would slow every request served meanwhile.
        self.pii_state = "loading"

    def warm_up_tokenizers(self) -> None:
        warm_up(sorted({spec.tokenizer for spec in self.registry.ladder}))

    def warm_up_pii(self) -> None:
        try:
            get_scanner(tuple(self.settings.pii_entities), self.settings.pii_spacy_model)
            self.pii_state = "ok"
        except Exception as exc:  # noqa: BLE001 - a tenant using PII modes will see the error on its requests
            log.warning("PII scanner not loaded: %s: %s", type(exc).__name__, exc)
            self.pii_state = f"unavailable: {type(exc).__name__}"


    # ------------------------------------------------------------ costs

    def input_tokens(self, prompt: str) -> dict[str, int]:
        """Billed prompt tokens per ladder model, with each model's own tokenizer."""
        return {spec.name: count_chat_prompt_tokens(spec, prompt) for spec in self.registry.ladder}

    def worst_case_micro_usd(self, tokens_in: dict[str, int], max_tokens: int) -> int:
        """The most the request can cost: every model on the ladder called once (the cascade may escalate to
        the top), each reading the prompt and writing ``max_tokens`` (capped by the model's output limit), at
        the registry's list prices (USD per 1M tokens = micro-USD per token)."""
        total = 0.0
        for spec in self.registry.ladder:
            output = min(max_tokens, spec.max_output_tokens)
            total += tokens_in[spec.name] * spec.prices.input + output * spec.prices.output
        return math.ceil(total)

    # ------------------------------------------------------------ admission

    async def admit(self, message: PromptMessage, key: ApiKey) -> Admitted:
        """Admit the prompt and record it as accepted (its deadline set), or raise the refusal as an ApiError.
        Accepted means recorded: the accepted-requests row commits with the claim and the holds, or nothing does."""
        if self.pool is None:
            raise ApiError(503, "no database configured: set ROUTER_PG_DSN or PG_DSN", "database_unavailable")
        try:
            return await self._admit(with_deadline(message, self.settings), key)
        except (psycopg.OperationalError, PoolTimeout, TimeoutError) as exc:
            raise ApiError(503, f"database unavailable, prompt not accepted: {type(exc).__name__}",
                           "database_unavailable", headers={"Retry-After": "5"}) from exc

    async def _admit(self, message: PromptMessage, key: ApiKey) -> Admitted:
        assert self.pool is not None
        policy = key.tenant_policy  # read with the key; an admin key acting for another tenant reads that one's
        if policy is None or policy.tenant != message.tenant:
            async with self.pool.connection(timeout=15) as conn:
                policy = await tenant_policy(conn, message.tenant) or TenantPolicy(message.tenant)
        message = message.model_copy(update={"key_id": key.key_id})
        for breach in prompt_breaches(message, self.settings, max_prompt_chars=policy.max_prompt_chars):
            raise ApiError(breach.status, breach.reason, breach.code, param=breach.field)
        message = await self._guard(message, policy)
        # A short prompt is counted in microseconds: a thread hop would cost more than it saves.
        tokens_in = (self.input_tokens(message.prompt) if len(message.prompt) <= INLINE_TOKEN_COUNT_CHARS
                     else await asyncio.to_thread(self.input_tokens, message.prompt))
        rate_tokens = max(tokens_in.values()) + message.max_tokens
        hold = self.worst_case_micro_usd(tokens_in, message.max_tokens)
        decided: list[Admitted] = []

        def accept(admission: Admission) -> PromptMessage:  # inside the transaction: raising rolls it back
            assert admission.rate is not None
            decided.append(self._decide(message, admission, hold, rate_headers(admission.rate)))
            return decided[0].message

        # The rate window, the claim with its holds, and the accepted-requests row: two pipelined round trips
        # (the rate window and the claim; the row with the COMMIT). A refusal rolls all of it back.
        timeout_s = self.settings.accept_db_timeout_s
        async with asyncio.timeout(timeout_s), self.pool.connection(timeout=timeout_s) as conn:
            admission = await admit_request_or_refuse(conn, request_id=message.request_id, key=key, tenant=policy,
                                                      hold_micro_usd=hold, rate_tokens=rate_tokens, accept=accept)
        rate = admission.rate
        assert rate is not None
        headers = rate_headers(rate)
        if not rate.allowed:
            raise ApiError(429, self._rate_detail(key, rate, rate_tokens), "rate_limit_exceeded",
                           headers={**headers, "Retry-After": str(max(1, math.ceil(rate.reset_s)))})
        if not decided:  # refused over budget: rolled back before it was handed to ``accept``
            return self._decide(message, admission, hold, headers)
        return replace(decided[0], first_acceptance=admission.first_acceptance)

    async def _guard(self, message: PromptMessage, policy: TenantPolicy) -> PromptMessage:
        if deny_list_hit(message.prompt, policy.deny_list):
            raise ApiError(400, "the prompt contains a term this tenant does not allow", "denied_content",
                           param="prompt")
        update: dict = {}
        if policy.pii_mode != "off":
            scanner = get_scanner(tuple(self.settings.pii_entities), self.settings.pii_spacy_model)
            findings = await asyncio.to_thread(scanner.find, message.prompt)
            if findings:
                kinds = ", ".join(sorted({f.entity for f in findings}))
                if policy.pii_mode == "refuse":
                    # Only the kinds of what was found: the values themselves are never echoed.
                    raise ApiError(400, f"the prompt contains personal data ({kinds}); this tenant refuses it",
                                   "pii_detected", param="prompt")
                if policy.pii_mode == "redact":
                    update["prompt"] = scanner.redact(message.prompt, findings)
            if policy.pii_mode == "redact-stored":
                update["storage"] = "redacted"
        if not policy.store_prompts:
            update["storage"] = "none"
        return message.model_copy(update=update) if update else message

    @staticmethod
    def _rate_detail(key: ApiKey, rate: RateState, tokens: int) -> str:
        if key.tokens_per_min is not None and tokens > key.tokens_per_min:
            return (f"this request counts {tokens} tokens (prompt + max_tokens), more than the key's limit of "
                    f"{key.tokens_per_min} tokens per minute")
        return (f"rate limit of key {key.key_id} reached: {rate.requests} requests and {rate.tokens} tokens this "
                f"minute (limits: {key.requests_per_min or 'none'} requests, {key.tokens_per_min or 'none'} tokens); "
                f"retry in {max(1, math.ceil(rate.reset_s))} s")

    def _decide(self, message: PromptMessage, admission: Admission, hold: int, headers: dict[str, str]) -> Admitted:
        if admission.outcome == "foreign":
            raise ApiError(409, f"request_id {message.request_id} is already taken; send another one or none",
                           "request_id_conflict", param="request_id")
        if admission.outcome == "duplicate":
            return Admitted(message, headers)  # claimed before; ``first_acceptance`` says whether it was accepted
        if admission.outcome == "over_budget":
            usage = admission.refused_by
            assert usage is not None
            now = datetime.now(UTC)
            retry_after = max(1, math.ceil((_period_end(usage.period, now) - now).total_seconds()))
            detail = (f"the {usage.scope} {PERIOD_WORDS[usage.period]} budget is spent: {usd(usage.committed_micro_usd)} committed "
                      f"of a hard budget of {usd(usage.hard_micro_usd)}, and this request may cost up to {usd(hold)}")
            raise ApiError(429, detail, "budget_exceeded", headers={**headers, "Retry-After": str(retry_after)})
        warnings = [f"{u.scope} {u.scope_id}: {usd(u.committed_micro_usd)} committed of a soft budget of "
                    f"{usd(u.soft_micro_usd)}" for u in admission.usage if u.over_soft]
        if warnings:
            headers["x-budget-warning"] = "; ".join(warnings)
        headers["x-request-hold-usd"] = usd(hold)
        near = self.settings.budget_prefer_cheap_at
        if near is not None and any(u.near(near) for u in admission.usage):
            message = message.model_copy(update={"max_tier": Tier.cheap})
            headers["x-budget-routing"] = "cheap tier preferred: the budget is near"
        return Admitted(message, headers)

    async def release(self, request_id: str) -> None:
        """The broker refused the prompt: give back its request id and its hold."""
        if self.pool is None:
            return
        try:
            async with self.pool.connection(timeout=15) as conn:
                await release_request(conn, request_id)
        except Exception as exc:  # noqa: BLE001 - the stale-hold sweep releases it later
            log.warning("could not release the hold of %s now: %s", request_id, type(exc).__name__)

    async def sweep_forever(self, every_s: float = 60.0) -> None:
        """Release holds of requests that never completed and drop old rate windows, in every API process
        (the statements are idempotent, so several processes sweeping at once is harmless)."""
        while True:
            await asyncio.sleep(every_s)
            if self.pool is None:
                continue
            try:
                async with self.pool.connection(timeout=15) as conn:
                    released = await release_stale_holds(conn, self.settings.budget_hold_ttl_s)
                    await forget_old_windows(conn)
                if released:
                    log.warning("released the holds of %d request(s) that never completed", released)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try again next round
                log.warning("budget sweep failed: %s: %s", type(exc).__name__, exc)
