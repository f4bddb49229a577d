"""The replay demo end to end: real broker, Postgres, Faust worker; replayed answers land in requests and,
with their recorded correctness, once each in model_eval; the printed figures match Postgres."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from stack.services import create_database, drop_database, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
LADDER = ("phi-3.5-mini-instruct", "llama-3-70b-instruct", "gpt-4o-2024-05-13")


def write_outcomes(folder: Path, n: int) -> None:
    (folder / "outcomes").mkdir(parents=True)
    with gzip.open(folder / "outcomes" / "gsm8k.jsonl.gz", "wt") as handle:
        for i in range(n):
            outcomes = {model: {"correct": (i + k) % 3 != 0, "answer": str(i), "input_tokens": 20 + i,
                                "output_tokens": 40 + 10 * k, "response": f"The answer is {i}, computed step by step."}
                        for k, model in enumerate(LADDER)}
            record = {"id": f"gsm8k/{i}", "source": "gsm8k", "prompt": f"Question {i}: what is {i} + {i}?",
                      "outcomes": outcomes}
            handle.write(json.dumps(record) + "\n")


@pytest.mark.timeout(300)
def test_replay_demo_records_costs_and_correctness(pg_admin_dsn: str, tmp_path: Path) -> None:
    write_outcomes(tmp_path / "data", 12)
    db_name = f"router_replay_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_admin_dsn, db_name)
    env = {**os.environ, "PG_DSN": dsn, "ROUTER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "ROUTER_API_PORT": str(free_port()), "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}
    for name in ("ROUTER_PG_DSN", "ROUTER_STUB_URL", "ROUTER_MODELS_CONFIG", "ROUTER_CLASSIFIER_ARTIFACT"):
        env.pop(name, None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stack", "--replay", "--sample", "10", "--data-dir", str(tmp_path / "data"),
             "--exit-after-demo", "--no-dashboard", "--data-root", str(tmp_path / "stack")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        with psycopg.connect(dsn) as conn:
            requests, spend, graded_requests = conn.execute(
                "SELECT count(*), sum(cost_micro_usd), count(*) FILTER (WHERE final_model IS NOT NULL)"
                " FROM requests").fetchone()
            evals, correct = conn.execute("SELECT count(*), count(*) FILTER (WHERE correct) FROM model_eval").fetchone()
            per_request = conn.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM model_eval GROUP BY request_id) s"
                                       ).fetchone()[0]
            priced = conn.execute(
                "SELECT count(*) FROM request_attempts a JOIN cost_rates r ON r.model = a.model"
                " WHERE a.status <> 'error' AND a.cost_micro_usd ="
                " (a.tokens_in * r.input_micro_usd_per_1k + a.tokens_out * r.output_micro_usd_per_1k + 500) / 1000"
            ).fetchone()[0]
            attempts = conn.execute("SELECT count(*) FROM request_attempts WHERE status <> 'error'").fetchone()[0]
        assert requests == 10 and graded_requests == 10
        assert evals == 10 and per_request == 1  # one model_eval row per replayed request
        assert priced == attempts > 0  # every answered attempt is priced to the micro-USD from cost_rates
        match = re.search(r"router:\s+spend (\d+\.\d{6}) USD, accuracy [\d.]+% \((\d+)/(\d+)\)", output)
        assert match, output
        assert round(float(match.group(1)) * 1e6) == spend
        assert (int(match.group(2)), int(match.group(3))) == (correct, 10)
        # The savings line names the router and shows the accuracy delta on the graded requests.
        assert re.search(r"router seed heuristic \(untrained\): -?\d+\.\d% saved vs always gpt-4o-2024-05-13 .*"
                         r"accuracy [+-]\d+\.\d pt vs always gpt-4o-2024-05-13 on 10 graded requests", output), output
    finally:
        drop_database(pg_admin_dsn, db_name)
