"""What migration 0013's fallback-spend triggers add to the sink's writes.

    .venv/bin/python benchmarks/fallback_rollup_writes.py [--requests 1500] [--rounds 3] [--dsn DSN]

Writes requests as the sink does, each in its own transaction: the request row (an upsert), a delete of its attempts, then
its two attempts one statement each (``executemany``). Half the runs write a chain whose first call failed and
fell back (``phi`` error → ``llama``: the triggers recompute the chain), half a chain whose first answer was
escalated (``refusal``: the triggers' cheap check finds no fallback hop and stops). Each kind runs with 0013's
triggers disabled, then enabled, alternately for ``--rounds`` rounds; prints milliseconds per request written and
the medians. Uses a throwaway embedded Postgres unless ``--dsn`` names a migrated database it may empty.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from sql.migrate import apply_migrations
from stack.services import start_embedded_postgres, stop_embedded_postgres

TRIGGERS = (
    ("request_attempts", "fallback_rollup_attempts_insert"),
    ("request_attempts", "fallback_rollup_attempts_update"),
    ("request_attempts", "fallback_rollup_attempts_delete"),
    ("requests", "fallback_rollup_requests_update"),
    ("requests", "fallback_rollup_request_delete"),
)

REQUEST_SQL = (
    "INSERT INTO requests (request_id, created_at, completed_at, tenant, user_id, customer_tier, prompt, prompt_chars,"
    " max_tokens, difficulty, confidence, probabilities, decision_reason, policy, classifier, routed_model,"
    " final_model, status, attempts, attempt_count, escalated, fell_back, tokens_in, tokens_out, latency_ms,"
    " cost_micro_usd) VALUES (%s, %s, %s, 't', 'u', 'standard', 'p', 1, 10, 'simple', 0.9, '{}', 'r', 'threshold',"
    " 'heuristic', 'phi', 'llama', 'ok', '[]', 2, %s, %s, 1, 1, 10, 5)"
    # The sink's upsert: its UPDATE triggers fire too.
    " ON CONFLICT (request_id) DO UPDATE SET completed_at = EXCLUDED.completed_at")
ATTEMPT_SQL = (
    "INSERT INTO request_attempts (request_id, attempt_no, model, tier, status, started_at, latency_ms, tokens_in,"
    " tokens_out, cost_micro_usd, next_model, next_reason_kind) VALUES (%s, %s, %s, 'cheap', %s, %s, 1, 1, 1, %s, %s, %s)")


def write(dsn: str, tag: str, requests: int, hop: str) -> float:
    """Milliseconds per request written (request + delete + two attempts, one transaction each)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE requests, request_attempts, model_eval CASCADE")
    now = datetime.now(UTC)
    first_status = "error" if hop == "error" else "rejected"
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for index in range(requests):
            request_id = f"{tag}-{index}"
            with conn.transaction():
                conn.execute(REQUEST_SQL, (request_id, now, now, hop != "error", hop == "error"))
                conn.execute("DELETE FROM request_attempts WHERE request_id = %s", (request_id,))
                with conn.cursor() as cur:
                    cur.executemany(ATTEMPT_SQL, [(request_id, 1, "phi", first_status, now, 0, "llama", hop),
                                                  (request_id, 2, "llama", "ok", now, 5, None, None)])
    return (time.perf_counter() - started) / requests * 1000


def set_triggers(dsn: str, enabled: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, name in TRIGGERS:
            conn.execute(f"ALTER TABLE {table} {'ENABLE' if enabled else 'DISABLE'} TRIGGER {name}")


def run(dsn: str, requests: int, rounds: int) -> None:
    apply_migrations(dsn)
    figures: dict[tuple[str, bool], list[float]] = {}
    try:
        for round_no in range(rounds):
            for hop in ("error", "refusal"):
                for enabled in (False, True):
                    set_triggers(dsn, enabled)
                    ms = write(dsn, f"r{round_no}-{hop}-{enabled}", requests, hop)
                    figures.setdefault((hop, enabled), []).append(ms)
                    print(f"round {round_no + 1}, first hop {hop}, 0013 triggers {'on ' if enabled else 'off'}: "
                          f"{ms:.2f} ms per request written", flush=True)
    finally:
        set_triggers(dsn, True)
    for hop in ("error", "refusal"):
        off, on = statistics.median(figures[(hop, False)]), statistics.median(figures[(hop, True)])
        print(f"median, first hop {hop}: {off:.2f} ms without, {on:.2f} ms with 0013's triggers (+{on - off:.2f} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="a migrated scratch database this may empty (default: embedded Postgres)")
    args = parser.parse_args(argv)
    if args.dsn:
        run(args.dsn, args.requests, args.rounds)
        return 0
    server, dsn = start_embedded_postgres(Path(tempfile.mkdtemp(prefix="fallback-rollup-bench-")))
    try:
        run(dsn, args.requests, args.rounds)
    finally:
        stop_embedded_postgres(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
