"""GET /v1/models: ``router``, ``router/<policy>`` and every configured model, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ingest.api.deps import RegistryDep, SettingsDep
from ingest.api.openai_schemas import OpenAIError, model_list

router = APIRouter(tags=["openai"])

# Fixed so the list does not change between calls; OpenAI's field is the model's creation time.
_CREATED = 0


def _entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "router"}


@router.get("/v1/models")
async def list_models(settings: SettingsDep, registry: RegistryDep) -> dict[str, Any]:
    return {"object": "list", "data": [_entry(name) for name in model_list(registry, settings.routing_policy)]}


@router.get("/v1/models/{model:path}", responses={404: {"description": "model_not_found"}})
async def get_model(model: str, settings: SettingsDep, registry: RegistryDep) -> dict[str, Any]:
    if model not in model_list(registry, settings.routing_policy):
        raise OpenAIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
    return _entry(model)
