"""POST /v1/chat/completions: the OpenAI-compatible door, on the same bridge as /generate.

``model`` selects the behaviour: ``router`` (or ``router/<policy>``) routes; a configured model's name calls that
model directly through the same pipeline (logged and priced the same way); anything else is 404 model_not_found.
With ``stream: true`` the answer comes as server-sent events; see ``KafkaBridge.stream`` and
``LadderExecutor.streams_live`` for when tokens are live and when they are held for the answer checks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from psycopg_pool import PoolTimeout
from pydantic import ValidationError

from core.messages import TIER_ORDER, ChunkMessage, CompletionMessage, PromptMessage
from core.registry import ModelRegistry
from core.settings import Settings
from ingest.accept import unwind_ledger
from ingest.api.deps import BridgeDep, CurrentKey, GatekeeperDep, OptionalPoolDep, RegistryDep, SettingsDep
from ingest.api.openai_schemas import (
    ROUTER_MODEL,
    ChatCompletionRequest,
    OpenAIError,
    chat_completion_body,
    chunk_body,
    invalid_request,
    router_fields,
    router_headers,
    usage,
)
from ingest.bridge import GenerateTimeout, KafkaBridge
from sql.repository import conversation_models

log = logging.getLogger(__name__)

router = APIRouter(tags=["openai"])

CONVERSATION_HEADER = "x-conversation-id"


async def read_body(request: Request, settings: Settings) -> ChatCompletionRequest:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.gateway_max_body_bytes:
        raise OpenAIError(413, f"Request body of {int(declared)} bytes exceeds the limit of "
                               f"{settings.gateway_max_body_bytes} bytes", code="request_too_large")
    raw = await request.body()
    if len(raw) > settings.gateway_max_body_bytes:
        raise OpenAIError(413, f"Request body of {len(raw)} bytes exceeds the limit of "
                               f"{settings.gateway_max_body_bytes} bytes", code="request_too_large")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "The request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def resolve_model(name: str, registry: ModelRegistry, settings: Settings) -> str | None:
    """None to route; else the configured model to call directly."""
    if name in (ROUTER_MODEL, f"{ROUTER_MODEL}/{settings.routing_policy}"):
        return None
    if name in {spec.name for spec in registry.models}:
        return name
    raise OpenAIError(404, f"The model '{name}' does not exist or you do not have access to it.",
                      param="model", code="model_not_found")


async def earlier_models(request: Request, bridge: KafkaBridge, conversation_id: str, user: str | None) -> set[str]:
    models = bridge.conversation_models(conversation_id, user)
    pool = request.app.state.pool
    if pool is not None:
        try:
            async with pool.connection(timeout=2) as conn:
                models |= set(await conversation_models(conn, conversation_id, user))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("conversation %s: earlier turns not read: %s", conversation_id, exc)
    return models


async def to_prompt(request: Request, body: ChatCompletionRequest, settings: Settings, registry: ModelRegistry,
                    bridge: KafkaBridge, tenant: str = "default") -> PromptMessage:
    requested = resolve_model(body.model, registry, settings)
    if body.n not in (None, 1):
        raise OpenAIError(400, "Only n=1 is supported: the router returns one answer per request", param="n",
                          code="unsupported_value")
    turns = [turn.model_dump(exclude_none=True) for turn in body.messages]
    metadata = dict(body.metadata or {})
    conversation_id = request.headers.get(CONVERSATION_HEADER) or metadata.get("conversation_id")
    if conversation_id:
        metadata["conversation_id"] = conversation_id[:128]
    try:
        prompt = PromptMessage(
            messages=turns, max_tokens=body.max_completion_tokens or body.max_tokens or settings.default_max_tokens,
            user=body.user, tenant=tenant, metadata=metadata, params=body.params(), requested_model=requested,
            stream=body.stream)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    if len(prompt.conversation_text) > settings.max_prompt_chars:
        raise OpenAIError(400, f"The conversation has {len(prompt.conversation_text)} characters; the limit is "
                               f"{settings.max_prompt_chars}", param="messages", code="context_length_exceeded")
    if conversation_id and requested is None and settings.conversation_pinning:
        tiers = [registry.get(m).tier for m in await earlier_models(request, bridge, metadata["conversation_id"],
                                                                     body.user)
                 if m in {spec.name for spec in registry.models}]
        if tiers:
            prompt.min_tier = max(tiers, key=TIER_ORDER.index)
    return prompt


def failure(completion: CompletionMessage, fields: dict[str, Any]) -> OpenAIError:
    return OpenAIError(502, f"No model could answer: {completion.error or 'every attempt failed'}", type="api_error",
                       code="upstream_error", headers=router_headers(fields))


def timeout_error(exc: GenerateTimeout) -> OpenAIError:
    if exc.parked is not None:  # the models are down, not slow: 503 with when to look again
        return OpenAIError(503, exc.parked_detail(), type="server_error", code="models_unavailable",
                           headers={"x-router-request-id": exc.request_id, "Retry-After": str(exc.retry_after_s())})
    return OpenAIError(504, f"No answer within {exc.timeout_s:g}s; the request is still being processed and will be "
                            f"recorded: GET /requests/{exc.request_id}", type="timeout", code="timeout",
                       headers={"x-router-request-id": exc.request_id})


# Every answer but 200 carries OpenAI's error object ({"error": {"message", "type", "param", "code"}}).
CHAT_ERRORS = {
    400: {"description": "invalid request: body, messages, parameters (n > 1), a guardrail refusal"},
    403: {"description": "the key may not use this tenant or model"},
    404: {"description": "model_not_found: neither router nor a configured model"},
    409: {"description": "the request id is taken"},
    413: {"description": "the body or the conversation is over the size limit"},
    429: {"description": "rate_limit_exceeded or budget_exceeded (Retry-After)"},
    502: {"description": "no model could answer"},
    503: {"description": "the broker or the database cannot accept the request (Retry-After)"},
    504: {"description": "no answer in time; the request is still processed and recorded"},
}


@router.post("/v1/chat/completions", responses=CHAT_ERRORS)
async def chat_completions(request: Request, settings: SettingsDep, registry: RegistryDep, bridge: BridgeDep,
                           key: CurrentKey, gatekeeper: GatekeeperDep, pool: OptionalPoolDep):
    body = await read_body(request, settings)
    prompt = await to_prompt(request, body, settings, registry, bridge, key.tenant)
    # Limits, guardrails, rate limit and budget hold, as for /generate, with the accepted-requests ledger row.
    admitted = await gatekeeper.admit(prompt, key)
    prompt, admission_headers = admitted.message, admitted.headers

    async def publish_failed(request_id: str) -> None:
        await gatekeeper.release(request_id)
        await unwind_ledger(pool, request_id)

    if body.stream:
        return await stream_response(prompt, body, settings, registry, bridge, publish_failed, admission_headers)
    try:
        completion = await bridge.generate(prompt, settings.generate_timeout_s, on_publish_error=publish_failed)
    except GenerateTimeout as exc:
        raise timeout_error(exc) from None
    fields = router_fields(completion, registry)
    if completion.status != "ok":
        raise failure(completion, fields)
    return JSONResponse(chat_completion_body(completion, fields),
                        headers={**admission_headers, **router_headers(fields)})


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def stream_response(prompt: PromptMessage, body: ChatCompletionRequest, settings: Settings,
                          registry: ModelRegistry, bridge: KafkaBridge,
                          publish_failed: Callable[[str], Awaitable[None]], admission_headers: dict[str, str]):
    events = bridge.stream(prompt, settings.generate_timeout_s, on_publish_error=publish_failed)
    try:
        first = await anext(events)  # the response starts (with its headers) once the answering model is known
    except GenerateTimeout as exc:
        raise timeout_error(exc) from None
    request_id = prompt.request_id
    if isinstance(first, CompletionMessage) and first.status != "ok":
        await events.aclose()
        raise failure(first, router_fields(first, registry))
    model = first.model if isinstance(first, ChunkMessage) else first.final_model
    headers = {**admission_headers, "x-router-request-id": request_id, "x-router-model": model,
               "cache-control": "no-cache", "x-accel-buffering": "no"}
    spec = next((m for m in registry.models if m.name == model), None)
    if spec is not None:
        headers["x-router-tier"] = spec.tier.value
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def event_stream() -> AsyncIterator[str]:
        try:
            yield sse(chunk_body(request_id, model, {"role": "assistant", "content": ""}))
            message: ChunkMessage | CompletionMessage = first
            while isinstance(message, ChunkMessage):
                yield sse(chunk_body(request_id, model, {"content": message.text}))
                try:
                    message = await anext(events)
                except GenerateTimeout as exc:
                    yield sse(timeout_error(exc).body())
                    return
            completion = message
            fields = router_fields(completion, registry)
            if completion.status != "ok":
                yield sse(failure(completion, fields).body())
                return
            if completion.streamed_chunks == 0 and completion.response:
                # Held back for its answer checks: the checked answer goes out now.
                yield sse(chunk_body(request_id, model, {"content": completion.response}))
            if completion.tool_calls:
                yield sse(chunk_body(request_id, model, {"tool_calls": [
                    {"index": index, **call} for index, call in enumerate(completion.tool_calls)]}))
            yield sse(chunk_body(request_id, model, {}, completion.finish_reason or "stop", router=fields))
            if include_usage:
                final = chunk_body(request_id, model, {}, usage=usage(completion))
                final["choices"] = []
                yield sse(final)
            yield sse("[DONE]")
        finally:
            await events.aclose()  # a client gone mid-stream: stop listening; the pipeline still records it

    return StreamingResponse(event_stream(), media_type="text/event-stream", headers=headers)
