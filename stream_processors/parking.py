"""Provider-outage parking: a request whose allowed models are all down is retried until its deadline, not failed.

When the ladder fails only because its models were unwell (outage errors, open circuits, a fallback the cost cap
refuses), the provider agent parks the routed message in Postgres (``sql/parking.py``) with the attempts made so
far and a retry time, then acknowledges it: the agent slot goes on to other requests while this one waits. The
retry times follow tenacity's exponential backoff with jitter (``park_initial_s`` doubling up to ``park_max_s``),
and the last one is placed before the deadline. A sweeper in every worker publishes due requests back to their
route topic. The request fails for good (its one terminal ``failed`` row) only when its deadline leaves no
time for another retry.

The circuit breaker is respected: while the routed model's circuit is open and no fallback is allowed, a
released request is parked again without a call; only the last retry before the deadline calls it anyway.
The cost cap is respected: parking is what happens instead of a fallback beyond the cap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from tenacity import RetryCallState, wait_exponential_jitter

from core.logs import RateLimitedLog
from core.messages import CompletionMessage, ParkedNotice, RoutedMessage, utcnow
from core.settings import Settings
from sql.parking import DueRequest, park, release_due

log = logging.getLogger(__name__)


class Backoff:
    """When to try a parked request again: tenacity's exponential wait with jitter, cut to the deadline."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wait = wait_exponential_jitter(multiplier=settings.park_initial_s, max=settings.park_max_s,
                                            jitter=settings.park_initial_s)
        # A released request may reach its consumer up to one sweep late: the last retry is aimed that far ahead
        # of the deadline.
        self.margin_s = settings.park_sweep_interval_s

    def deadline(self, routed: RoutedMessage) -> datetime:
        prompt = routed.prompt
        return prompt.deadline_at or prompt.created_at + timedelta(seconds=self.settings.request_deadline_s)

    def delay_s(self, parks: int) -> float:
        """The wait before retry number ``parks + 1`` (tenacity counts attempts from 1)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = parks + 1
        return float(self.wait(state))

    def next_retry(self, routed: RoutedMessage, now: datetime | None = None) -> datetime | None:
        """The time of the next retry, or None when the deadline leaves no time for one."""
        if not self.settings.park_enabled:
            return None
        now = now or utcnow()
        latest = self.deadline(routed) - timedelta(seconds=self.margin_s)
        if latest <= now:
            return None
        return min(now + timedelta(seconds=self.delay_s(routed.parks)), latest)


class Parking:
    """Parks requests for the provider agents and releases them (``sweep_forever``) in one worker."""

    def __init__(self, context) -> None:
        self.context = context
        self.settings: Settings = context.settings
        self.backoff = Backoff(self.settings)
        self.errors = RateLimitedLog(log)
        self.parked_total = 0
        self.released_total = 0

    @property
    def enabled(self) -> bool:
        return self.settings.park_enabled and bool(self.settings.pg_dsn)

    def may_wait(self, routed: RoutedMessage) -> bool:
        """Whether a failure now could still be retried later (so an open circuit is waited out, not called)."""
        return self.enabled and self.backoff.next_retry(routed) is not None

    async def park_or_give_up(self, routed: RoutedMessage, completion: CompletionMessage,
                              on_parked: Callable[[ParkedNotice], Awaitable[None]] | None = None
                              ) -> CompletionMessage | None:
        """Park a retryable failure until its next retry (None: parked, publish nothing), or return the terminal
        completion to publish: the failure itself, saying how long it was retried, when no retry is left.
        ``on_parked`` hears of each park (the worker tells the waiting API process)."""
        if not (completion.status == "failed" and completion.retryable and self.enabled):
            return completion
        retry_at = self.backoff.next_retry(routed)
        if retry_at is None:
            if not routed.parks:
                return completion
            deadline = self.backoff.deadline(routed)
            return completion.model_copy(update={"error": (
                f"{completion.error}; retried until its deadline {deadline.isoformat(timespec='seconds')}"
                f" (parked {routed.parks} times)")})
        if len(completion.attempts) > len(routed.attempts) and completion.attempts[-1].next_reason is None:
            completion.attempts[-1].next_reason = (f"parked: retry {routed.parks + 1} at "
                                                   f"{retry_at.isoformat(timespec='seconds')}")
        parked = routed.model_copy(update={"attempts": completion.attempts, "parks": routed.parks + 1})
        if on_parked is not None:
            await on_parked(ParkedNotice(request_id=routed.prompt.request_id, retry_at=retry_at,
                                         deadline_at=self.backoff.deadline(routed), parks=parked.parks,
                                         error=completion.error))
        try:
            pool = await self.context.calls_pool()
            async with pool.connection(timeout=5) as conn:
                await park(conn, parked, not_before=retry_at, deadline_at=self.backoff.deadline(routed),
                           last_error=completion.error)
        except Exception as exc:  # noqa: BLE001 - no database: wait here instead, then requeue on the broker
            self.errors.warning("park", "could not park %s in Postgres (%s: %s); waiting in the worker instead",
                                routed.prompt.request_id, type(exc).__name__, exc)
            await asyncio.sleep(max((retry_at - utcnow()).total_seconds(), 0))
            await self.context.deliver(self.context.route_topics[routed.target_model],
                                       routed.prompt.request_id.encode(), parked.to_bytes())
        else:
            self.errors.clear("park")
        self.parked_total += 1
        self.context.metrics.parked.labels(routed.target_model).inc()
        log.info("parked %s until %s (park %d): %s", routed.prompt.request_id, retry_at.isoformat(timespec="seconds"),
                 parked.parks, (completion.error or "")[:200])
        return None

    async def sweep_once(self) -> int:
        pool = await self.context.pool()

        async def publish(due: list[DueRequest]) -> None:
            sends = []
            for row in due:
                topic = self.context.route_topics.get(row.target_model)
                if topic is None:  # a model no longer configured: the reconciler republishes it as a new prompt
                    log.error("parked request %s is for model %s, which this worker does not serve; released "
                              "for the reconciler to republish", row.request_id, row.target_model)
                    continue
                routed = RoutedMessage.model_validate(row.routed)
                sends.append(self.context.deliver(topic, row.request_id.encode(), routed.to_bytes()))
            await asyncio.gather(*sends)

        async with pool.connection(timeout=5) as conn:
            released = await release_due(conn, publish)
        self.released_total += released
        if released:
            self.context.metrics.unparked.inc(released)
        return released

    async def sweep_forever(self) -> None:
        await self.context.duties.run_forever("parking sweeper", self.sweep_once, self.settings.park_sweep_interval_s)
