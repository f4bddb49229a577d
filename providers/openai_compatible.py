"""Provider for any OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama, Groq, Together), on the openai SDK."""

from __future__ import annotations

import os
import time

import openai
from openai import AsyncOpenAI

from core.messages import PromptMessage
from providers.base import Provider, ProviderError, ProviderResult
from providers.registry import ModelSpec


class OpenAICompatibleProvider(Provider):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if not spec.base_url:
            raise ValueError(f"model {spec.name!r} of kind 'openai' needs a base_url")
        api_key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        self.client = AsyncOpenAI(
            base_url=spec.base_url,
            api_key=api_key or "unused",
            timeout=spec.timeout_s,
            max_retries=spec.max_retries,
        )

    async def complete(self, prompt: PromptMessage) -> ProviderResult:
        started = time.perf_counter()
        try:
            response = await self.client.chat.completions.create(
                model=self.spec.provider_model_id,
                messages=[{"role": "user", "content": prompt.prompt}],
                max_tokens=min(prompt.max_tokens, self.spec.max_output_tokens),
            )
        except openai.APIStatusError as exc:
            raise ProviderError(f"{self.spec.name}: HTTP {exc.status_code}: {exc.message}", status=exc.status_code,
                                latency_ms=(time.perf_counter() - started) * 1000) from exc
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise ProviderError(f"{self.spec.name}: {type(exc).__name__}: {exc}",
                                latency_ms=(time.perf_counter() - started) * 1000) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        choice = response.choices[0]
        usage = response.usage
        return ProviderResult(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            latency_ms=latency_ms,
            usage_reported=usage is not None,
        )

    async def aclose(self) -> None:
        await self.client.close()
