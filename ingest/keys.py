"""Manage the router's API keys and tenants.

    python -m ingest.keys create --tenant acme [--name ci] [--admin] [--expires-in-days 90] [--models a,b]
                                 [--rpm 60] [--tpm 100000] [--period day|month] [--soft-usd 5] [--hard-usd 10]
    python -m ingest.keys list [--tenant acme]
    python -m ingest.keys revoke <key_id>
    python -m ingest.keys rotate <key_id>
    python -m ingest.keys tenant acme [--pii-mode off|redact-stored|redact|refuse] [--store-prompts true|false]
                                 [--deny-list word,word] [--max-prompt-chars N] [--period day|month]
                                 [--soft-usd X] [--hard-usd X]
    python -m ingest.keys usage

``create`` and ``rotate`` print the new key once, alone on the last line of their output (scripts read it with
``tail -n 1``); only its hash is stored. Keys are hashed with ROUTER_API_KEY_PEPPER: use the same value here
as in the API processes. Database: --dsn, else ROUTER_PG_DSN / PG_DSN.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from core.settings import get_settings
from sql.keys import ApiKey, budget_report, create_key, list_keys, revoke_key, rotate_key, update_tenant


def _micro(usd: float | None) -> int | None:
    return None if usd is None else round(usd * 1_000_000)


def _usd(micro: int | None) -> str:
    return "-" if micro is None else f"${micro / 1e6:,.4f}"


def _bool(text: str) -> bool:
    if text.lower() in {"true", "yes", "1", "on"}:
        return True
    if text.lower() in {"false", "no", "0", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _describe(key: ApiKey) -> str:
    state = "revoked" if key.revoked_at else ("expired" if not key.usable_at(datetime.now(UTC)) else "active")
    limits = [f"{key.requests_per_min} req/min" if key.requests_per_min else "",
              f"{key.tokens_per_min} tok/min" if key.tokens_per_min else "",
              f"budget {_usd(key.budget_soft_micro_usd)} soft / {_usd(key.budget_hard_micro_usd)} hard per "
              f"{key.budget_period}" if key.budget_soft_micro_usd or key.budget_hard_micro_usd else "",
              f"models {','.join(key.allowed_models)}" if key.allowed_models is not None else ""]
    expires = f" expires {key.expires_at:%Y-%m-%d %H:%M}Z" if key.expires_at else ""
    return (f"{key.key_id}  tenant={key.tenant} role={key.role} {state}{expires}"
            f"{'  name=' + key.name if key.name else ''}  {'; '.join(x for x in limits if x)}").rstrip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ingest.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="Postgres DSN (default: ROUTER_PG_DSN / PG_DSN)")
    commands = parser.add_subparsers(dest="command", required=True)

    def budget_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--period", choices=["day", "month"], help="budget period, UTC (default month)")
        sub.add_argument("--soft-usd", type=float, help="soft budget: over it, answers carry x-budget-warning")
        sub.add_argument("--hard-usd", type=float, help="hard budget: over it, requests get 429 budget_exceeded")

    create = commands.add_parser("create", help="create a key; prints it once, on the last line")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name")
    create.add_argument("--admin", action="store_true", help="may read every tenant's requests")
    create.add_argument("--expires-in-days", type=float)
    create.add_argument("--models", type=_csv, help="comma-separated models this key may use (default: all)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute (prompt + max_tokens)")
    budget_options(create)
    listing = commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--tenant")
    revoke = commands.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    rotate = commands.add_parser("rotate", help="new key with the same tenant and limits; revokes the old one")
    rotate.add_argument("key_id")
    tenant = commands.add_parser("tenant", help="create a tenant or change its guardrails and budget")
    tenant.add_argument("tenant")
    tenant.add_argument("--pii-mode", choices=["off", "redact-stored", "redact", "refuse"])
    tenant.add_argument("--store-prompts", type=_bool)
    tenant.add_argument("--deny-list", type=_csv)
    tenant.add_argument("--max-prompt-chars", type=int)
    budget_options(tenant)
    commands.add_parser("usage", help="spend against budget this period, per tenant and per key")
    return parser


async def run(args: argparse.Namespace, dsn: str, pepper: str, out=sys.stdout) -> int:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        if args.command == "create":
            expires = (datetime.now(UTC) + timedelta(days=args.expires_in_days)) if args.expires_in_days else None
            key, stored = await create_key(
                conn, pepper, args.tenant, role="admin" if args.admin else "tenant", name=args.name,
                expires_at=expires, allowed_models=args.models, requests_per_min=args.rpm, tokens_per_min=args.tpm,
                budget_period=args.period or "month", budget_soft_micro_usd=_micro(args.soft_usd),
                budget_hard_micro_usd=_micro(args.hard_usd))
            print(f"created {_describe(stored)}", file=out)
            print("the key is shown once; store it now:", file=out)
            print(key, file=out)
        elif args.command == "list":
            for stored in await list_keys(conn, args.tenant):
                print(_describe(stored), file=out)
        elif args.command == "revoke":
            if not await revoke_key(conn, args.key_id):
                print(f"no active key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}", file=out)
        elif args.command == "rotate":
            try:
                key, stored = await rotate_key(conn, pepper, args.key_id)
            except LookupError as exc:
                print(str(exc), file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}; created {_describe(stored)}", file=out)
            print("the key is shown once; store it now:", file=out)
            print(key, file=out)
        elif args.command == "tenant":
            changes: dict[str, Any] = {
                "pii_mode": args.pii_mode, "store_prompts": args.store_prompts, "deny_list": args.deny_list,
                "max_prompt_chars": args.max_prompt_chars, "budget_period": args.period,
                "budget_soft_micro_usd": _micro(args.soft_usd), "budget_hard_micro_usd": _micro(args.hard_usd)}
            policy = await update_tenant(conn, args.tenant, **changes)
            print(f"tenant {policy.tenant}: pii_mode={policy.pii_mode} store_prompts={policy.store_prompts} "
                  f"deny_list={list(policy.deny_list)} max_prompt_chars={policy.max_prompt_chars or '-'} budget "
                  f"{_usd(policy.budget_soft_micro_usd)} soft / {_usd(policy.budget_hard_micro_usd)} hard per "
                  f"{policy.budget_period}", file=out)
        elif args.command == "usage":
            for row in await budget_report(conn):
                print(f"{row['scope']:<6} {row['scope_id']:<14} tenant={row['tenant']:<12} {row['budget_period']} from "
                      f"{row['period_start']}: spent {_usd(row['spent_micro_usd'])}, held "
                      f"{_usd(row['reserved_micro_usd'])}, soft {_usd(row['soft_micro_usd'])}, hard "
                      f"{_usd(row['hard_micro_usd'])}, {row['requests']} requests", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = get_settings()
    dsn = args.dsn or settings.pg_dsn
    if not dsn:
        parser.error("no database: pass --dsn or set ROUTER_PG_DSN / PG_DSN")
    return asyncio.run(run(args, dsn, settings.api_key_pepper.get_secret_value()))


if __name__ == "__main__":
    raise SystemExit(main())
