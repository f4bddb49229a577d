"""Exact cost accounting in integer micro-USD.

Rates are micro-USD per 1k tokens (USD per 1M tokens x 1000). A call's cost is
``(input_tokens * input_rate + output_tokens * output_rate) / 1000`` rounded half up, once per attempt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

from providers.registry import ModelRegistry


@dataclass(frozen=True)
class Rate:
    model: str
    input_micro_usd_per_1k: int
    output_micro_usd_per_1k: int
    effective_from: datetime | None = None

    def cost_micro_usd(self, input_tokens: int, output_tokens: int) -> int:
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts must be non-negative")
        numerator = input_tokens * self.input_micro_usd_per_1k + output_tokens * self.output_micro_usd_per_1k
        return (numerator + 500) // 1000


def usd_per_million_to_micro_per_1k(usd_per_million: float) -> int:
    return round(usd_per_million * 1000)


class CostBook(ABC):
    @abstractmethod
    def rate(self, model: str, at: datetime) -> Rate:
        """The rate effective for ``model`` at time ``at``."""

    def cost_micro_usd(self, model: str, input_tokens: int, output_tokens: int, at: datetime) -> int:
        return self.rate(model, at).cost_micro_usd(input_tokens, output_tokens)


class RegistryCostBook(CostBook):
    """Rates from the registry's list prices, for use without a database."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._rates = {
            m.name: Rate(m.name, usd_per_million_to_micro_per_1k(m.prices.input),
                         usd_per_million_to_micro_per_1k(m.prices.output))
            for m in registry.models
        }

    def rate(self, model: str, at: datetime) -> Rate:
        try:
            return self._rates[model]
        except KeyError:
            raise KeyError(f"no rate for model {model!r}") from None
