"""Provider for any OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama, Groq, Together), on the openai SDK.

One ``AsyncOpenAI`` client per model, with the model's own timeout (per HTTP attempt) and retries of
408/409/429/5xx, timeouts and connection errors, with exponential backoff and jitter honouring ``Retry-After``.
By count (``max_retries``, the SDK's own retries) unless the model has a ``retry_budget_s``: then by time
(tenacity, with the SDK's retries off): a retry is made while it can start within the budget from the call's
start and before the request's ``deadline_at``, and a streamed call is not retried once text has gone out.
An httpx event hook counts the HTTP requests so every attempt records how many retries it took.

When the endpoint reports no ``usage``, tokens are counted with the model family's tokenizer
(``providers.tokens``): the prompt as the chat endpoint frames it, and the answer.

The model receives the request's conversation as sent (``PromptMessage.conversation``) and its pass-through
parameters (``PASS_THROUGH_PARAMS``). With ``on_delta`` the call streams (``stream_options.include_usage`` for
billed tokens) and hands each text delta on as it arrives; tool-call fragments are merged into whole calls.
"""

from __future__ import annotations

import contextvars
import os
import time

import openai
from openai import AsyncOpenAI
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_before_delay, wait_exponential_jitter

from core.messages import PromptMessage, utcnow
from core.registry import ModelSpec
from providers.base import DeltaCallback, Provider, ProviderError, ProviderResult
from providers.tokens import count_chat_prompt_tokens, count_tokens

# HTTP requests sent for the call running in this task (a one-item list, so the hook can add to it).
_requests_sent: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("requests_sent", default=None)


async def _count_request(_request) -> None:
    counter = _requests_sent.get()
    if counter is not None:
        counter[0] += 1


# Request fields a caller may set that go to the model as sent; the provider sets model, messages and max_tokens.
PASS_THROUGH_PARAMS = frozenset({
    "temperature", "top_p", "stop", "seed", "response_format", "tools", "tool_choice", "parallel_tool_calls",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user",
})


def merge_tool_call_delta(calls: dict[int, dict], delta: dict) -> None:
    """Add one streamed tool-call fragment to the calls so far (arguments arrive in pieces)."""
    index = delta.pop("index", 0)
    call = calls.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    function = delta.get("function") or {}
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""


class MissingApiKeyError(ValueError):
    """A model names an API-key variable that is not set."""


def resolve_api_key(spec: ModelSpec) -> str:
    """The model's key from the environment variable it names; local endpoints may name none."""
    if not spec.api_key_env:
        return "unused"  # the SDK insists on a value; local servers (vLLM, Ollama, the stub) ignore it
    key = os.environ.get(spec.api_key_env, "")
    if not key:
        raise MissingApiKeyError(
            f"model {spec.name!r} reads its API key from ${spec.api_key_env}, which is not set "
            f"(export it, or use config/models.demo.yaml to replay recorded outcomes without keys)"
        )
    return key


def transient(exc: BaseException) -> bool:
    """The errors the SDK itself would retry: 408, 409, 429, 5xx, timeouts and connection errors."""
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is one
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code in (408, 409, 429) or exc.status_code >= 500)


