"""Millions of synthetic requests in a minute or two, for the dashboard's benchmark at production-like sizes.

    python -m dashboard.sample_bulk --dsn postgresql://... --requests 1000000 --days 30

:func:`dashboard.sample_data.generate` builds a base of synthetic traffic row by row (escalations, fallbacks,
grades, per-model latency; at most ``BASE_REQUESTS`` requests), then Postgres copies it in one
``INSERT … SELECT … generate_series`` per table until there are ``requests`` rows. Each copy moves every
request (with its attempts and grade) by its own time shift, wrapped into the same ``days``, so copies spread
over the whole range instead of stacking on the base's timestamps. Copy ``k`` of request ``id`` is
``id~k``. The figures are made up; never load them into a database whose numbers someone reports.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, date, datetime, timedelta

import psycopg

from core.settings import get_settings
from dashboard.sample_data import generate
from sql.repository import ATTEMPT_COLUMNS, EVAL_COLUMNS, REQUEST_COLUMNS

BASE_REQUESTS = 50_000
# Copy k is shifted by frac(k · φ) of the range: successive copies land far apart, none on another.
GOLDEN = 0.6180339887498949


def _copied(columns: tuple[str, ...], replace: dict[str, str]) -> str:
    return ", ".join(replace.get(column, column) for column in columns)


def fill(conn: psycopg.Connection, requests: int, days: int, last_day: date | None = None, seed: int = 7,
         progress: bool = True, base_requests: int = BASE_REQUESTS) -> dict[str, int]:
    """Write ``requests`` synthetic requests (and their attempts and grades) over ``days`` UTC days ending
    ``last_day``; returns the row count per table. The database must hold no requests yet."""
    if requests < 1 or days < 1:
        raise ValueError("requests and days must be at least 1")
    if conn.execute("SELECT EXISTS (SELECT 1 FROM requests)").fetchone()[0]:
        raise ValueError("the database already holds requests; fill an empty one")
    last_day = last_day or datetime.now(UTC).date()
    base = min(requests, base_requests)
    started = time.perf_counter()
    generate(conn, base, days, last_day, seed=seed, progress=progress)
    conn.commit()
    copies = math.ceil(requests / base) - 1
    if copies:
        span_s = days * 86_400
        start = datetime.combine(last_day - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
        with conn.cursor() as cur:
            # One shift per (request, copy), wrapped into the range; attempts and grades move with their request.
            cur.execute(
                """
                CREATE TEMPORARY TABLE sample_shift ON COMMIT DROP AS
                SELECT request_id, k, request_id || '~' || k AS copy_id, shift FROM (
                    SELECT r.request_id, k,
                           make_interval(secs => mod(extract(epoch FROM r.created_at - %(start)s)
                                                     + mod(k * %(golden)s::numeric, 1) * %(span)s::numeric,
                                                     %(span)s::numeric)::float8
                                                 - extract(epoch FROM r.created_at - %(start)s)::float8) AS shift,
                           -- The last copy may be partial: the first ``needed`` (copy, request) pairs.
                           row_number() OVER (ORDER BY k, r.request_id) AS n
                    FROM requests r CROSS JOIN generate_series(1, %(copies)s) AS k
                ) AS numbered WHERE n <= %(needed)s
                """,
                {"start": start, "golden": GOLDEN, "span": span_s, "copies": copies, "needed": requests - base})
            cur.execute("CREATE INDEX ON sample_shift (request_id)")
            request_columns = _copied(REQUEST_COLUMNS, {
                "request_id": "s.copy_id", "created_at": "r.created_at + s.shift",
                "completed_at": "r.completed_at + s.shift"})
            cur.execute(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
                        f"SELECT {request_columns} FROM requests r JOIN sample_shift s USING (request_id)")
            attempt_columns = _copied(ATTEMPT_COLUMNS, {"request_id": "s.copy_id",
                                                        "started_at": "a.started_at + s.shift"})
            cur.execute(f"INSERT INTO request_attempts ({', '.join(ATTEMPT_COLUMNS)}) "
                        f"SELECT {attempt_columns} FROM request_attempts a JOIN sample_shift s USING (request_id)")
            eval_columns = _copied(EVAL_COLUMNS, {"request_id": "s.copy_id", "item_id": "e.item_id || '~' || s.k",
                                                  "evaluated_at": "e.evaluated_at + s.shift"})
            cur.execute(f"INSERT INTO model_eval ({', '.join(EVAL_COLUMNS)}) "
                        f"SELECT {eval_columns} FROM model_eval e JOIN sample_shift s USING (request_id)")
        conn.commit()
    with conn.cursor() as cur:
        cur.execute("ANALYZE requests; ANALYZE request_attempts; ANALYZE model_eval")
        counts = {table: cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in ("requests", "request_attempts", "model_eval")}
    conn.commit()
    if progress:
        print(f"filled {counts} in {time.perf_counter() - started:.0f} s")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="Postgres DSN (default: ROUTER_PG_DSN / PG_DSN)")
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--last-day", type=date.fromisoformat, default=None, help="last UTC day (default: today)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    dsn = args.dsn or get_settings().pg_dsn
    if not dsn:
        parser.error("no database: pass --dsn or set ROUTER_PG_DSN / PG_DSN")
    with psycopg.connect(dsn) as conn:
        fill(conn, args.requests, args.days, args.last_day, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
