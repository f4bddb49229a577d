"""Parked requests (migration 0010): routed requests waiting out a provider outage until their next retry.

A parked request is off the broker: its consumer acknowledged it after writing the row here, so it holds no
agent slot while it waits. A sweeper (every worker, ``FOR UPDATE SKIP LOCKED`` so each row goes to one of
them) publishes due rows back to their route topic and marks them released in the same transaction: a publish
that fails leaves the row parked for the next sweep.

Parking also moves the request's ledger ``last_published_at`` to its retry time, so the reconciler does not
republish a parked request to the prompts topic as if it were lost; it still would if no worker released it
for ``republish_after_s`` past that time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from core.messages import RoutedMessage
from sql.repository import without_nul

PARK_SQL = """
INSERT INTO parked_requests (request_id, target_model, routed, parks, not_before, deadline_at, last_error)
VALUES (%(request_id)s, %(target_model)s, %(routed)s, %(parks)s, %(not_before)s, %(deadline_at)s, %(last_error)s)
ON CONFLICT (request_id) DO UPDATE SET target_model = EXCLUDED.target_model, routed = EXCLUDED.routed,
    parks = EXCLUDED.parks, parked_at = now(), not_before = EXCLUDED.not_before, deadline_at = EXCLUDED.deadline_at,
    last_error = EXCLUDED.last_error, released_at = NULL
"""

# The reconciler republishes a pending ledger row ``republish_after_s`` after its last publish: a parked
# request counts as published at its retry time.
HOLD_LEDGER_SQL = ("UPDATE accepted_requests SET last_published_at = greatest(last_published_at, %s)"
                   " WHERE request_id = %s AND state = 'pending'")

DUE_SQL = """
SELECT request_id, target_model, routed FROM parked_requests
WHERE released_at IS NULL AND not_before <= now()
ORDER BY not_before LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""

RELEASE_SQL = "UPDATE parked_requests SET released_at = now() WHERE request_id = ANY(%s) AND released_at IS NULL"
RELEASE_LEDGER_SQL = ("UPDATE accepted_requests SET last_published_at = now()"
                      " WHERE request_id = ANY(%s) AND state = 'pending'")
FORGET_RELEASED_SQL = ("DELETE FROM parked_requests WHERE released_at IS NOT NULL"
                       " AND released_at < now() - make_interval(secs => %s)")


async def park(conn: AsyncConnection, routed: RoutedMessage, *, not_before: datetime, deadline_at: datetime,
               last_error: str | None) -> None:
    """Write (or renew) the request's parked row and hold its ledger row until ``not_before``, in one
    transaction: the caller acknowledges the routed message only after this returns."""
    async with conn.transaction():
        await conn.execute(PARK_SQL, {
            "request_id": routed.prompt.request_id, "target_model": routed.target_model,
            "routed": Jsonb(without_nul(routed.model_dump(mode="json"))), "parks": routed.parks,
            "not_before": not_before, "deadline_at": deadline_at, "last_error": last_error})
        await conn.execute(HOLD_LEDGER_SQL, (not_before, routed.prompt.request_id))


@dataclass(frozen=True)
class DueRequest:
    request_id: str
    target_model: str
    routed: dict[str, Any]


async def release_due(conn: AsyncConnection, publish: Callable[[Sequence[DueRequest]], Awaitable[None]], *,
                      limit: int = 500, keep_released_s: float = 86_400) -> int:
    """Publish the parked requests whose retry time has come (``publish`` waits for the broker's acks) and mark
    them released, in one transaction; returns how many. Released rows older than ``keep_released_s`` go."""
    async with conn.transaction():
        rows = await (await conn.execute(DUE_SQL, {"limit": limit})).fetchall()
        due = [DueRequest(*row) for row in rows]
        if due:
            await publish(due)
            ids = [row.request_id for row in due]
            await conn.execute(RELEASE_SQL, (ids,))
            await conn.execute(RELEASE_LEDGER_SQL, (ids,))
        await conn.execute(FORGET_RELEASED_SQL, (keep_released_s,))
    return len(due)
