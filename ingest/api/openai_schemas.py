"""The OpenAI-compatible gateway's request body, error shape and response bodies (OpenAI's API reference).

Unknown request fields are ignored, as OpenAI does. Every refusal is an ``OpenAIError`` rendered as
``{"error": {"message", "type", "param", "code"}}`` with OpenAI's status code.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.messages import ChatRole, CompletionMessage
from core.registry import ModelRegistry

ROUTER_MODEL = "router"


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body(), headers=self.headers)


async def openai_error_handler(_request: Request, exc: OpenAIError) -> JSONResponse:
    return exc.response()


def _param(loc: tuple[Any, ...]) -> str:
    """A pydantic location as OpenAI names a parameter: ``messages[0].content``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = str(part)
        elif part in ("str", "list[dict[str,any]]", "function-after[_check()]") or "[" in str(part):
            continue  # pydantic's union member names, not fields
        else:
            out += f".{part}"
    return out


def invalid_request(exc: ValidationError) -> OpenAIError:
    error = exc.errors()[0]
    param = _param(tuple(error.get("loc", ())))
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    code = "missing_required_parameter" if error.get("type") == "missing" else "invalid_value"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return OpenAIError(400, f"Invalid '{param}': {message}{more}", param=param or None, code=code)


class ChatTurnIn(BaseModel):
    """One message of ``messages``: text content, or the array-of-parts form (text parts are read)."""

    model_config = ConfigDict(extra="allow")

    role: ChatRole
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatTurnIn:
        if isinstance(self.content, list):
            for part in self.content:
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise ValueError("a text content part needs a string 'text'")
                if "type" not in part:
                    raise ValueError("every content part needs a 'type'")
        has_content = bool(self.content) if isinstance(self.content, list) else bool(self.content and
                                                                                    self.content.strip())
        if self.role == "assistant":
            if not has_content and not self.tool_calls:
                raise ValueError("an assistant message needs content or tool_calls")
        elif not has_content:
            raise ValueError(f"a {self.role} message needs non-empty content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatTurnIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=128_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=128_000)
    n: int | None = Field(None, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(None, max_length=128)
    metadata: dict[str, str] | None = None

    def params(self) -> dict[str, Any]:
        """The parameters passed to the model that answers (model, messages and max_tokens are set apart)."""
        keys = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "stop", "seed", "response_format",
                "tools", "tool_choice", "parallel_tool_calls")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


def model_list(registry: ModelRegistry, policy: str) -> list[str]:
    return [ROUTER_MODEL, f"{ROUTER_MODEL}/{policy}", *(spec.name for spec in registry.models)]


def router_fields(completion: CompletionMessage, registry: ModelRegistry) -> dict[str, Any]:
    """The documented ``router`` field of every response: what was chosen, why, and what it cost."""
    decision = completion.decision
    model = completion.final_model
    tier = registry.get(model).tier.value if model and model in {m.name for m in registry.models} else None
    cost_usd = completion.cost_micro_usd / 1e6
    counterfactual_usd = (completion.counterfactual_cost_micro_usd / 1e6
                          if completion.counterfactual_cost_micro_usd is not None else None)
    return {
        "request_id": completion.request_id, "model": model, "tier": tier, "routed_model": decision.model,
        "difficulty": decision.difficulty, "confidence": decision.confidence, "reason": decision.reason,
        "policy": decision.policy, "classifier": decision.classifier, "cost_usd": cost_usd,
        "counterfactual_model": completion.counterfactual_model, "counterfactual_cost_usd": counterfactual_usd,
        "savings_usd": None if counterfactual_usd is None else counterfactual_usd - cost_usd,
        "attempts": [{"model": a.model, "status": a.status, "latency_ms": a.latency_ms} for a in completion.attempts],
        "latency_ms": completion.latency_ms, "ttft_ms": completion.ttft_ms,
    }


def router_headers(fields: dict[str, Any]) -> dict[str, str]:
    headers = {"x-router-request-id": fields["request_id"]}
    for key in ("model", "tier"):
        if fields.get(key):
            headers[f"x-router-{key}"] = str(fields[key])
    if fields.get("cost_usd") is not None:
        headers["x-router-cost-usd"] = f"{fields['cost_usd']:.8f}"
    if fields.get("counterfactual_cost_usd") is not None:
        headers["x-router-counterfactual-cost-usd"] = f"{fields['counterfactual_cost_usd']:.8f}"
    return headers


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def usage(completion: CompletionMessage) -> dict[str, int]:
    return {"prompt_tokens": completion.input_tokens, "completion_tokens": completion.output_tokens,
            "total_tokens": completion.input_tokens + completion.output_tokens}


def chat_completion_body(completion: CompletionMessage, fields: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": completion.response, "refusal": None}
    if completion.tool_calls:
        message["tool_calls"] = completion.tool_calls
    return {
        "id": completion_id(completion.request_id), "object": "chat.completion",
        "created": int(completion.prompt.created_at.timestamp()), "model": completion.final_model,
        "choices": [{"index": 0, "message": message, "finish_reason": completion.finish_reason or "stop",
                     "logprobs": None}],
        "usage": usage(completion), "system_fingerprint": None, "router": fields,
    }


def chunk_body(request_id: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"id": completion_id(request_id), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}

