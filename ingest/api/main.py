"""The ingest FastAPI app, built by ``create_app`` (uvicorn: ``ingest.api.main:create_app --factory``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator
from psycopg_pool import AsyncConnectionPool
from starlette.exceptions import HTTPException

from core.logs import quiet_repeated_kafka_errors
from core.registry import ModelRegistry
from core.settings import Settings, get_settings
from ingest.admission import Gatekeeper
from ingest.api.body_limit import BodyLimit
from ingest.api.errors import error_response, http_error
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


async def _broker_error(request: Request, exc: KafkaError) -> JSONResponse:
    # Nothing was accepted: the client may retry (with the same request_id to stay idempotent).
    return error_response(request, 503, f"broker unavailable, prompt not accepted: {type(exc).__name__}: {exc}",
                          "broker_unavailable")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        quiet_repeated_kafka_errors()
        registry = ModelRegistry.from_yaml(settings.models_config)
        bridge = KafkaBridge(settings, registry=registry)
        await bridge.start()
        pool = None
        if settings.pg_dsn:
            # Not waiting for the database: the API starts, and /readyz says when it is down.
            # Autocommit: a lone statement is one round trip (no BEGIN before it, no COMMIT when the connection
            # goes back to the pool); writes that must be atomic open their own transaction.
            pool = AsyncConnectionPool(settings.pg_dsn, min_size=min(settings.pg_pool_min, settings.pg_pool_max),
                                       max_size=settings.pg_pool_max, open=False,
                                       name="ingest", kwargs={"autocommit": True})
            await pool.open(wait=False)
        gatekeeper = Gatekeeper(settings, registry, pool)
        # Tokenizers price each request's hold: loaded before serving. The PII scanner loads in the background.
        await asyncio.to_thread(gatekeeper.warm_up_tokenizers)
        threading.Thread(target=gatekeeper.warm_up_pii, name="pii-warm-up", daemon=True).start()
        app.state.bridge, app.state.pool, app.state.gatekeeper = bridge, pool, gatekeeper
        sweeper = asyncio.create_task(gatekeeper.sweep_forever(), name="budget-sweep")
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await bridge.stop()
            if pool is not None:
                await pool.close()

    app = FastAPI(title="Cost-control model router: ingest", lifespan=lifespan)
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(KafkaError, _broker_error)
    app.add_exception_handler(OpenAIError, openai_error_handler)
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.include_router(api_router)
    # Prometheus /metrics: request counts and latency histograms per route, from this process.
    Instrumentator(excluded_handlers=["/metrics", "/healthz", "/readyz"]).instrument(app).expose(
        app, include_in_schema=False)
    return app
