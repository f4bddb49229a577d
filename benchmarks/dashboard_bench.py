"""How long each dashboard view takes to render with 100k requests in Postgres.

    .venv/bin/python benchmarks/dashboard_bench.py [--requests 100000] [--days 30] [--runs 5] [--browser]
                                                   [--admin-dsn DSN]

Seeds a throwaway database (on ``--admin-dsn``, else ``ROUTER_TEST_PG_DSN``, else an embedded Postgres in a
temporary folder) with synthetic traffic from :mod:`dashboard.sample_data`, then runs the real app script
with streamlit's AppTest once per view and run: *cold* clears the query cache first (every SQL query runs),
*warm* reruns with the cache filled (what a user sees moving between views within the cache TTL).
Each figure is the median of ``--runs`` runs of the whole script (queries, DataFrames, Altair specs,
Streamlit elements), as a user's page load minus the browser's drawing. ``--browser`` adds the
browser's side: seconds from navigation until every chart is drawn in headless Chromium.
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


BROWSER_VIEWS = {"overview": 3, "mix": 3, "latency": 2, "quality": 2, "escalations": 2, "explorer": 1}


def browser_times(dsn: str, runs: int) -> dict[str, list[float]]:
    """Seconds from navigation until every chart of the view is drawn in headless Chromium.

    Each run starts a fresh `streamlit run` server, so each view's first visit runs its SQL queries
    (only the sidebar's bounds and filter choices are already cached by the first view).
    """
    import subprocess

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from core.services import free_port, wait_for_port

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1800",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='dashboard-bench-chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    times: dict[str, list[float]] = {view: [] for view in BROWSER_VIEWS}
    try:
        for _ in range(runs):
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port), "--server.headless",
                 "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                cwd=REPO_ROOT, env={**os.environ, "ROUTER_PG_DSN": dsn},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for_port("127.0.0.1", port, timeout_s=60)
                driver.get(f"http://127.0.0.1:{port}/?view=offline")  # loads the front end once
                time.sleep(2)
                for view, charts in BROWSER_VIEWS.items():
                    started = time.perf_counter()
                    driver.get(f"http://127.0.0.1:{port}/?view={view}")
                    while time.perf_counter() - started < 60:
                        drawn = driver.find_elements(
                            By.CSS_SELECTOR,
                            '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks')
                        if len(drawn) >= charts and not driver.find_elements(
                                By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'):
                            break
                        time.sleep(0.02)
                    else:
                        raise RuntimeError(f"{view}: charts not drawn within 60 s")
                    times[view].append(time.perf_counter() - started)
            finally:
                server.terminate()
                server.wait(timeout=15)
    finally:
        driver.quit()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--admin-dsn", default=os.environ.get("ROUTER_TEST_PG_DSN"))
    parser.add_argument("--browser", action="store_true",
                        help="also time each view in headless Chromium (needs Debian's chromium + chromedriver)")
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
        browser = browser_times(dsn, args.runs) if args.browser else {}
    finally:
        drop_database(admin_dsn, name)

    print(f"{counts['requests']:,} requests, {counts['request_attempts']:,} attempts, "
          f"{counts['model_eval']:,} graded answers over {args.days} days; {args.runs} runs per view.\n")
    print("| view | cold median (s) | cold max (s) | warm median (s) | ≤ 2 s cold |")
    print("|---|---:|---:|---:|:---:|")
    for label, cold_median, cold_max, warm_median in rows:
        ok = "yes" if cold_median <= TARGET_S else "**no**"
        print(f"| {label} | {cold_median:.3f} | {cold_max:.3f} | {warm_median:.3f} | {ok} |")
    if browser:
        print("\nIn headless Chromium, navigation until every chart is drawn (first visit per server start):\n")
        print("| view | median (s) | max (s) | ≤ 2 s |")
        print("|---|---:|---:|:---:|")
        for view, seconds in browser.items():
            ok = "yes" if statistics.median(seconds) <= TARGET_S else "**no**"
            print(f"| {view} | {statistics.median(seconds):.3f} | {max(seconds):.3f} | {ok} |")
    slow = [row for row in rows if row[1] > TARGET_S]
    slow += [view for view, seconds in browser.items() if statistics.median(seconds) > TARGET_S]
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
