"""GET /requests/{request_id}: the recorded request, its routing decision, attempts and cost."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout

from ingest.api.deps import CurrentKey, PoolDep
from ingest.api.errors import ApiError, ErrorOut
from sql.ledger import ledger_entry
from sql.repository import fetch_request

router = APIRouter(tags=["requests"])

# Between looks at a pending request: short at first (its row is usually a sink batch away), then longer.
FIRST_LOOK_AGAIN_S = 0.01
LONGEST_LOOK_AGAIN_S = 0.2


async def look_up(pool, request_id: str) -> tuple[dict | None, dict | None]:
    """The request's row, or else its accepted-requests ledger entry."""
    try:
        async with pool.connection(timeout=5) as conn:
            row = await fetch_request(conn, request_id)
            return row, (None if row is not None else await ledger_entry(conn, request_id))
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise ApiError(503, f"database unavailable: {type(exc).__name__}", "database_unavailable") from exc


@router.get("/requests/{request_id}", responses={202: {"description": "accepted, no answer recorded yet"},
                                                 404: {"model": ErrorOut}})
async def get_request(request_id: str, key: CurrentKey, pool: PoolDep,
                      wait_s: float = Query(1.0, ge=0, le=30, description=(
                          "How long to wait for an accepted request's row before answering 202 pending. "
                          "/generate answers as soon as the model has, and the sink records the row moments "
                          "later: the wait makes a GET right after a 200 find it."))) -> Any:
    not_found = ApiError(404, f"no request {request_id} recorded (yet)", "not_found")
    if "\x00" in request_id or len(request_id) > 128:
        # No request id can hold a NUL (Postgres text cannot) or be longer than the API accepts.
        raise not_found

    def visible(tenant: str | None) -> bool:
        # Another tenant's request reads exactly like a missing one: ids do not leak across tenants.
        return key.is_admin or tenant == key.tenant

    def still_pending(row: dict | None, pending: dict | None) -> bool:
        return row is None and pending is not None and pending["state"] == "pending" and visible(pending["tenant"])

    row, pending = await look_up(pool, request_id)
    give_up_at, pause_s = time.monotonic() + wait_s, FIRST_LOOK_AGAIN_S
    # Long-polls the caller's own accepted request (no connection is held while waiting); nothing else waits.
    while still_pending(row, pending) and time.monotonic() < give_up_at:
        await asyncio.sleep(min(pause_s, max(give_up_at - time.monotonic(), 0)))
        pause_s = min(pause_s * 2, LONGEST_LOOK_AGAIN_S)
        row, pending = await look_up(pool, request_id)

    if row is not None and visible(row["tenant"]):
        return row
    if still_pending(row, pending):
        return JSONResponse(status_code=202, content={
            "request_id": request_id, "status": "pending", "accepted_at": pending["accepted_at"].isoformat(),
            "deadline_at": pending["deadline_at"].isoformat(), "republished": pending["republished"]})
    raise not_found
