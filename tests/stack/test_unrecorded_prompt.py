"""The default (replay) demo answers a user's own prompt: the stub model stands in for the replayed models,
``/generate`` returns 200 labelled unrecorded and ungraded, and the request stays out of accuracy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from stack.services import create_database, drop_database, free_port
from tests.keys import new_key_sync
from tests.providers.test_replay_demo import write_outcomes

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_own_prompt_in_the_replay_demo_is_answered_and_labelled_unrecorded(pg_admin_dsn: str,
                                                                            tmp_path: Path) -> None:
    write_outcomes(tmp_path / "data", 6)
    db_name = f"router_unrec_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_admin_dsn, db_name)
    api_port = free_port()
    env = {**os.environ, "PG_DSN": dsn, "ROUTER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "ROUTER_API_PORT": str(api_port), "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}
    for name in ("ROUTER_PG_DSN", "ROUTER_STUB_URL", "ROUTER_MODELS_CONFIG", "ROUTER_CLASSIFIER_ARTIFACT"):
        env.pop(name, None)
    log_path = tmp_path / "stack.log"
    with log_path.open("w") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "stack", "--replay", "--sample", "4", "--data-dir", str(tmp_path / "data"),
             "--no-dashboard", "--data-root", str(tmp_path / "stack")],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "Press Ctrl-C" not in log_path.read_text(errors="replace"):
            assert stack.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.5)
        prompt = "Write a two-line poem about my cat Biscuit, who is not in any benchmark."
        response = httpx.post(f"http://127.0.0.1:{api_port}/generate", json={"prompt": prompt}, timeout=60,
                              headers={"Authorization": f"Bearer {new_key_sync(dsn, 'demo')}"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ok" and body["response"]
        assert body["recorded"] is False and body["graded"] is False
        with psycopg.connect(dsn, autocommit=True) as conn:
            row, written_by = None, time.monotonic() + 60  # /generate answers before the sink has written the row
            while row is None and time.monotonic() < written_by:
                row = conn.execute("SELECT recorded, correct, counterfactual_correct FROM requests"
                                   " WHERE request_id = %s", (body["request_id"],)).fetchone()
                time.sleep(0.25)
            graded = conn.execute("SELECT count(*) FROM model_eval WHERE request_id = %s",
                                  (body["request_id"],)).fetchone()[0]
            recorded_graded = conn.execute("SELECT count(*) FROM requests WHERE recorded AND correct IS NOT NULL"
                                           ).fetchone()[0]
        assert row == (False, None, None)  # unrecorded, ungraded: out of accuracy
        assert graded == 0
        assert recorded_graded == 4  # the demo's replayed sample stays graded
    finally:
        if stack.poll() is None:
            stack.send_signal(signal.SIGINT)
            try:
                stack.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stack.kill()
                stack.wait()
        drop_database(pg_admin_dsn, db_name)
