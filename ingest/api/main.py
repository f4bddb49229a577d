"""The ingest FastAPI app, built by ``create_app`` (uvicorn: ``ingest.api.main:create_app --factory``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator
from psycopg_pool import AsyncConnectionPool

from core.logs import quiet_repeated_kafka_errors
from core.settings import Settings, get_settings
from ingest.api.openai_schemas import OpenAIError, openai_error_handler
from ingest.api.routes import api_router
from ingest.bridge import KafkaBridge

log = logging.getLogger(__name__)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # One readable line plus the field errors; the offending input is not echoed (a prompt may be huge).
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": errors, "message": f"invalid request: {message}"})


async def _broker_error(_request: Request, exc: KafkaError) -> JSONResponse:
    # Nothing was accepted: the client may retry (with the same request_id to stay idempotent).
    return JSONResponse(status_code=503, content={"detail": f"broker unavailable, prompt not accepted: "
                                                            f"{type(exc).__name__}: {exc}"})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        quiet_repeated_kafka_errors()
        bridge = KafkaBridge(settings)
        await bridge.start()
        pool = None
        if settings.pg_dsn:
            # Not waiting for the database: the API starts, and /readyz says when it is down.
            pool = AsyncConnectionPool(settings.pg_dsn, min_size=1, max_size=settings.pg_pool_max, open=False,
                                       name="ingest")
            await pool.open(wait=False)
        app.state.bridge, app.state.pool = bridge, pool
        try:
            yield
        finally:
            await bridge.stop()
            if pool is not None:
                await pool.close()

    app = FastAPI(title="Cost-control model router: ingest", lifespan=lifespan)
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(KafkaError, _broker_error)
    app.add_exception_handler(OpenAIError, openai_error_handler)
    app.include_router(api_router)
    # Prometheus /metrics: request counts and latency histograms per route, from this process.
    Instrumentator(excluded_handlers=["/metrics", "/healthz", "/readyz"]).instrument(app).expose(
        app, include_in_schema=False)
    return app
