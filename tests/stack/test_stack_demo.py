"""The demo command's stack, run as a user runs it: starts everything, pushes prompts end to end, waits for
Ctrl-C, then shuts every part down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from stack.services import create_database, drop_database, free_port
from tests.keys import new_key_sync

REPO_ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(300)
def test_demo_stack_runs_prompts_end_to_end_and_stops_on_ctrl_c(pg_admin_dsn, tmp_path):
    db_name = f"router_stack_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_admin_dsn, db_name)
    kafka_port, api_port, dashboard_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PG_DSN": dsn, "ROUTER_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
           "ROUTER_API_PORT": str(api_port), "ROUTER_DASHBOARD_PORT": str(dashboard_port), "COLUMNS": "160",
           "PYTHONUNBUFFERED": "1"}
    for name in ("ROUTER_PG_DSN", "ROUTER_STUB_URL", "ROUTER_MODELS_CONFIG"):
        env.pop(name, None)
    output = tmp_path / "stack.out"
    with open(output, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "stack", "--stub", "--demo-prompts", "8", "--data-root",
                                    str(tmp_path / "data")], cwd=REPO_ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "Press Ctrl-C" not in output.read_text(errors="replace"):
            assert process.poll() is None, f"stack exited early:\n{output.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"stack not up in time:\n{output.read_text(errors='replace')}"
            time.sleep(0.5)
        text = output.read_text(errors="replace")
        assert f"http://127.0.0.1:{api_port}" in text
        assert "8/8 demo requests recorded in Postgres" in text
        if (REPO_ROOT / "dashboard" / "app.py").exists():
            assert f"Dashboard  http://127.0.0.1:{dashboard_port}" in text and _listening(dashboard_port)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'ok'), sum(cost_micro_usd),"
                                " count(DISTINCT final_model) FROM requests").fetchone()
        assert rows[0] == 8 and rows[1] == 8 and rows[2] > 0
        assert _listening(api_port) and _listening(kafka_port)

        # A worker that dies is restarted, and what the API accepted meanwhile is recorded.
        worker = next(child for child in psutil.Process(process.pid).children()
                      if "stream_processors" in " ".join(child.cmdline()))
        worker.kill()
        accepted = httpx.post(f"http://127.0.0.1:{api_port}/prompts", json={"prompt": "accepted while down"},
                              headers={"Authorization": f"Bearer {new_key_sync(dsn, 'demo')}"}, timeout=10)
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["request_id"]
        deadline = time.monotonic() + 120
        while True:
            with psycopg.connect(dsn) as conn:
                if conn.execute("SELECT 1 FROM requests WHERE request_id = %s", (request_id,)).fetchone():
                    break
            assert time.monotonic() < deadline, output.read_text(errors="replace")
            time.sleep(0.5)
        text = output.read_text(errors="replace")
        assert "worker-1 exited with code -9; restarting in 1s" in text and "worker-1 restarted" in text

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(timeout=90) == 0, output.read_text(errors="replace")
        text = output.read_text(errors="replace")
        assert "stopped api" in text and "stopped worker-1" in text and "stopped broker" in text
        assert not any(_listening(port) for port in (api_port, kafka_port, dashboard_port))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        drop_database(pg_admin_dsn, db_name)
