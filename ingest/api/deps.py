"""FastAPI dependencies: settings, the Kafka bridge, the database pool of this API process, and the caller's
API key (``CurrentKey``), required by every route but the health and metrics ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import psycopg
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from core.registry import ModelRegistry
from core.settings import Settings
from ingest.admission import Gatekeeper
from ingest.api.errors import ApiError
from ingest.api.schemas import PromptIn
from ingest.bridge import KafkaBridge
from sql.keys import ApiKey, authenticate


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_bridge(request: Request) -> KafkaBridge:
    return request.app.state.bridge


def get_pool(request: Request) -> AsyncConnectionPool:
    pool = request.app.state.pool
    if pool is None:
        raise HTTPException(503, detail="no database configured: set ROUTER_PG_DSN or PG_DSN")
    return pool


def get_registry(request: Request) -> ModelRegistry:
    """The configured models (for /v1's model names), read once per API process."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        registry = request.app.state.registry = ModelRegistry.from_yaml(request.app.state.settings.models_config)
    return registry


def get_gatekeeper(request: Request) -> Gatekeeper:
    return request.app.state.gatekeeper


def get_optional_pool(request: Request) -> AsyncConnectionPool | None:
    return request.app.state.pool


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
BridgeDep = Annotated[KafkaBridge, Depends(get_bridge)]
PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]
OptionalPoolDep = Annotated[AsyncConnectionPool | None, Depends(get_optional_pool)]
GatekeeperDep = Annotated[Gatekeeper, Depends(get_gatekeeper)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <router API key>")
_api_key_header = APIKeyHeader(name="x-api-key", auto_error=False, description="The router API key")


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def require_key(request: Request, settings: SettingsDep, pool: PoolDep,
                      bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                      header_key: Annotated[str | None, Depends(_api_key_header)]) -> ApiKey:
    """The caller's key, from ``Authorization: Bearer`` or ``x-api-key``; 401 when it is missing, unknown,
    revoked or expired. Checked against Postgres on every call, so a revocation holds at once everywhere."""
    presented = bearer.credentials if bearer is not None else header_key
    if not presented:
        raise _unauthorized("missing API key: send Authorization: Bearer <key> or x-api-key: <key>")
    try:
        async with pool.connection(timeout=15) as conn:
            key = await authenticate(conn, settings.api_key_pepper.get_secret_value(), presented.strip())
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise ApiError(503, f"database unavailable: {type(exc).__name__}", "database_unavailable",
                       headers={"Retry-After": "5"}) from exc
    # The presented key is never echoed back or logged: only its public id once it is known.
    if key is None:
        raise _unauthorized("invalid API key")
    if key.revoked_at is not None:
        raise _unauthorized(f"API key {key.key_id} has been revoked")
    if not key.usable_at(datetime.now(UTC)):
        raise _unauthorized(f"API key {key.key_id} has expired")
    request.state.api_key = key
    return key


CurrentKey = Annotated[ApiKey, Depends(require_key)]


def get_tenant(key: CurrentKey) -> str:
    """The caller's tenant: always the API key's, never a header or the body."""
    return key.tenant


TenantDep = Annotated[str, Depends(get_tenant)]


def check_prompt_size(body: PromptIn, settings: Settings) -> None:
    """Refuse a blank prompt as a 422, before anything is published (limits on size: ``Gatekeeper.admit``)."""
    if not body.prompt.strip():
        raise RequestValidationError([{
            "type": "value_error", "loc": ("body", "prompt"), "msg": "prompt must not be empty or whitespace",
        }])


def tenant_for(body: PromptIn, key: ApiKey) -> str:
    """The tenant a prompt is sent for: the key's, never the body's (an admin key may act for any tenant)."""
    if body.tenant is None or body.tenant == key.tenant:
        return key.tenant
    if key.is_admin:
        return body.tenant
    raise ApiError(403, "the tenant comes from the API key: leave 'tenant' out or send the key's own tenant",
                   "tenant_mismatch", param="tenant")
