"""Background duties of every worker: the accepted-requests reconciler and the heartbeat.

Reconciler (docs/reliability.md): every ``reconcile_interval_s`` one worker (an advisory lock picks it)
marks ledger rows whose request is recorded, records the ones past their deadline as ``expired``, and
republishes to the prompts topic the ones that have waited ``republish_after_s`` without a row: e.g.
prompts a restarted local broker lost with its log, or offsets skipped past a recreated topic's end.

Heartbeat: each worker writes the partitions its consumer holds, which the API's ``/readyz`` reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import datetime

from core.logs import RateLimitedLog
from core.messages import utcnow
from sql.ledger import reconcile, write_heartbeat

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerDuties:
    """Runs inside a worker's PipelineContext (which owns the pool and the topics)."""

    def __init__(self, context) -> None:
        self.context = context
        self.settings = context.settings
        self.worker_id = new_worker_id()
        self.started_at: datetime = utcnow()
        self.errors = RateLimitedLog(log)
        self.republished_total = 0
        self.expired_total = 0

    def lag(self) -> dict[str, dict[int, int]]:
        """Messages behind per assigned partition: the high watermark of the last fetch response minus the next
        offset to commit, both as Faust's monitor tracks them. A partition with nothing committed yet counts from
        offset 0; one never fetched from is left out (its end is unknown)."""
        try:
            assigned = self.context.app.consumer.assignment()
            monitor = self.context.app.monitor
        except Exception:  # noqa: BLE001 - consumer not started yet
            return {}
        lag: dict[str, dict[int, int]] = {}
        for tp in assigned:
            end = monitor.tp_end_offsets.get(tp)
            if end is None:
                continue
            committed = monitor.tp_committed_offsets.get(tp)
            lag.setdefault(tp.topic, {})[tp.partition] = max(0, end - (committed or 0))
        return lag

    def assignment(self) -> dict[str, list[int]]:
        try:
            assigned = self.context.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - consumer not started yet
            return {}
        held: dict[str, list[int]] = {}
        for tp in assigned:
            held.setdefault(tp.topic, []).append(tp.partition)
        return held

    async def heartbeat_once(self) -> None:
        lag = self.lag()
        self.context.metrics.set_lag(lag)
        pool = await self.context.pool()
        async with pool.connection(timeout=5) as conn:
            await write_heartbeat(conn, worker_id=self.worker_id, app_id=self.settings.faust_app_id,
                                  host=socket.gethostname(), pid=os.getpid(), started_at=self.started_at,
                                  assignment=self.assignment(), lag=lag)

    async def reconcile_once(self) -> int:
        pool = await self.context.pool()
        async with pool.connection(timeout=5) as conn:
            result = await reconcile(conn, republish_after_s=self.settings.republish_after_s)
        if result is None:
            return 0
        for prompt in result.republish or []:
            await self.context.deliver(self.context.prompts_topic, prompt.request_id.encode(), prompt.to_bytes())
        count = len(result.republish or [])
        self.republished_total += count
        self.expired_total += result.expired
        self.context.metrics.republished.inc(count)
        self.context.metrics.expired.inc(result.expired)
        if count or result.expired:
            log.warning("reconciler: republished %d accepted request(s) with no row yet, recorded %d as expired",
                        count, result.expired)
        return count

    async def run_forever(self, what: str, step, interval_s: float) -> None:
        while True:
            try:
                await step()
                self.errors.clear(what)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database or broker is down: try again next round
                self.errors.warning(what, "%s failed: %s: %s", what, type(exc).__name__, exc)
            await asyncio.sleep(interval_s)

