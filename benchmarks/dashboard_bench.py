"""How long each dashboard view takes to render with 1M requests in Postgres.

    .venv/bin/python benchmarks/dashboard_bench.py [--requests 1000000] [--days 30] [--runs 5] [--browser]
                                                   [--admin-dsn DSN] [--json PATH]

Seeds a throwaway database (on ``--admin-dsn``, else ``ROUTER_TEST_PG_DSN``, else an embedded Postgres in a
temporary folder) with synthetic traffic from :mod:`dashboard.sample_bulk` (a base built row by row by
:mod:`dashboard.sample_data`, copied in bulk by Postgres), then runs the real app script
with streamlit's AppTest once per view and run: *cold* clears the query cache first (every SQL query runs),
*warm* reruns with the cache filled (what a user sees moving between views within the cache TTL). The *SQL*
column times the view's queries alone (``dashboard.queries`` with the cache cleared), without Streamlit.
Each figure is the median of ``--runs`` runs of the whole script (queries, DataFrames, Altair specs,
Streamlit elements), as a user's page load minus the browser's drawing. ``--browser`` adds the
browser's side: seconds from navigation until every chart is drawn in headless Chromium. ``--json`` writes
the medians per view (and the row counts, load average and date) to a file.
"""

from __future__ import annotations

import argparse
import json
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
TARGET_S = 1.0

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
    ("Experiments (none yet)", "experiments", None, {}),
    ("Spend vs budget", "budgets", None, {}),
]
# Views that draw no chart on the benchmark's data (the explorer's search draws a table).
CHARTLESS_VIEWS = {"offline", "experiments", "budgets"}


def view_queries(dsn: str) -> dict[str, list]:
    """Each view's SQL, as the view calls it (dashboard.queries), over the whole data range."""
    from dashboard import queries as q
    from dashboard.online import experiment_choices

    first, last = q.data_bounds(dsn)
    whole = q.Filters(start=first, end=last)
    tenant = q.Filters(start=first, end=last, tenants=("globex",), difficulties=("complex",))
    common = [lambda: q.data_bounds(dsn), lambda: q.filter_choices(dsn), lambda: q.simulated_requests(dsn, whole)]
    return {
        "Overview": [*common, lambda: q.overview(dsn, whole), lambda: q.savings_by_router(dsn, whole)],
        "Model mix": [*common, lambda: q.mix_daily(dsn, whole), lambda: q.routed_vs_final(dsn, whole),
                      lambda: q.billed_by_model(dsn, whole)],
        "Latency": [*common, lambda: q.latency_by_model(dsn, whole), lambda: q.latency_daily(dsn, whole),
                    lambda: q.end_to_end_latency(dsn, whole)],
        "Quality vs cost": [*common, lambda: q.quality_daily(dsn, whole), lambda: q.quality_by_model(dsn, whole)],
        "Escalations and fallbacks": [*common, lambda: q.escalation_daily(dsn, whole),
                                      lambda: q.transitions(dsn, whole)],
        "Request explorer (newest)": [*common, lambda: q.search_requests(dsn, whole, "")],
        "Request explorer (search prompt text)": [*common, lambda: q.search_requests(dsn, whole, "topic 42")],
        "Overview, tenant + difficulty filter": [lambda: q.overview(dsn, tenant), lambda: q.savings_by_router(dsn, tenant)],
        "Latency, tenant filter (join)": [lambda: q.latency_by_model(dsn, tenant), lambda: q.latency_daily(dsn, tenant),
                                          lambda: q.end_to_end_latency(dsn, tenant)],
        "Experiments (none yet)": [*common, lambda: experiment_choices(dsn)],
        "Spend vs budget": [lambda: q.budget_report(dsn)],
    }


def time_queries(calls: list, runs: int) -> list[float]:
    """Seconds for a view's queries, run one after the other with the cache cleared (what a cold render waits on)."""
    import streamlit as st

    times = []
    for _ in range(runs):
        st.cache_data.clear()
        started = time.perf_counter()
        for call in calls:
            call()
        times.append(time.perf_counter() - started)
    return times


def scan_components_once() -> None:
    """Scan the installed packages for Streamlit components once, as ``streamlit run`` does when its runtime
    starts. ``AppTest`` rescans on every run (reading the metadata of every installed distribution: 0.5 to 3.7 s
    on this machine), which no page load of the real server pays."""
    import functools

    from streamlit.components.v2 import manifest_scanner

    if not hasattr(manifest_scanner.scan_component_manifests, "cache_info"):
        manifest_scanner.scan_component_manifests = functools.cache(manifest_scanner.scan_component_manifests)


