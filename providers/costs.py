"""Exact cost accounting in integer micro-USD.

Rates are micro-USD per 1k tokens (USD per 1M tokens x 1000). A call's cost is
``(input_tokens * input_rate + output_tokens * output_rate) / 1000`` rounded half up, once per attempt.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg

from core.registry import ModelRegistry, load_prices_usd

log = logging.getLogger(__name__)

# Effective date of seeded list prices: before any request, so every request finds a rate.
SEED_EFFECTIVE_FROM = datetime(2000, 1, 1, tzinfo=UTC)


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

    def cost_micro_usd_many(self, input_tokens: Any, output_tokens: Any) -> Any:
        """``cost_micro_usd`` over numpy arrays of token counts (the offline harness prices whole grids)."""
        import numpy as np  # noqa: PLC0415 - only the offline harness needs it

        inputs, outputs = np.asarray(input_tokens, dtype=np.int64), np.asarray(output_tokens, dtype=np.int64)
        if (inputs < 0).any() or (outputs < 0).any():
            raise ValueError("token counts must be non-negative")
        return (inputs * self.input_micro_usd_per_1k + outputs * self.output_micro_usd_per_1k + 500) // 1000


def usd_per_million_to_micro_per_1k(usd_per_million: float | str | Decimal) -> int:
    """USD per 1M tokens -> integer micro-USD per 1k tokens, exactly (finer prices are refused, not rounded)."""
    try:
        value = Decimal(str(usd_per_million)) * 1000
    except InvalidOperation:
        raise ValueError(f"price {usd_per_million!r} is not a number") from None
    if value < 0:
        raise ValueError(f"price {usd_per_million!r} is negative")
    if value != value.to_integral_value():
        raise ValueError(f"price {usd_per_million!r} USD/1M is finer than the 0.001 USD/1M the cost book stores")
    return int(value)


class MissingRateError(KeyError):
    """No rate is known for a model at the time a request was made."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "missing rate"


def load_prices_file(path: Path | str) -> dict[str, tuple[int, int]]:
    """A prices file (see ``load_prices_usd``) as ``{model: (input, output)}`` in micro-USD per 1k tokens."""
    prices: dict[str, tuple[int, int]] = {}
    for model, usd in load_prices_usd(path).items():
        try:
            prices[model] = (usd_per_million_to_micro_per_1k(usd.input), usd_per_million_to_micro_per_1k(usd.output))
        except ValueError as exc:
            raise ValueError(f"prices file {path}: {model!r}: {exc}") from None
    return prices


def registry_prices(registry: ModelRegistry) -> dict[str, tuple[int, int]]:
    return {m.name: (usd_per_million_to_micro_per_1k(m.prices.input), usd_per_million_to_micro_per_1k(m.prices.output))
            for m in registry.models}


class CostBook(ABC):
    @abstractmethod
    def rate(self, model: str, at: datetime) -> Rate:
        """The rate effective for ``model`` at time ``at``, from memory (no I/O)."""

    async def prepare(self, model: str, at: datetime) -> None:  # noqa: B027 - optional hook, no-op by default
        """Make sure ``rate(model, at)`` can answer from memory (a book backed by a database re-reads here)."""

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
            raise MissingRateError(f"no rate for model {model!r}") from None


class EffectiveDatedCostBook(CostBook):
    """Rates that change over time: a request is priced at the rate in force at ``at`` (its created_at)."""

    def __init__(self, rates: Iterable[Rate] = ()) -> None:
        self._set(rates)

    def _set(self, rates: Iterable[Rate]) -> None:
        by_model: dict[str, list[Rate]] = {}
        for rate in rates:
            if rate.effective_from is None:
                raise ValueError(f"rate for {rate.model!r} has no effective_from")
            by_model.setdefault(rate.model, []).append(rate)
        for rates_of_model in by_model.values():
            rates_of_model.sort(key=lambda r: r.effective_from)
        self._rates = by_model
        self._starts = {model: [r.effective_from for r in rs] for model, rs in by_model.items()}

    def find(self, model: str, at: datetime) -> Rate | None:
        """The rate in force for ``model`` at ``at``, or None."""
        starts = self._starts.get(model)
        if not starts:
            return None
        if at.tzinfo is None:
            raise ValueError("cost lookups need a timezone-aware time")
        index = bisect.bisect_right(starts, at) - 1
        return self._rates[model][index] if index >= 0 else None

    def rate(self, model: str, at: datetime) -> Rate:
        found = self.find(model, at)
        if found is None:
            raise MissingRateError(self._missing_message(model, at))
        return found

    def _missing_message(self, model: str, at: datetime) -> str:
        starts = self._starts.get(model)
        if not starts:
            return f"no rate for model {model!r} (known: {sorted(self._rates)})"
        return f"no rate for model {model!r} effective at {at.isoformat()}; its first rate starts {starts[0].isoformat()}"


RATES_SQL = ("SELECT model, effective_from, input_micro_usd_per_1k, output_micro_usd_per_1k FROM cost_rates"
             " ORDER BY model, effective_from")


