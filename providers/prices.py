"""Seed and update the effective-dated ``cost_rates`` table that every request is priced from.

    python -m providers.prices seed                                   # the model config's list prices
    python -m providers.prices seed --prices config/prices.json       # or a prices file (USD per 1M tokens)
    python -m providers.prices update --prices new.json --effective-from 2026-12-01T00:00:00Z
    python -m providers.prices show [--at 2026-11-01T00:00:00Z]

``seed`` writes rates effective from 2000-01-01 for models that have none yet (safe to rerun).
``update`` adds a new rate from ``--effective-from`` (default: now) for each model whose price changed;
requests created before that instant keep their old price, later ones get the new one. Rates are
never rewritten.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from core.registry import ModelRegistry
from core.settings import get_settings
from providers.costs import (
    RATES_SQL,
    SEED_EFFECTIVE_FROM,
    EffectiveDatedCostBook,
    Rate,
    insert_rates,
    load_prices_file,
    registry_prices,
)


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a timezone, e.g. {value}Z or {value}+00:00")
    return parsed


def _prices(args: argparse.Namespace, models_config: Path) -> tuple[dict[str, tuple[int, int]], str]:
    if args.prices:
        return load_prices_file(args.prices), f"file:{Path(args.prices).name}"
    registry = ModelRegistry.from_yaml(args.models or models_config)
    return registry_prices(registry), f"registry:{Path(args.models or models_config).name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="Postgres DSN (default: ROUTER_PG_DSN / PG_DSN)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("seed", "update"):
        sub = commands.add_parser(name)
        source = sub.add_mutually_exclusive_group()
        source.add_argument("--prices", type=Path, help="prices file: {model: {input, output}} in USD per 1M tokens")
        source.add_argument("--models", type=Path, help="model config whose list prices to use (default: ROUTER_MODELS_CONFIG)")
        sub.add_argument("--effective-from", type=_parse_time, default=None,
                         help="ISO time the rates take effect (seed: 2000-01-01Z; update: now)")
    show = commands.add_parser("show")
    show.add_argument("--at", type=_parse_time, default=None, help="show the rates in force at this time (default: now)")
    args = parser.parse_args(argv)

    settings = get_settings()
    dsn = args.dsn or settings.pg_dsn
    if not dsn:
        parser.error("no database: pass --dsn or set ROUTER_PG_DSN / PG_DSN")
    console = Console()

    if args.command == "show":
        at = args.at or datetime.now(UTC)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(RATES_SQL).fetchall()
        book = EffectiveDatedCostBook(Rate(m, int(i), int(o), effective_from=s) for m, s, i, o in rows)
        table = Table(title=f"rates in force at {at.isoformat()} (micro-USD per 1k tokens = USD per 1B)")
        for column in ("model", "effective from", "input", "output", "later changes"):
            table.add_column(column)
        for model in sorted({r[0] for r in rows}):
            starts = [r[1] for r in rows if r[0] == model]
            rate = book.find(model, at)
            later = sum(1 for s in starts if s > at)
            table.add_row(model, rate.effective_from.isoformat() if rate else "(none yet)",
                          str(rate.input_micro_usd_per_1k) if rate else "-",
                          str(rate.output_micro_usd_per_1k) if rate else "-", str(later))
        console.print(table)
        return 0

    try:
        prices, source = _prices(args, settings.models_config)
        if args.command == "seed":
            effective_from = args.effective_from or SEED_EFFECTIVE_FROM
            written = insert_rates(dsn, prices, effective_from, source, only_missing_models=True)
        else:
            effective_from = args.effective_from or datetime.now(UTC)
            written = insert_rates(dsn, prices, effective_from, source, skip_unchanged=True)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    skipped = sorted(set(prices) - set(written))
    console.print(f"{args.command}: {len(written)} rate(s) effective from {effective_from.isoformat()} "
                  f"({source}): {', '.join(written) or 'none'}")
    if skipped:
        reason = "already have rates" if args.command == "seed" else "unchanged"
        console.print(f"  {len(skipped)} {reason}: {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