def run_view(view: str, search: str | None, filters: dict[str, list[str]], cold: bool) -> float:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    scan_components_once()
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
    if view not in CHARTLESS_VIEWS and not at.get("vega_lite_chart") and not search:
        raise RuntimeError(f"view {view} drew no chart")
    return elapsed


BROWSER_VIEWS = {"overview": 3, "mix": 3, "latency": 2, "quality": 2, "escalations": 2, "explorer": 1}
VIEW_TITLES = {"offline": "Offline evaluation", "overview": "Overview", "mix": "Model mix", "latency": "Latency", "quality": "Quality vs cost",
               "escalations": "Escalations and fallbacks", "explorer": "Request explorer"}


def _drawn(driver, title: str, charts: int) -> bool:
    """The view's heading is shown, its charts are drawn, and nothing on the page is stale or running."""
    from selenium.webdriver.common.by import By

    headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "h2")]
    if title not in headings:
        return False
    drawn = driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks')
    return (len(drawn) >= charts and not driver.find_elements(By.CSS_SELECTOR, '[data-stale="true"]')
            and not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))


def _until(predicate, what: str, timeout_s: float = 60) -> None:
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what}: not drawn within {timeout_s:.0f} s")
        time.sleep(0.02)


def browser_times(dsn: str, runs: int) -> dict[str, dict[str, list[float]]]:
    """Seconds until every chart of a view is drawn in headless Chromium, two ways.

    *switch*: clicking the view in the sidebar (what a user does; the page stays loaded). *load*: opening
    the view's URL, so the browser also loads and starts Streamlit's front end. Each run starts a fresh
    `streamlit run` server, so each view's first visit runs its SQL (only the sidebar's data bounds and
    filter choices are already cached by then); *switch* runs before *load*.
    """
    import subprocess

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from stack.services import free_port, wait_for_port

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1800",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='dashboard-bench-chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    reports = tempfile.mkdtemp(prefix="dashboard-bench-reports-")
    Path(reports, "harness.json").write_text(json.dumps(
        {"n": 100, "router": {"accuracy": 0.8, "cost_usd": 1.0},
         "baselines": {"expensive": {"accuracy": 0.85, "cost_usd": 4.0}, "cheap": {"accuracy": 0.6, "cost_usd": 0.2}}}))
    times: dict[str, dict[str, list[float]]] = {"switch": {v: [] for v in BROWSER_VIEWS},
                                                "load": {v: [] for v in BROWSER_VIEWS}}
    try:
        for _ in range(runs):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port), "--server.headless",
                 "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                cwd=REPO_ROOT, env={**os.environ, "ROUTER_PG_DSN": dsn, "ROUTER_DASHBOARD_REPORTS_DIR": reports},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for_port("127.0.0.1", port, timeout_s=60)
                # Start on the offline view with a report: its chart loads the front end's Vega code once,
                # so each switch below times the view (its SQL and drawing), not that one-off download.
                driver.get(f"{url}/?view=offline")
                _until(lambda: _drawn(driver, "Offline evaluation", 1), "offline")
                for view, charts in BROWSER_VIEWS.items():
                    options_shown: list = []

                    def sidebar_options(shown: list = options_shown) -> list:
                        shown.extend(driver.find_elements(
                            By.CSS_SELECTOR, '[data-testid="stSidebar"] [data-testid="stRadioOption"]'))
                        return shown

                    _until(sidebar_options, "sidebar")
                    label = next((o for o in options_shown if o.text.strip() == VIEW_TITLES[view]), None)
                    if label is None:
                        raise RuntimeError(f"no sidebar entry {VIEW_TITLES[view]!r}: {[o.text for o in options_shown]}")
                    started = time.perf_counter()
                    label.click()
                    _until(lambda v=view, c=charts: _drawn(driver, VIEW_TITLES[v], c), view)
                    times["switch"][view].append(time.perf_counter() - started)
                for view, charts in BROWSER_VIEWS.items():
                    started = time.perf_counter()
                    driver.get(f"{url}/?view={view}")
                    _until(lambda v=view, c=charts: _drawn(driver, VIEW_TITLES[v], c), view)
                    times["load"][view].append(time.perf_counter() - started)
            finally:
                server.terminate()
                server.wait(timeout=15)
    finally:
        driver.quit()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--admin-dsn", default=os.environ.get("ROUTER_TEST_PG_DSN"))
    parser.add_argument("--dsn", help="time an already filled database instead of seeding a throwaway one")
    parser.add_argument("--browser", action="store_true",
                        help="also time each view in headless Chromium (needs Debian's chromium + chromedriver)")
    parser.add_argument("--json", type=Path, help="write the figures to this file as JSON")
    args = parser.parse_args(argv)
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    sys.path.insert(0, str(REPO_ROOT))

    from core.settings import get_settings
    from dashboard.sample_bulk import fill
    from sql.migrate import apply_migrations
    from stack.services import create_database, drop_database, start_embedded_postgres

    admin_dsn = args.admin_dsn
    if args.dsn:
        dsn = args.dsn
    else:
        if not admin_dsn:
            _server, admin_dsn = start_embedded_postgres(Path(tempfile.mkdtemp(prefix="dashboard-bench-pg-")))
        name = f"dashboard_bench_{uuid.uuid4().hex[:8]}"
        dsn = create_database(admin_dsn, name)
    try:
        started = time.perf_counter()
        if not args.dsn:
            apply_migrations(dsn)
            with psycopg.connect(dsn) as conn:
                fill(conn, args.requests, args.days)
        with psycopg.connect(dsn) as conn:
            counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                      for table in ("requests", "request_attempts", "model_eval")}
        print(f"rows {counts}, ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        os.environ["ROUTER_PG_DSN"] = dsn
        os.environ["ROUTER_DASHBOARD_REPORTS_DIR"] = tempfile.mkdtemp(prefix="dashboard-bench-reports-")
        get_settings.cache_clear()
        run_view("overview", None, {}, cold=True)  # first run pays imports and the pool; not measured
        sql_times = {label: statistics.median(time_queries(calls, args.runs))
                     for label, calls in view_queries(dsn).items()}
        for label, seconds in sql_times.items():
            print(f"{label}: SQL median {seconds:.3f} s", file=sys.stderr)

        rows = []
        load_before = os.getloadavg()
        for label, view, search, filters in SCENARIOS:
            cold = [run_view(view, search, filters, cold=True) for _ in range(args.runs)]
            warm = [run_view(view, search, filters, cold=False) for _ in range(args.runs)]
            rows.append((label, statistics.median(cold), max(cold), statistics.median(warm)))
            print(f"{label}: cold median {rows[-1][1]:.3f} s", file=sys.stderr)
        load_after = os.getloadavg()
        browser = browser_times(dsn, args.runs) if args.browser else {}
    finally:
        if not args.dsn:
            drop_database(admin_dsn, name)

    print(f"{counts['requests']:,} requests, {counts['request_attempts']:,} attempts, "
          f"{counts['model_eval']:,} graded answers; {args.runs} runs per view.\n")
    print(f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after the AppTest runs; "
          f"{os.cpu_count()} CPUs.\n")
    print("| view | SQL median (s) | cold median (s) | cold max (s) | warm median (s) | ≤ 1 s cold |")
    print("|---|---:|---:|---:|---:|:---:|")
    for label, cold_median, cold_max, warm_median in rows:
        ok = "yes" if cold_median <= TARGET_S else "**no**"
        sql = f"{sql_times[label]:.3f}" if label in sql_times else "–"
        print(f"| {label} | {sql} | {cold_median:.3f} | {cold_max:.3f} | {warm_median:.3f} | {ok} |")
    if browser:
        print("\nIn headless Chromium, until every chart of the view is drawn. switch: clicking the view in the "
              "sidebar, first visit since the server started (its SQL runs; the page and its chart code are "
              "loaded); load: opening the view's URL in the open browser (the page and Streamlit's front end "
              "load again; the view's queries are cached by then):\n")
        print("| view | switch median (s) | switch max (s) | load median (s) | load max (s) | ≤ 1 s |")
        print("|---|---:|---:|---:|---:|:---:|")
        for view in BROWSER_VIEWS:
            switch, load = browser["switch"][view], browser["load"][view]
            ok = "yes" if max(statistics.median(switch), statistics.median(load)) <= TARGET_S else "**no**"
            print(f"| {view} | {statistics.median(switch):.3f} | {max(switch):.3f} | {statistics.median(load):.3f} "
                  f"| {max(load):.3f} | {ok} |")
    if args.json:
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": counts, "runs": args.runs,
            "cpus": os.cpu_count(), "load_average_before": load_before[0], "load_average_after": load_after[0],
            "target_s": TARGET_S,
            "views": [{"view": label, "sql_p50_s": sql_times.get(label), "cold_p50_s": cold_median,
                       "cold_max_s": cold_max, "warm_p50_s": warm_median}
                      for label, cold_median, cold_max, warm_median in rows],
            "browser": {way: {view: statistics.median(seconds) for view, seconds in times.items()}
                        for way, times in browser.items()},
        }, indent=2) + "\n")
    slow = [row for row in rows if row[1] > TARGET_S]
    slow += [view for way in browser.values() for view, seconds in way.items() if statistics.median(seconds) > TARGET_S]
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