def retry_after_s(exc: BaseException | None) -> float | None:
    """The server's Retry-After (seconds or retry-after-ms), when it sent one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:  # an HTTP date: fall back to the backoff
        return None
    return None


def wait_retry_after_or(backoff):
    """Wait what the server asked for (capped at 60 s), never less than the backoff."""
    def wait(retry_state: RetryCallState) -> float:
        asked = retry_after_s(retry_state.outcome.exception() if retry_state.outcome else None)
        return max(min(asked or 0.0, 60.0), backoff(retry_state))
    return wait


class OpenAICompatibleProvider(Provider):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if not spec.base_url:
            raise ValueError(f"model {spec.name!r} of kind 'openai' needs a base_url")
        if "${" in spec.base_url:
            raise ValueError(f"model {spec.name!r}: base_url {spec.base_url!r} names an environment variable "
                             f"that is not set")
        self.client = AsyncOpenAI(
            base_url=spec.base_url,
            api_key=resolve_api_key(spec),
            timeout=spec.timeout_s,
            max_retries=0 if spec.retry_budget_s else spec.max_retries,
            default_headers=spec.default_headers or None,
            default_query=spec.default_query or None,
            http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [_count_request]}),
        )

    async def complete(self, prompt: PromptMessage, max_output_tokens: int | None = None,
                       on_delta: DeltaCallback | None = None) -> ProviderResult:
        counter = [0]
        token = _requests_sent.set(counter)
        started = time.perf_counter()
        request = {
            **{key: value for key, value in prompt.params.items() if key in PASS_THROUGH_PARAMS},
            "model": self.spec.provider_model_id,
            "messages": [turn.model_dump(exclude_none=True) for turn in prompt.conversation],
            "max_tokens": self.output_limit(prompt, max_output_tokens),
        }
        try:
            text, finish_reason, tool_calls, usage = await self._call(prompt, request, counter, started, on_delta)
        except openai.APIStatusError as exc:
            raise ProviderError(f"{self.spec.name}: HTTP {exc.status_code}: {exc.message}", status=exc.status_code,
                                retries=max(counter[0] - 1, 0),
                                latency_ms=(time.perf_counter() - started) * 1000) from exc
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            kind = "timeout" if isinstance(exc, openai.APITimeoutError) else "connection error"
            raise ProviderError(f"{self.spec.name}: {kind} after {self.spec.timeout_s:g}s per try: {exc}",
                                retries=max(counter[0] - 1, 0), timed_out=isinstance(exc, openai.APITimeoutError),
                                latency_ms=(time.perf_counter() - started) * 1000) from exc
        except openai.OpenAIError as exc:  # e.g. a response body the SDK cannot parse
            raise ProviderError(f"{self.spec.name}: {type(exc).__name__}: {exc}", retries=max(counter[0] - 1, 0),
                                latency_ms=(time.perf_counter() - started) * 1000) from exc
        finally:
            _requests_sent.reset(token)
        latency_ms = (time.perf_counter() - started) * 1000
        if usage is not None and usage.prompt_tokens is not None and usage.completion_tokens is not None:
            input_tokens, output_tokens, reported = usage.prompt_tokens, usage.completion_tokens, True
        else:
            input_tokens = count_chat_prompt_tokens(self.spec, prompt.conversation_text)
            output_tokens = count_tokens(self.spec, text)
            reported = False
        return ProviderResult(
            text=text,
            finish_reason=finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            usage_reported=reported,
            retries=max(counter[0] - 1, 0),
            tool_calls=tool_calls,
        )

    async def _call(self, prompt: PromptMessage, request: dict, counter: list[int], started: float,
                    on_delta: DeltaCallback | None):
        streamed = False

        async def passing_on(text: str) -> None:
            nonlocal streamed
            streamed = True  # text went out: a retry would repeat it
            await on_delta(text)

        async def once():
            if on_delta is None:
                response = await self.client.chat.completions.create(**request)
                return self._read_response(response, counter, started)
            return await self._read_stream(request, passing_on)

        if not self.spec.retry_budget_s:
            return await once()
        budget_s = self.spec.retry_budget_s
        if prompt.deadline_at is not None:
            budget_s = min(budget_s, (prompt.deadline_at - utcnow()).total_seconds())
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: transient(exc) and not streamed),
            wait=wait_retry_after_or(wait_exponential_jitter(multiplier=0.5, max=8, jitter=0.5)),
            stop=stop_before_delay(max(budget_s, 0)), reraise=True)
        return await retrying(once)

    def _read_response(self, response, counter: list[int], started: float):
        if not response.choices:
            raise ProviderError(f"{self.spec.name}: response has no choices", retries=max(counter[0] - 1, 0),
                                latency_ms=(time.perf_counter() - started) * 1000)
        choice = response.choices[0]
        tool_calls = ([call.model_dump(exclude_none=True) for call in choice.message.tool_calls]
                      if choice.message.tool_calls else None)
        return choice.message.content or "", choice.finish_reason, tool_calls, response.usage

    async def _read_stream(self, request: dict, on_delta: DeltaCallback):
        """Stream the answer (usage in the last chunk), passing each text delta on as it arrives."""
        stream = await self.client.chat.completions.create(**request, stream=True,
                                                           stream_options={"include_usage": True})
        parts: list[str] = []
        calls: dict[int, dict] = {}
        finish_reason = usage = None
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                delta = choice.delta
                if delta is not None and delta.content:
                    parts.append(delta.content)
                    await on_delta(delta.content)
                for call in (delta.tool_calls or []) if delta is not None else []:
                    merge_tool_call_delta(calls, call.model_dump(exclude_none=True))
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
        if not parts and not calls and finish_reason is None:
            raise ProviderError(f"{self.spec.name}: stream ended without an answer")
        tool_calls = [calls[index] for index in sorted(calls)] or None
        return "".join(parts), finish_reason, tool_calls, usage

    async def aclose(self) -> None:
        await self.client.close()
