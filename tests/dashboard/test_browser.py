"""The dashboard served by `streamlit run`, opened in headless Chromium: every view draws its charts, none raises.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Saves a screenshot of
each view to ``docs/dashboard-<view>.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest

from dashboard.sample_data import generate
from stack.services import free_port, wait_for_port
from tests.dashboard.test_app import HARNESS_REPORT

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"
CHROMIUM = Path(os.environ.get("ROUTER_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("ROUTER_CHROMEDRIVER", "/usr/bin/chromedriver"))
# view slug -> charts the page must draw
VIEWS = {"overview": 3, "mix": 3, "latency": 2, "quality": 2, "escalations": 2, "explorer": 1, "offline": 1}
LONE_DAY = date(2026, 1, 20)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dashboard_url(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE requests, request_attempts, cost_rates, model_eval")
    with psycopg.connect(pg_dsn) as conn:
        generate(conn, requests=3_000, days=14, last_day=date(2026, 1, 14), progress=False)
        # One lone request on a later day: a one-day range then has a single hourly bucket.
        generate(conn, requests=1, days=1, last_day=LONE_DAY, graded_share=1.0, seed=8, progress=False)
    reports = tmp_path_factory.mktemp("reports")
    (reports / "harness.json").write_text(json.dumps(HARNESS_REPORT))
    port = free_port()
    env = {**os.environ, "ROUTER_PG_DSN": pg_dsn, "ROUTER_DASHBOARD_REPORTS_DIR": str(reports)}
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout_s=60)
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as response:
            assert response.read().strip() == b"ok"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE requests, request_attempts, cost_rates, model_eval")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists() or shutil.which(str(CHROMEDRIVER)) is None:
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1800",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to fail on Vega's console errors
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for_view(driver, expected_charts: int, timeout_s: float = 60.0) -> tuple[int, list[str]]:
    """Wait until the script run is over and the charts are drawn; returns (charts drawn, exception texts)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    drawn, exceptions = 0, []
    while time.monotonic() < deadline:
        exceptions = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')]
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        # A chart counts once vega-embed has drawn it (a canvas or an svg with marks).
        drawn = len(driver.find_elements(
            By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks'))
        if exceptions or (drawn >= expected_charts and not running):
            break
        time.sleep(0.25)
    return drawn, exceptions


def _console_errors(driver) -> list[str]:
    """Errors the page logged since the last call (Vega reports a chart it cannot draw only here)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
            and "favicon" not in entry["message"]]


def _open(driver, url: str, expected_charts: int) -> None:
    from selenium.webdriver.common.by import By

    _console_errors(driver)  # drop what earlier pages logged
    driver.get(url)
    drawn, exceptions = _wait_for_view(driver, expected_charts)
    assert not exceptions, exceptions
    assert drawn >= expected_charts, f"{url}: {drawn} chart(s) drawn, expected {expected_charts}"
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')]
    assert not errors, errors
    assert driver.find_element(By.CSS_SELECTOR, "h2").text, "view has no heading"
    time.sleep(0.5)  # let the charts' enter transitions settle before the picture and the console check
    assert not _console_errors(driver), f"{url}: browser console errors"


@pytest.mark.parametrize("view", list(VIEWS))
def test_view_renders_charts_in_chromium(dashboard_url: str, browser, view: str) -> None:
    # The full range (with the lone later request) for the check, the two busy weeks for the picture.
    _open(browser, f"{dashboard_url}/?view={view}", VIEWS[view])
    _open(browser, f"{dashboard_url}/?view={view}&from=2026-01-01&to=2026-01-14", VIEWS[view])
    DOCS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(DOCS / f"dashboard-{view}.png"))


# The lone request was neither escalated nor fell back: no hops chart on that day.
@pytest.mark.parametrize(("view", "charts"), [("overview", 3), ("mix", 3), ("latency", 2), ("quality", 2),
                                              ("escalations", 1)])
def test_one_hour_of_traffic_draws_too(dashboard_url: str, browser, view: str, charts: int) -> None:
    """A one-day range buckets by hour; a single bucket must still draw (a demo's first minutes)."""
    day = LONE_DAY.isoformat()
    _open(browser, f"{dashboard_url}/?view={view}&from={day}&to={day}", charts)
