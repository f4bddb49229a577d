"""Shared fixtures: a real Tansu broker and a real Postgres, started once per test session.

Postgres: ``ROUTER_TEST_PG_DSN`` (an admin DSN, as ``.ci/run`` sets it) or else an embedded server in a
temporary folder. Each session gets a fresh database with the migrations applied.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from sql.migrate import apply_migrations
from stack.services import (
    create_database,
    drop_database,
    free_port,
    start_embedded_postgres,
    start_tansu,
    stop_embedded_postgres,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every process the tests start inherits this marker in its environment, so the session can find the ones
# left behind (an orphan is re-parented to PID 1 and no longer shows up as our child).
SESSION_MARKER = "ROUTER_TEST_SESSION"


def _marked_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid"]):
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(SESSION_MARKER) == marker:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fails the run if any process started by the tests outlives them; kills their process groups first."""
    marker = uuid.uuid4().hex
    os.environ[SESSION_MARKER] = marker
    yield  # torn down last: every other session fixture has stopped its processes by now
    deadline = time.monotonic() + 10
    survivors = _marked_processes(marker)
    while survivors and time.monotonic() < deadline:  # give stopped children a moment to exit
        time.sleep(0.2)
        survivors = _marked_processes(marker)
    described = []
    for process in survivors:
        try:
            described.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
            group = os.getpgid(process.pid)
            if group == os.getpgid(0):  # started in pytest's own group: kill it alone, never the run itself
                process.kill()
            else:
                os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    assert not described, "processes started by the tests were still running (killed now):\n" + "\n".join(described)


@pytest.fixture(scope="session")
def tansu_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    process = start_tansu(port, log_path=log_path)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    dsn = os.environ.get("ROUTER_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    # Outside pytest's basetemp: pytest prunes old basetemp folders, and a concurrent pytest run
    # would delete the data folder from under a live server.
    data_dir = Path(tempfile.mkdtemp(prefix="router-test-pg-"))
    server, dsn = start_embedded_postgres(data_dir)
    yield dsn
    stop_embedded_postgres(server)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    name = f"router_test_{uuid.uuid4().hex[:10]}"
    dsn = create_database(pg_admin_dsn, name)
    apply_migrations(dsn)
    yield dsn
    drop_database(pg_admin_dsn, name)


@pytest.fixture()
def clean_db(pg_dsn: str) -> str:
    """The session database with every data table emptied."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE requests, request_attempts, cost_rates, model_eval")
    return pg_dsn


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The outcomes data folder (ROUTER_DATA_DIR, else ../shared/data beside the checkout)."""
    candidates = [os.environ.get("ROUTER_DATA_DIR"), str(REPO_ROOT.parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "outcomes").is_dir():
            return Path(candidate)
    pytest.skip("outcomes data not found: set ROUTER_DATA_DIR")


@pytest.fixture(scope="session")
def stub_server() -> Iterator[str]:
    """A local OpenAI-compatible server in its own process; yields its base URL (…/v1)."""
    import subprocess
    import sys

    from stack.services import wait_for_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "stack.stub_server", "--port", str(port)], cwd=REPO_ROOT)
    try:  # a stub that is slow to start is stopped too, not left behind
        wait_for_port("127.0.0.1", port, timeout_s=60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)
