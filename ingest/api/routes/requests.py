"""GET /requests/{request_id}: the recorded request, its routing decision, attempts and cost."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter
from psycopg_pool import PoolTimeout

from ingest.api.deps import CurrentKey, PoolDep
from ingest.api.errors import ApiError, ErrorOut
from sql.repository import fetch_request

router = APIRouter(tags=["requests"])


@router.get("/requests/{request_id}", responses={404: {"model": ErrorOut}})
async def get_request(request_id: str, key: CurrentKey, pool: PoolDep) -> dict[str, Any]:
    try:
        async with pool.connection(timeout=5) as conn:
            row = await fetch_request(conn, request_id)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise ApiError(503, f"database unavailable: {type(exc).__name__}", "database_unavailable") from exc
    # Another tenant's request reads exactly like a missing one: ids do not leak across tenants.
    if row is None or not (key.is_admin or row["tenant"] == key.tenant):
        raise ApiError(404, f"no request {request_id} recorded (yet)", "not_found")
    return row
