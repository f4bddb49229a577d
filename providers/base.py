"""The provider interface: one client per configured model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.messages import PromptMessage
from core.registry import ModelSpec


@dataclass(frozen=True)
class ProviderResult:
    text: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    latency_ms: float
    # True when the token counts came from the provider's own ``usage`` rather than our tokenizer.
    usage_reported: bool
    retries: int = 0
    # Recorded correctness of this answer, known only to the replay provider.
    correct: bool | None = None
    # Tool calls of the answer, in the OpenAI chat shape.
    tool_calls: list[dict[str, Any]] | None = None
    # Replay only: True when the answer is a recorded one, False when the stub answered an unrecorded prompt.
    recorded: bool | None = None


# Called with each piece of text as the model generates it (streamed calls only).
DeltaCallback = Callable[[str], Awaitable[None]]


class ProviderError(Exception):
    """A call that failed after its retries. ``retryable`` says whether another model may succeed."""

    def __init__(self, message: str, *, status: int | None = None, retries: int = 0, latency_ms: float = 0.0,
                 timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.timed_out = timed_out
        self.retries = retries
        self.latency_ms = latency_ms


class Provider(ABC):
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    async def complete(self, prompt: PromptMessage, max_output_tokens: int | None = None,
                       on_delta: DeltaCallback | None = None) -> ProviderResult:
        """Answer the prompt, or raise ProviderError. ``max_output_tokens``: the routing policy's output
        budget for this call, on top of the prompt's own ``max_tokens`` and the model's limit. With
        ``on_delta`` the answer's text is also passed on piece by piece while it is generated."""

    def output_limit(self, prompt: PromptMessage, max_output_tokens: int | None) -> int:
        limit = min(prompt.max_tokens, self.spec.max_output_tokens)
        return limit if max_output_tokens is None else min(limit, max_output_tokens)

    def recorded_answer(self, prompt: PromptMessage) -> ProviderResult | None:
        """This model's recorded answer to the prompt, in full, when it has one (replay): what it would have
        billed and whether it was right, for the always-expensive baseline. Live endpoints have none."""
        return None

    async def aclose(self) -> None:
        return None
