"""Health: ``/healthz`` is liveness (the process answers), ``/readyz`` is readiness (it can do its job).

``/readyz`` answers 503 unless the broker answers, the database answers, the workers' heartbeats
(seen within ``heartbeat_fresh_s``) together hold every partition of the prompts, route and completions
topics (every consumer group stage has a consumer with its partitions assigned), and the PII scanner's
background load has ended. It also reports each topic's consumer lag (messages behind, summed over
partitions) from the workers' heartbeats.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.registry import ModelRegistry
from core.topics import pipeline_topics
from sql.ledger import live_workers

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


def _consumed_topics(request: Request) -> dict[str, int]:
    """The topics the workers consume, with their partition counts (the dead-letter topic is read by people)."""
    settings = request.app.state.settings
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        registry = request.app.state.registry = ModelRegistry.from_yaml(settings.models_config)
    return {t.name: t.partitions for t in pipeline_topics(settings, registry) if t.name != settings.topic_dead_letter}


async def _workers(request: Request) -> tuple[bool, dict]:
    settings = request.app.state.settings
    try:
        async with request.app.state.pool.connection(timeout=3) as conn:
            live = await live_workers(conn, settings.faust_app_id, settings.heartbeat_fresh_s)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return False, {"error": f"{type(exc).__name__}"}
    unassigned = {topic: sorted(set(range(count)) - live.held.get(topic, set()))
                  for topic, count in _consumed_topics(request).items()}
    unassigned = {topic: parts for topic, parts in unassigned.items() if parts}
    # Lag informs (a backlog is not unreadiness: the broker holds it); it is per topic, summed over partitions.
    return not unassigned, {"unassigned_partitions": unassigned, "consumer_lag": live.lag}


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """Liveness: this process serves requests. Orchestrators restart it when this fails."""
    bridge = request.app.state.bridge
    return JSONResponse(status_code=200, content={"status": "ok", "instance": bridge.instance_id,
                                                  "reply_topic": bridge.reply_topic})


@router.get("/readyz", responses={503: {"description": "broker, database or workers not ready"}})
async def readyz(request: Request) -> JSONResponse:
    bridge = request.app.state.bridge
    broker = "ok" if await bridge.broker_ok() else "down"
    database = await _database_ok(request)
    workers_ok, workers = (await _workers(request)) if database == "ok" else (False, {"error": "no database"})
    # A scanner that failed to load does not block: only tenants with a PII mode need it, and they get the error.
    pii = request.app.state.gatekeeper.pii_state
    ready = broker == "ok" and database == "ok" and workers_ok and pii != "loading"
    return JSONResponse(status_code=200 if ready else 503, content={
        "status": "ready" if ready else "not ready", "broker": broker, "database": database,
        "workers": "ok" if workers_ok else "missing", "pii_scanner": pii, **workers,
        "instance": bridge.instance_id, "reply_topic": bridge.reply_topic,
    })
