"""Per-call bookkeeping in Postgres, batched: every paid model call is written to ``model_calls`` as it starts
and as it ends, and a routed request is checked for an answer already recorded before a model is called.

Hundreds of concurrent calls must not each hold a database connection: requests queue up and one flush
writes all waiting call records in one transaction and answers all waiting checks with one query. A caller
that waits (a start record, an answered check) starts a flush at once when none is running, and those arriving
during a flush share the next one (group commit): one round trip at low load, batches under load. End records
wait for the next flush, at most ``interval_s``. A call's start record is written before the call (the caller
waits for its flush, at most ``wait_s``), so a worker killed mid-call leaves the call on record as ``started``. When the database is
down, records wait in memory and the calls go ahead; the window in which a call can go unrecorded is a
worker killed while its records wait (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from core.logs import RateLimitedLog
from core.messages import Attempt
from core.registry import ModelSpec
from providers.executor import AlreadyAnswered
from sql.ledger import ANSWERED_AMONG_SQL, write_calls

log = logging.getLogger(__name__)


class CallRecorder:
    def __init__(self, pool_factory: Callable[[], Awaitable[Any]], interval_s: float = 0.02,
                 wait_s: float = 2.0) -> None:
        self.pool_factory = pool_factory
        self.interval_s = interval_s
        self.wait_s = wait_s
        self.backlog: list[tuple[str, tuple]] = []  # ("started" | "finished", row)
        self._flushed: list[asyncio.Future] = []
        self._checks: dict[str, list[asyncio.Future]] = {}
        # Start records to write only when their request has no recorded answer: (row, future of "answered").
        self._conditional: list[tuple[tuple, asyncio.Future]] = []
        self._waiting = asyncio.Event()  # set when a caller waits on the next flush
        self._last_flush_failed = False
        self.errors = RateLimitedLog(log)

    async def _settle(self, future: asyncio.Future, default: Any) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=self.wait_s)
        except TimeoutError:
            return default

    async def record_started(self, row: tuple) -> None:
        self.backlog.append(("started", row))
        future = asyncio.get_running_loop().create_future()
        self._flushed.append(future)
        self._waiting.set()
        await self._settle(future, None)

    async def record_started_unless_answered(self, row: tuple) -> bool:
        """The answered check and the start record of a delivery's first call in one flush: True (and nothing
        written) when the request's answer is recorded; else the start is written, as ``record_started``. When
        the database cannot say in time, False: the call goes ahead and its record waits for the next flush."""
        future = asyncio.get_running_loop().create_future()
        self._conditional.append((row, future))
        self._waiting.set()
        return await self._settle(future, False)

    def record_finished(self, row: tuple) -> None:
        self.backlog.append(("finished", row))

    async def answered(self, request_id: str) -> bool:
        """Whether the request's answer is recorded; False when the database cannot say in time."""
        future = asyncio.get_running_loop().create_future()
        self._checks.setdefault(request_id, []).append(future)
        self._waiting.set()
        return await self._settle(future, False)

    async def run(self) -> None:
        while True:
            if self._last_flush_failed:
                await asyncio.sleep(self.interval_s)  # the database is down: retry at the interval, not in a spin
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._waiting.wait(), timeout=self.interval_s)
            self._waiting.clear()
            if self.backlog or self._checks or self._conditional:
                await self.flush()

    async def flush(self) -> int:
        """Write waiting records and answer waiting checks. Returns how many records still wait."""
        rows, flushed, checks, conditional = list(self.backlog), self._flushed, self._checks, self._conditional
        self._flushed, self._checks, self._conditional = [], {}, []
        found: set[str] = set()
        try:
            pool = await self.pool_factory()
            async with asyncio.timeout(30), pool.connection(timeout=5) as conn, conn.pipeline():
                # Pipelined: the answered check, BEGIN, the inserts and COMMIT go out together, one round trip.
                # A conditional start is written only if its request has no answer (by the same rule as the check).
                cursor = None
                if checks or conditional:
                    cursor = await conn.execute(ANSWERED_AMONG_SQL,
                                                (list(checks) + [row[0] for row, _ in conditional],))
                if rows or conditional:
                    async with conn.transaction():
                        await write_calls(conn, rows, [row for row, _ in conditional])
                if cursor is not None:
                    found = {row[0] for row in await cursor.fetchall()}
            del self.backlog[:len(rows)]
            self._last_flush_failed = False
            self.errors.clear("model-calls")
        except Exception as exc:  # noqa: BLE001 - kept for the next flush; the calls go ahead
            found = set()  # unknown: every conditional start goes ahead, its record kept for the next flush
            self.backlog.extend(("started", row) for row, _ in conditional)
            self._last_flush_failed = True
            self.errors.warning("model-calls", "%d model call record(s) wait for the database: %s: %s",
                                len(self.backlog), type(exc).__name__, exc)
        for future in flushed:
            if not future.done():
                future.set_result(None)
        for row, future in conditional:
            if not future.done():
                future.set_result(row[0] in found)
        for request_id, futures in checks.items():
            for future in futures:
                if not future.done():
                    future.set_result(request_id in found)
        return len(self.backlog)

    def for_delivery(self, request_id: str, delivery: str, *, check_answered: bool = False) -> DeliveryCalls:
        return DeliveryCalls(self, request_id, delivery, check_answered=check_answered)


class DeliveryCalls:
    """The ``providers.executor.CallLog`` of one delivery of one routed message. With ``check_answered``, the
    first call's start is recorded only if the request has no recorded answer, else it raises AlreadyAnswered:
    the redelivery check costs no database round trip of its own. ``checked`` says whether that check ran."""

    def __init__(self, recorder: CallRecorder, request_id: str, delivery: str, *, check_answered: bool = False) -> None:
        self.recorder = recorder
        self.request_id = request_id
        self.delivery = delivery
        self.checked = not check_answered

    async def started(self, attempt_no: int, spec: ModelSpec) -> None:
        row = (self.request_id, self.delivery, attempt_no, spec.name)
        if self.checked:
            await self.recorder.record_started(row)
            return
        self.checked = True
        if await self.recorder.record_started_unless_answered(row):
            raise AlreadyAnswered(self.request_id)

    async def finished(self, attempt_no: int, attempt: Attempt) -> None:
        self.recorder.record_finished((self.request_id, self.delivery, attempt_no, attempt.model, attempt.status,
                                       attempt.input_tokens, attempt.output_tokens, attempt.cost_micro_usd))
