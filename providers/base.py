"""The provider interface: one client per configured model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from core.messages import PromptMessage
from providers.registry import ModelSpec


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


class ProviderError(Exception):
    """A call that failed after its retries. ``retryable`` says whether another model may succeed."""

    def __init__(self, message: str, *, status: int | None = None, retries: int = 0, latency_ms: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.retries = retries
        self.latency_ms = latency_ms


class Provider(ABC):
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    async def complete(self, prompt: PromptMessage) -> ProviderResult:
        """Answer the prompt, or raise ProviderError."""

    async def aclose(self) -> None:
        return None
