"""GET /healthz: is the broker reachable, and the database?"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


async def _database_ok(request: Request) -> str:
    pool = request.app.state.pool
    if pool is None:
        return "not configured"
    try:
        async with pool.connection(timeout=3) as conn:
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout=3)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - health check: report the failure
        return f"down: {type(exc).__name__}"


@router.get("/healthz", responses={503: {"description": "the broker or the database is down"}})
async def healthz(request: Request) -> JSONResponse:
    bridge = request.app.state.bridge
    broker = "ok" if await bridge.broker_ok() else "down"
    database = await _database_ok(request)
    healthy = broker == "ok" and database == "ok"
    return JSONResponse(status_code=200 if healthy else 503, content={
        "status": "ok" if healthy else "unhealthy", "broker": broker, "database": database,
        "instance": bridge.instance_id, "reply_topic": bridge.reply_topic,
    })