class DbCostBook(EffectiveDatedCostBook):
    """Effective-dated rates from Postgres ``cost_rates``, cached in memory and re-read every ``refresh_s``.

    Lookups (``rate``) only read memory. Re-reading is asynchronous: the executor awaits ``prepare`` before it
    prices an attempt, which re-reads the table when the cache is ``refresh_s`` old, or at once (at most once a
    second) when a model or date has no rate (it may just have been added). A re-read that Postgres does not
    answer within ``query_timeout_s`` is given up, and pricing goes on from the cached rates: a slow or absent
    database never stalls the worker's event loop. The first load, at start-up, is synchronous.
    """

    def __init__(self, dsn: str, refresh_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 fallback: CostBook | None = None, query_timeout_s: float = 2.0) -> None:
        self.dsn = dsn
        self.refresh_s = refresh_s
        self.query_timeout_s = query_timeout_s
        self._clock = clock
        # Used (with a warning per model) when the table has no rate, so a request is never lost to pricing.
        self.fallback = fallback
        self._warned: set[str] = set()
        self._loaded_at = float("-inf")
        self._last_miss_refresh = float("-inf")
        self._refreshing: asyncio.Lock | None = None
        super().__init__()
        self.load()

    def _store(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self._set(Rate(model, int(i), int(o), effective_from=start) for model, start, i, o in rows)
        self._loaded_at = self._clock()

    def load(self) -> None:
        """Read the table now, synchronously: for start-up and command-line use, never inside an event loop."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, round(self.query_timeout_s))) as conn:
            self._store(conn.execute(RATES_SQL).fetchall())

    async def refresh(self) -> None:
        """Re-read the table without blocking the event loop; raises on a database error or timeout."""
        async def read() -> list[tuple[Any, ...]]:
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                cursor = await conn.execute(RATES_SQL)
                return await cursor.fetchall()

        self._store(await asyncio.wait_for(read(), timeout=self.query_timeout_s))

    async def _try_refresh(self) -> None:
        """Re-read the table; if the database is unreachable or slow, keep pricing from the cached rates (a
        request must not fail because Postgres blinked) and try again in a few seconds."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        if self._refreshing.locked():
            return  # another attempt is re-reading: price from the cache meanwhile
        async with self._refreshing:
            try:
                await self.refresh()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("could not re-read cost_rates (%s); pricing from the cached rates",
                            exc or type(exc).__name__)
                self._loaded_at = self._clock() - self.refresh_s + min(self.refresh_s, 5.0)

    async def prepare(self, model: str, at: datetime) -> None:
        if self._clock() - self._loaded_at >= self.refresh_s:
            await self._try_refresh()
        if self.find(model, at) is None and self._clock() - self._last_miss_refresh >= 1.0:
            # The rate may just have been added; re-read at once, but at most once a second.
            self._last_miss_refresh = self._clock()
            await self._try_refresh()

    def rate(self, model: str, at: datetime) -> Rate:
        found = self.find(model, at)
        if found is None:
            message = self._missing_message(model, at) + " in cost_rates (seed it: python -m providers.prices seed)"
            if self.fallback is None:
                raise MissingRateError(message)
            if model not in self._warned:
                self._warned.add(model)
                log.warning("%s; pricing %s at the model config's list price meanwhile", message, model)
            return self.fallback.rate(model, at)
        return found


def build_db_cost_book(dsn: str, registry: ModelRegistry, refresh_s: float = 30.0,
                       prices_file: Path | None = None) -> DbCostBook:
    """The live cost book: seeds prices for configured models ``cost_rates`` has never seen (from
    ``prices_file`` where it lists the model, else the model config's list price), then reads rates from it."""
    seed = registry_prices(registry)
    source = "registry:auto-seed"
    if prices_file is not None:
        from_file = load_prices_file(prices_file)
        seed.update({model: rate for model, rate in from_file.items() if model in seed})
        source = f"file:{Path(prices_file).name}:auto-seed"
    insert_rates(dsn, seed, SEED_EFFECTIVE_FROM, source, only_missing_models=True)
    return DbCostBook(dsn, refresh_s=refresh_s, fallback=RegistryCostBook(registry))


def insert_rates(dsn: str, prices: Mapping[str, tuple[int, int]], effective_from: datetime, source: str,
                 *, only_missing_models: bool = False, skip_unchanged: bool = False) -> list[str]:
    """Add rates effective from ``effective_from``, in one transaction; returns the models written.

    ``only_missing_models``: write only models with no rate at all (seeding). ``skip_unchanged``: skip a
    model whose rate in force at ``effective_from`` is already this one. A different rate already recorded
    for the same model and instant is an error: rates are history, never rewritten.
    """
    if effective_from.tzinfo is None:
        raise ValueError("effective_from needs a timezone (e.g. 2026-01-01T00:00:00+00:00)")
    written: list[str] = []
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("LOCK TABLE cost_rates IN SHARE ROW EXCLUSIVE MODE")
        existing = EffectiveDatedCostBook(
            Rate(model, int(i), int(o), effective_from=start) for model, start, i, o in conn.execute(RATES_SQL))
        for model, (input_rate, output_rate) in sorted(prices.items()):
            if only_missing_models and model in existing._rates:
                continue
            current = existing.find(model, effective_from)
            if current is not None and current.effective_from == effective_from:
                if (current.input_micro_usd_per_1k, current.output_micro_usd_per_1k) == (input_rate, output_rate):
                    continue
                raise ValueError(f"{model!r} already has a different rate effective from {effective_from.isoformat()}")
            if skip_unchanged and current is not None and \
                    (current.input_micro_usd_per_1k, current.output_micro_usd_per_1k) == (input_rate, output_rate):
                continue
            conn.execute(
                "INSERT INTO cost_rates (model, effective_from, input_micro_usd_per_1k, output_micro_usd_per_1k, source)"
                " VALUES (%s, %s, %s, %s, %s)", (model, effective_from, input_rate, output_rate, source))
            written.append(model)
    return written
