"""GET /requests/{request_id}: the recorded request, its routing decision, attempts and cost."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter, HTTPException
from psycopg_pool import PoolTimeout

from ingest.api.deps import PoolDep
from sql.repository import fetch_request

router = APIRouter(tags=["requests"])


@router.get("/requests/{request_id}")
async def get_request(request_id: str, pool: PoolDep) -> dict[str, Any]:
    try:
        async with pool.connection(timeout=5) as conn:
            row = await fetch_request(conn, request_id)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise HTTPException(503, detail=f"database unavailable: {exc}") from exc
    if row is None:
        raise HTTPException(404, detail=f"no request {request_id} recorded (yet)")
    return row
