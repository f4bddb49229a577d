"""A local OpenAI-compatible server on loopback that stands in for paid model APIs in tests and benchmarks.

The real ``openai`` SDK talks to it over HTTP. Faults are injected per model through ``POST /_stub/faults``:
HTTP errors for the next N calls (with an optional ``Retry-After``), a delay, a refusal, a truncated
answer (``finish_reason=length``), or an empty answer. ``GET /_stub/calls`` lists the calls received.
``stream: true`` answers in server-sent-event chunks, one word each (``usage`` last with
``stream_options.include_usage``). A request with ``tools`` (and ``tool_choice`` not ``"none"``) whose last turn is
not a tool result is answered with a call to its first tool.

    python -m stack.stub_server --port 18080
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field


class Fault(BaseModel):
    fail_status: int | None = None
    fail_times: int = 0
    retry_after_s: float | None = None
    delay_s: float = 0.0
    refuse: bool = False
    truncate: bool = False
    empty: bool = False
    omit_usage: bool = False
    reply: str | None = None
    # Streamed answers: pause this long between chunks (a model generating tokens).
    token_delay_s: float = 0.0


class StubState:
    def __init__(self) -> None:
        self.faults: dict[str, Fault] = {}
        self.calls: list[dict[str, Any]] = []


class FaultsBody(BaseModel):
    faults: dict[str, Fault] = Field(default_factory=dict)
    reset_calls: bool = True


def _count_words(text: str) -> int:
    return max(1, len(text.split()))


# Sampling and tool parameters recorded with each call, so tests can see what reached the model.
PARAMS = ("temperature", "top_p", "stop", "seed", "response_format", "tools", "tool_choice", "n")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _stream(model: str, text: str, finish_reason: str, tool_calls: list | None, prompt: str, fault: Fault,
                  include_usage: bool) -> AsyncIterator[str]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    for i, word in enumerate(re.findall(r"\S+\s*|\s+", text)):
        if fault.token_delay_s and i:
            await asyncio.sleep(fault.token_delay_s)
        yield chunk({"content": word})
    if tool_calls:
        yield chunk({"tool_calls": [{"index": 0, **tool_calls[0]}]})
    yield chunk({}, finish_reason)
    if include_usage:
        prompt_tokens, completion_tokens = _count_words(prompt), _count_words(text) if text else 0
        yield _sse({**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                     "completion_tokens": completion_tokens,
                                                     "total_tokens": prompt_tokens + completion_tokens}})
    yield "data: [DONE]\n\n"


def create_app() -> FastAPI:
    app = FastAPI(title="OpenAI-compatible stub")
    state = StubState()
    app.state.stub = state

    @app.post("/_stub/faults")
    async def set_faults(body: FaultsBody) -> dict[str, Any]:
        state.faults = dict(body.faults)
        if body.reset_calls:
            state.calls.clear()
        return {"ok": True}

    @app.get("/_stub/calls")
    async def calls() -> list[dict[str, Any]]:
        return state.calls

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        body = await request.json()
        model = body.get("model", "")
        messages = body.get("messages") or []
        prompt = "\n".join(_text(m.get("content")) for m in messages)
        fault = state.faults.get(model, Fault())
        state.calls.append({"model": model, "prompt": prompt, "max_tokens": body.get("max_tokens"), "at": time.time(),
                            "messages": messages, "stream": bool(body.get("stream")),
                            **{key: body[key] for key in PARAMS if key in body}})
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.fail_status and fault.fail_times > 0:
            fault.fail_times -= 1
            headers = {"retry-after": str(fault.retry_after_s)} if fault.retry_after_s is not None else {}
            return JSONResponse(
                {"error": {"message": f"injected failure for {model}", "type": "server_error"}},
                status_code=fault.fail_status, headers=headers,
            )
        finish_reason = "stop"
        if fault.refuse:
            text = "I'm sorry, but I can't help with that."
        elif fault.empty:
            text = ""
        elif fault.reply is not None:
            text = fault.reply
        else:
            text = f"[{model}] answer: {prompt[:200]}"
        if fault.truncate:
            finish_reason = "length"
        tool_calls = None
        tools = body.get("tools") or []
        if tools and body.get("tool_choice") != "none" and (messages[-1:] or [{}])[0].get("role") != "tool":
            name = tools[0].get("function", {}).get("name", "tool")
            tool_calls = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                           "function": {"name": name, "arguments": "{}"}}]
            text, finish_reason = "", "tool_calls"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(model, text, finish_reason, tool_calls, prompt, fault, include_usage),
                                     media_type="text/event-stream")
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text or None if tool_calls else text,
                                                 **({"tool_calls": tool_calls} if tool_calls else {})},
                         "finish_reason": finish_reason}],
        }
        if not fault.omit_usage:
            prompt_tokens, completion_tokens = _count_words(prompt), _count_words(text) if text else 0
            payload["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                "total_tokens": prompt_tokens + completion_tokens}
        return JSONResponse(payload)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible stub server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
