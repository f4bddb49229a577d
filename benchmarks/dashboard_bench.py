"""How long each dashboard view takes to render with 100k requests in Postgres.

    .venv/bin/python -m benchmarks.dashboard_bench [--requests 100000] [--days 30] [--runs 5] [--admin-dsn DSN]

Seeds a throwaway database (on ``--admin-dsn``, else ``ROUTER_TEST_PG_DSN``, else an embedded Postgres in a
temporary folder) with synthetic traffic from :mod:`dashboard.sample_data`, then runs the real app script
with streamlit's AppTest once per view and run: *cold* clears the query cache first (every SQL query runs),
*warm* reruns with the cache filled (what a user sees moving between views within the cache TTL).
Each figure is the median of ``--runs`` runs of the whole script (queries, DataFrames, Altair specs,
Streamlit elements), as a user's page load minus the browser's drawing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = str(REPO_ROOT / "dashboard" / "app.py")
TARGET_S = 2.0

# (label, view slug, search text for the explorer, extra filters)
SCENARIOS = [
    ("Overview", "overview", None, {}),
    ("Model mix", "mix", None, {}),
    ("Latency", "latency", None, {}),
    ("Quality vs cost", "quality", None, {}),
    ("Escalations and fallbacks", "escalations", None, {}),
    ("Request explorer (newest)", "explorer", None, {}),
    ("Request explorer (search prompt text)", "explorer", "topic 42", {}),
    ("Overview, tenant + difficulty filter", "overview", None, {"tenants": ["globex"], "difficulties": ["complex"]}),
    ("Latency, tenant filter (join)", "latency", None, {"tenants": ["globex"]}),
    ("Offline evaluation (no report)", "offline", None, {}),
]


def run_view(view: str, search: str | None, filters: dict[str, list[str]], cold: bool) -> float:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["view"] = view
    for key, value in filters.items():
        at.session_state[key] = value
    if search:
        at.session_state["explorer_search"] = search
    if cold:
        st.cache_data.clear()
    started = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - started
    if at.exception:
        raise RuntimeError(f"view {view} raised: {[e.value for e in at.exception]}")
    if view != "offline" and not at.get("vega_lite_chart") and not search:
        raise RuntimeError(f"view {view} drew no chart")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--admin-dsn", default=os.environ.get("ROUTER_TEST_PG_DSN"))
    args = parser.parse_args(argv)
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    sys.path.insert(0, str(REPO_ROOT))

    from core.services import create_database, drop_database, start_embedded_postgres
    from core.settings import get_settings
    from dashboard.sample_data import generate
    from sql.migrate import apply_migrations

    admin_dsn = args.admin_dsn
    if not admin_dsn:
        _server, admin_dsn = start_embedded_postgres(Path(tempfile.mkdtemp(prefix="dashboard-bench-pg-")))
    name = f"dashboard_bench_{uuid.uuid4().hex[:8]}"
    dsn = create_database(admin_dsn, name)
    try:
        apply_migrations(dsn)
        started = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            generate(conn, args.requests, args.days)
        with psycopg.connect(dsn) as conn:
            counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                      for table in ("requests", "request_attempts", "model_eval")}
        print(f"seeded {counts} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        os.environ["ROUTER_PG_DSN"] = dsn
        os.environ["ROUTER_DASHBOARD_REPORTS_DIR"] = tempfile.mkdtemp(prefix="dashboard-bench-reports-")
        get_settings.cache_clear()
        run_view("overview", None, {}, cold=True)  # first run pays imports and the pool; not measured

        rows = []
        for label, view, search, filters in SCENARIOS:
            cold = [run_view(view, search, filters, cold=True) for _ in range(args.runs)]
            warm = [run_view(view, search, filters, cold=False) for _ in range(args.runs)]
            rows.append((label, statistics.median(cold), max(cold), statistics.median(warm)))
            print(f"{label}: cold median {rows[-1][1]:.3f} s", file=sys.stderr)
    finally:
        drop_database(admin_dsn, name)

    print(f"{counts['requests']:,} requests, {counts['request_attempts']:,} attempts, "
          f"{counts['model_eval']:,} graded answers over {args.days} days; {args.runs} runs per view.\n")
    print("| view | cold median (s) | cold max (s) | warm median (s) | ≤ 2 s cold |")
    print("|---|---:|---:|---:|:---:|")
    for label, cold_median, cold_max, warm_median in rows:
        ok = "yes" if cold_median <= TARGET_S else "**no**"
        print(f"| {label} | {cold_median:.3f} | {cold_max:.3f} | {warm_median:.3f} | {ok} |")
    return 0 if all(row[1] <= TARGET_S for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
