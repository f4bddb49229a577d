"""FastAPI dependencies: settings, the Kafka bridge and the database pool of this API process."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import AsyncConnectionPool

from core.registry import ModelRegistry
from core.settings import Settings
from ingest.api.schemas import PromptIn
from ingest.bridge import KafkaBridge


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



def get_tenant(request: Request) -> str:
    """The caller's tenant. The one place it is decided: API keys will map a key to its tenant here. Until
    then the ``X-Router-Tenant`` header names it, else "default" (the tenant of a prompt sent without one)."""
    tenant = request.headers.get("x-router-tenant", "default").strip()
    if not tenant or len(tenant) > 128:
        raise HTTPException(400, detail="X-Router-Tenant must hold 1 to 128 characters")
    return tenant


def get_optional_pool(request: Request) -> AsyncConnectionPool | None:
    return request.app.state.pool


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
TenantDep = Annotated[str, Depends(get_tenant)]
BridgeDep = Annotated[KafkaBridge, Depends(get_bridge)]
PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]
OptionalPoolDep = Annotated[AsyncConnectionPool | None, Depends(get_optional_pool)]


def check_prompt_size(body: PromptIn, settings: Settings) -> None:
    """Refuse an over-long prompt as a 422, before anything is published."""
    if len(body.prompt) > settings.max_prompt_chars:
        raise RequestValidationError([{
            "type": "string_too_long", "loc": ("body", "prompt"),
            "msg": f"prompt has {len(body.prompt)} characters; the limit is {settings.max_prompt_chars}",
        }])
    if not body.prompt.strip():
        raise RequestValidationError([{
            "type": "value_error", "loc": ("body", "prompt"), "msg": "prompt must not be empty or whitespace",
        }])
