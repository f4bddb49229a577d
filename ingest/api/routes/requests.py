"""GET /requests/{request_id}: the recorded request, its routing decision, attempts and cost."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout

from ingest.api.deps import PoolDep
from sql.ledger import ledger_entry
from sql.repository import fetch_request

router = APIRouter(tags=["requests"])


@router.get("/requests/{request_id}", responses={202: {"description": "accepted, no answer recorded yet"},
                                                 404: {"description": "no such request"}})
async def get_request(request_id: str, pool: PoolDep) -> Any:
    if "\x00" in request_id or len(request_id) > 128:
        # No request id can hold a NUL (Postgres text cannot) or be longer than the API accepts.
        raise HTTPException(404, detail="no request with that id")
    try:
        async with pool.connection(timeout=5) as conn:
            row = await fetch_request(conn, request_id)
            pending = None if row is not None else await ledger_entry(conn, request_id)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise HTTPException(503, detail=f"database unavailable: {exc}") from exc
    if row is not None:
        return row
    if pending is not None and pending["state"] == "pending":
        return JSONResponse(status_code=202, content={
            "request_id": request_id, "status": "pending", "accepted_at": pending["accepted_at"].isoformat(),
            "deadline_at": pending["deadline_at"].isoformat(), "republished": pending["republished"]})
    raise HTTPException(404, detail=f"no request {request_id} recorded (yet)")
