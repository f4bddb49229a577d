"""GET /requests/{request_id}: the recorded request, its routing decision, attempts and cost."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout

from ingest.api.deps import CurrentKey, PoolDep
from ingest.api.errors import ApiError, ErrorOut
from sql.ledger import ledger_entry
from sql.repository import fetch_request

router = APIRouter(tags=["requests"])


@router.get("/requests/{request_id}", responses={202: {"description": "accepted, no answer recorded yet"},
                                                 404: {"model": ErrorOut}})
async def get_request(request_id: str, key: CurrentKey, pool: PoolDep) -> Any:
    not_found = ApiError(404, f"no request {request_id} recorded (yet)", "not_found")
    if "\x00" in request_id or len(request_id) > 128:
        # No request id can hold a NUL (Postgres text cannot) or be longer than the API accepts.
        raise not_found
    try:
        async with pool.connection(timeout=5) as conn:
            row = await fetch_request(conn, request_id)
            pending = None if row is not None else await ledger_entry(conn, request_id)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise ApiError(503, f"database unavailable: {type(exc).__name__}", "database_unavailable") from exc

    def visible(tenant: str | None) -> bool:
        # Another tenant's request reads exactly like a missing one: ids do not leak across tenants.
        return key.is_admin or tenant == key.tenant

    if row is not None and visible(row["tenant"]):
        return row
    if row is None and pending is not None and pending["state"] == "pending" and visible(pending["tenant"]):
        return JSONResponse(status_code=202, content={
            "request_id": request_id, "status": "pending", "accepted_at": pending["accepted_at"].isoformat(),
            "deadline_at": pending["deadline_at"].isoformat(), "republished": pending["republished"]})
    raise not_found
