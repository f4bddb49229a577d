"""Exact cost accounting: integer micro-USD from effective-dated rates in Postgres, priced at request time."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from core.messages import PromptMessage, RoutedMessage, RoutingDecision, Tier
from core.registry import ModelRegistry
from providers.base import Provider, ProviderResult
from providers.costs import (
    DbCostBook,
    MissingRateError,
    Rate,
    RegistryCostBook,
    build_db_cost_book,
    load_prices_file,
    usd_per_million_to_micro_per_1k,
)
from providers.executor import LadderExecutor
from providers.prices import main as prices_main
from routing.escalation import Escalation
from stack.services import free_port

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHANGE = datetime(2026, 6, 1, tzinfo=UTC)

REGISTRY = ModelRegistry.model_validate({"counterfactual": "big", "models": [
    {"name": "small", "kind": "replay", "tier": "cheap", "prices": {"input": 0.13, "output": 0.52}},
    {"name": "medium", "kind": "replay", "tier": "mid", "prices": {"input": 0.59, "output": 0.79}},
    {"name": "big", "kind": "replay", "tier": "expensive", "prices": {"input": 2.5, "output": 10.0}},
]})


def test_rate_math_is_integer_and_rounds_half_up() -> None:
    rate = Rate("m", input_micro_usd_per_1k=130, output_micro_usd_per_1k=520)
    assert rate.cost_micro_usd(1000, 0) == 130
    assert rate.cost_micro_usd(63, 116) == (63 * 130 + 116 * 520 + 500) // 1000 == 69  # 68.51 -> 69
    assert rate.cost_micro_usd(1, 0) == 0  # 0.13 -> 0
    assert Rate("m", 500, 0).cost_micro_usd(1, 0) == 1  # exactly half rounds up
    with pytest.raises(ValueError):
        rate.cost_micro_usd(-1, 0)


def test_prices_convert_exactly() -> None:
    assert usd_per_million_to_micro_per_1k(0.13) == 130
    assert usd_per_million_to_micro_per_1k(2.5) == 2500
    assert usd_per_million_to_micro_per_1k(0.075) == 75
    with pytest.raises(ValueError, match="finer"):
        usd_per_million_to_micro_per_1k(0.0375)
    with pytest.raises(ValueError, match="negative"):
        usd_per_million_to_micro_per_1k(-1)


def test_prices_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"m": {"input": 1}}')
    with pytest.raises(ValueError, match="'m' must be"):
        load_prices_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prices_file(bad)
    with pytest.raises(FileNotFoundError, match="prices file not found"):
        load_prices_file(tmp_path / "missing.json")


def _write_prices(path: Path, small: tuple[float, float], big: tuple[float, float]) -> Path:
    path.write_text(json.dumps({"_note": "test", "small": {"input": small[0], "output": small[1]},
                                "big": {"input": big[0], "output": big[1]}}))
    return path


def test_seed_update_and_lookup_by_effective_date(clean_db: str, tmp_path: Path) -> None:
    old = _write_prices(tmp_path / "old.json", (0.13, 0.52), (2.5, 10.0))
    new = _write_prices(tmp_path / "new.json", (0.10, 0.40), (2.5, 10.0))
    assert prices_main(["--dsn", clean_db, "seed", "--prices", str(old)]) == 0
    assert prices_main(["--dsn", clean_db, "seed", "--prices", str(old)]) == 0  # rerun: nothing new
    assert prices_main(["--dsn", clean_db, "update", "--prices", str(new), "--effective-from", CHANGE.isoformat()]) == 0
    with psycopg.connect(clean_db) as conn:
        rows = conn.execute("SELECT model, effective_from, input_micro_usd_per_1k, output_micro_usd_per_1k, source"
                            " FROM cost_rates ORDER BY model, effective_from").fetchall()
    # big's price did not change, so the update wrote no row for it.
    assert [(m, i, o) for m, _, i, o, _ in rows] == [("big", 2500, 10000), ("small", 130, 520), ("small", 100, 400)]
    assert rows[2][1] == CHANGE and rows[2][4] == "file:new.json"

    book = DbCostBook(clean_db)
    assert book.cost_micro_usd("small", 1000, 1000, CHANGE - timedelta(microseconds=1)) == 130 + 520
    assert book.cost_micro_usd("small", 1000, 1000, CHANGE) == 100 + 400
    assert book.cost_micro_usd("big", 1000, 1000, CHANGE + timedelta(days=1)) == 2500 + 10000
    with pytest.raises(MissingRateError, match="no rate for model 'medium'"):
        book.rate("medium", CHANGE)


def test_update_refuses_to_rewrite_history(clean_db: str, tmp_path: Path) -> None:
    prices = _write_prices(tmp_path / "p.json", (0.13, 0.52), (2.5, 10.0))
    other = _write_prices(tmp_path / "q.json", (0.2, 0.52), (2.5, 10.0))
    assert prices_main(["--dsn", clean_db, "update", "--prices", str(prices), "--effective-from", CHANGE.isoformat()]) == 0
    assert prices_main(["--dsn", clean_db, "update", "--prices", str(other), "--effective-from", CHANGE.isoformat()]) == 2
    with psycopg.connect(clean_db) as conn:
        assert conn.execute("SELECT input_micro_usd_per_1k FROM cost_rates WHERE model = 'small'").fetchall() == [(130,)]


class FixedTokens(Provider):
    """Answers every prompt with a fixed text and token counts (the pricing is what is under test)."""

    def __init__(self, spec, input_tokens: int, output_tokens: int) -> None:
        super().__init__(spec)
        self.input_tokens, self.output_tokens = input_tokens, output_tokens

    async def complete(self, prompt: PromptMessage, max_output_tokens: int | None = None) -> ProviderResult:
        return ProviderResult(text="A full and useful answer.", finish_reason="stop", input_tokens=self.input_tokens,
                              output_tokens=self.output_tokens, latency_ms=1.0, usage_reported=True)


def _routed(created_at: datetime) -> RoutedMessage:
    prompt = PromptMessage(prompt="What is 2 + 2?", created_at=created_at)
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9}, model="small",
                               tier=Tier.cheap, reasons=["test"], policy="threshold", classifier="test")
    return RoutedMessage(prompt=prompt, decision=decision, target_model="small")


async def test_rate_change_mid_stream_prices_each_request_at_its_creation_time(clean_db: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    book = build_db_cost_book(clean_db, REGISTRY, refresh_s=0.0)  # auto-seeds list prices from 2000-01-01
    providers = {s.name: FixedTokens(s, input_tokens=1234, output_tokens=567) for s in REGISTRY.models}
    ladder = LadderExecutor(REGISTRY, providers, Escalation(REGISTRY), book, token_counter=lambda spec, text: 0)

    before = await ladder.run(_routed(now - timedelta(seconds=10)))
    # small at list price: 1234 x 130 + 567 x 520 = 455260 -> 455 micro-USD.
    assert before.cost_micro_usd == 455

    new = _write_prices(tmp_path / "new.json", (0.10, 0.40), (3.0, 12.0))
    assert prices_main(["--dsn", clean_db, "update", "--prices", str(new), "--effective-from", now.isoformat()]) == 0

    late_but_old = await ladder.run(_routed(now - timedelta(seconds=5)))  # queued before the change, run after it
    after = await ladder.run(_routed(now + timedelta(seconds=1)))
    assert late_but_old.cost_micro_usd == 455
    # new small rate: 1234 x 100 + 567 x 400 = 350200 -> 350.
    assert after.cost_micro_usd == 350


def half_up(numerator: int) -> int:
    return (numerator + 500) // 1000


async def test_counterfactual_uses_the_rate_at_creation_time(clean_db: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    book = build_db_cost_book(clean_db, REGISTRY, refresh_s=0.0)
    new = _write_prices(tmp_path / "new.json", (0.13, 0.52), (3.0, 12.0))
    assert prices_main(["--dsn", clean_db, "update", "--prices", str(new), "--effective-from", now.isoformat()]) == 0
    providers = {s.name: FixedTokens(s, input_tokens=1000, output_tokens=100) for s in REGISTRY.models}
    # The counterfactual counts prompt and answer with the expensive model's tokenizer: here 1000 and 100.
    counter = {"What is 2 + 2?": 1000, "A full and useful answer.": 100}
    ladder = LadderExecutor(REGISTRY, providers, Escalation(REGISTRY), book,
                            token_counter=lambda spec, text: counter[text])
    before = await ladder.run(_routed(now - timedelta(seconds=1)))
    after = await ladder.run(_routed(now + timedelta(seconds=1)))
    assert before.counterfactual_cost_micro_usd == half_up(1000 * 2500 + 100 * 10000) == 3500
    assert after.counterfactual_cost_micro_usd == half_up(1000 * 3000 + 100 * 12000) == 4200
    assert before.cost_micro_usd == after.cost_micro_usd == half_up(1000 * 130 + 100 * 520) == 182


async def test_db_book_rereads_rates_and_falls_back_when_a_model_has_none(clean_db: str) -> None:
    clock = [0.0]
    book = DbCostBook(clean_db, refresh_s=30.0, clock=lambda: clock[0], fallback=RegistryCostBook(REGISTRY))

    async def input_rate(at: datetime) -> int:
        await book.prepare("small", at)
        return book.rate("small", at).input_micro_usd_per_1k

    assert await input_rate(T0) == 130  # table empty: the config's list price
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO cost_rates VALUES ('small', %s, 111, 222, 'test')", (T0,))
    assert await input_rate(T0) == 130  # misses re-read at most once a second
    clock[0] = 1.0
    assert await input_rate(T0) == 111  # a miss re-reads at once
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO cost_rates VALUES ('small', %s, 150, 600, 'test')", (CHANGE,))
    assert await input_rate(CHANGE) == 111  # cached until refresh_s passes
    clock[0] = 31.0
    assert await input_rate(CHANGE) == 150


def test_show_prints_the_rates_in_force(clean_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _write_prices(tmp_path / "old.json", (0.13, 0.52), (2.5, 10.0))
    new = _write_prices(tmp_path / "new.json", (0.10, 0.40), (2.5, 10.0))
    assert prices_main(["--dsn", clean_db, "seed", "--prices", str(old)]) == 0
    assert prices_main(["--dsn", clean_db, "update", "--prices", str(new), "--effective-from", CHANGE.isoformat()]) == 0
    capsys.readouterr()
    assert prices_main(["--dsn", clean_db, "show", "--at", T0.isoformat()]) == 0
    before = capsys.readouterr().out
    assert prices_main(["--dsn", clean_db, "show", "--at", CHANGE.isoformat()]) == 0
    after = capsys.readouterr().out
    small_before = next(line for line in before.splitlines() if "small" in line)
    small_after = next(line for line in after.splitlines() if "small" in line)
    assert "130" in small_before and "520" in small_before and "1" in small_before.split("│")[-2]
    assert "100" in small_after and "400" in small_after


def test_bad_effective_from_is_refused(clean_db: str, tmp_path: Path) -> None:
    prices = _write_prices(tmp_path / "p.json", (0.13, 0.52), (2.5, 10.0))
    with pytest.raises(SystemExit):
        prices_main(["--dsn", clean_db, "update", "--prices", str(prices), "--effective-from", "2026-06-01T00:00:00"])


async def test_db_book_keeps_pricing_from_its_cache_when_postgres_is_down(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO cost_rates VALUES ('small', %s, 130, 520, 'test')", (T0,))
    clock = [0.0]
    book = DbCostBook(clean_db, refresh_s=30.0, clock=lambda: clock[0])
    book.dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"  # nothing listens there
    clock[0] = 100.0
    await book.prepare("small", CHANGE)
    assert book.cost_micro_usd("small", 1000, 1000, CHANGE) == 130 + 520


async def test_a_worker_keeps_serving_from_cached_prices_while_postgres_does_not_answer(clean_db: str) -> None:
    """A database that accepts connections but never answers must not stall the event loop: the re-read gives
    up after its timeout, the attempt is priced from the cache, and other work on the loop keeps running."""
    book = build_db_cost_book(clean_db, REGISTRY, refresh_s=30.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshake; nobody ever reads or answers
    try:
        book.dsn = f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/none"
        book.query_timeout_s = 1.0
        book._loaded_at = float("-inf")  # the cache is due for a re-read
        providers = {s.name: FixedTokens(s, input_tokens=1234, output_tokens=567) for s in REGISTRY.models}
        ladder = LadderExecutor(REGISTRY, providers, Escalation(REGISTRY), book, token_counter=lambda spec, text: 0)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        completion = await asyncio.wait_for(ladder.run(_routed(datetime.now(UTC))), timeout=10)
        elapsed = time.monotonic() - started
        ticking.cancel()
    finally:
        silent.close()
    assert completion.status == "ok" and completion.cost_micro_usd == 455  # the cached list price
    assert elapsed < 5
    # The loop ran other work while the re-read waited: about one tick per 50 ms of the wait.
    assert ticks >= elapsed / 0.05 * 0.5
