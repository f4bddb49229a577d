"""The replay demo on a pool models file (config/models.demo-pool.yaml) with a pool artifact: the live
pipeline (broker, Faust worker, Postgres) routes across the pool by the artifact's plan: it starts at a
model off the three-tier ladder, escalates along the plan, and the printed figures match Postgres."""

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
import yaml

from core.outcomes import load_outcomes
from core.registry import ModelRegistry
from routing.pool_policy import PoolPlan
from stack.services import create_database, drop_database, free_port
from training.pool import build_pool_data, fit_answer_model

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL_FILE = REPO_ROOT / "config" / "models.demo-pool.yaml"
FIRST, SECOND, REFERENCE = "gpt-4o-mini-2024-07-18", "llama-3.1-70b-instruct", "gpt-4o-2024-05-13"


def write_outcomes(folder: Path, n: int, models: list[str]) -> None:
    """gsm8k-like records every pool model answered; on some prompts a model's answer is off by one, so
    cheaper answers agree on some prompts and not on others."""
    (folder / "outcomes").mkdir(parents=True)
    with gzip.open(folder / "outcomes" / "gsm8k.jsonl.gz", "wt") as handle:
        for i in range(n):
            outcomes = {}
            for k, model in enumerate(models):
                value = i + (1 if i % (k + 2) == 0 else 0)
                outcomes[model] = {"correct": value == i, "answer": str(value), "input_tokens": 20 + i,
                                   "output_tokens": 40 + 10 * k,
                                   "response": json.dumps({"reasoning": "step by step", "answer": str(value)})}
            handle.write(json.dumps({"id": f"gsm8k/{i}", "source": "gsm8k",
                                     "prompt": f"Question {i}: what is {i} + 0?", "outcomes": outcomes}) + "\n")


def write_pool_artifact(folder: Path, data_dir: Path, registry: ModelRegistry) -> None:
    """A pool artifact whose plan is fixed here: gpt-4o-mini first, its answer kept only when llama-3.1-70b
    agrees with it (never on its own score), else gpt-4o."""
    models = [m.name for m in registry.models]
    records = load_outcomes([data_dir / "outcomes"])
    data = build_pool_data(records, models, REFERENCE, {m.name: m.prices for m in registry.models}, progress=False)
    folder.mkdir(parents=True)
    fit_answer_model(data).save(folder)
    plan = PoolPlan(FIRST, second=SECOND, final=REFERENCE, accept_first_at=2.0, accept_second_at=2.0,
                    accept_agreement=True)
    (folder / "policy.json").write_text(json.dumps({
        "policy": "pool", "classifier": "heuristic", "params": {"reference": REFERENCE, "default": plan.as_json()},
        "checks": ["refusal", "too_short", "pool_answer"], "answer_model": "answer_model.json", "max_escalations": 2}))
    (folder / "model_card.json").write_text(json.dumps({"pool": models, "reference": REFERENCE}))


@pytest.mark.timeout(300)
def test_replay_demo_routes_across_a_pool(pg_admin_dsn: str, tmp_path: Path) -> None:
    registry = ModelRegistry.model_validate(yaml.safe_load(POOL_FILE.read_text().replace(
        "${ROUTER_REPLAY_LATENCY_MS:-0}", "0")))
    assert registry.pool and len(registry.models) == 7
    write_outcomes(tmp_path / "data", 12, models=[m.name for m in registry.models])
    write_pool_artifact(tmp_path / "artifact", tmp_path / "data", registry)
    db_name = f"router_replay_pool_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_admin_dsn, db_name)
    env = {**os.environ, "PG_DSN": dsn, "ROUTER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "ROUTER_API_PORT": str(free_port()), "COLUMNS": "200", "PYTHONUNBUFFERED": "1",
           "ROUTER_CLASSIFIER_ARTIFACT": str(tmp_path / "artifact")}
    for name in ("ROUTER_PG_DSN", "ROUTER_STUB_URL", "ROUTER_MODELS_CONFIG"):
        env.pop(name, None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stack", "--replay", "--models", str(POOL_FILE), "--sample", "10",
             "--data-dir", str(tmp_path / "data"), "--exit-after-demo", "--no-dashboard",
             "--data-root", str(tmp_path / "stack")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "on the pool" in output, output
        with psycopg.connect(dsn) as conn:
            requests, spend = conn.execute("SELECT count(*), sum(cost_micro_usd) FROM requests").fetchone()
            first_calls = conn.execute("SELECT count(*) FROM request_attempts WHERE attempt_no = 1 AND model = %s",
                                       (FIRST,)).fetchone()[0]
            seconds = conn.execute("SELECT count(*) FROM request_attempts WHERE attempt_no = 2 AND model = %s",
                                   (SECOND,)).fetchone()[0]
            thirds = conn.execute("SELECT count(*) FROM request_attempts WHERE attempt_no = 3 AND model = %s",
                                  (REFERENCE,)).fetchone()[0]
            others = conn.execute("SELECT count(*) FROM request_attempts WHERE model <> ALL(%s)",
                                  ([FIRST, SECOND, REFERENCE],)).fetchone()[0]
            finals = dict(conn.execute("SELECT final_model, count(*) FROM requests GROUP BY 1").fetchall())
        assert requests == 10
        assert first_calls == 10 and seconds == 10  # the plan's first two models, in order, on every prompt
        assert others == 0  # nothing off the plan
        # Agreement decides: kept where both cheaper answers agree, else gpt-4o answers.
        assert thirds == finals.get(REFERENCE, 0) and finals.get(SECOND, 0) == 10 - thirds
        assert 0 < thirds < 10
        match = re.search(r"router:\s+spend (\d+\.\d{6}) USD", output)
        assert match, output
        assert round(float(match.group(1)) * 1e6) == spend
    finally:
        drop_database(pg_admin_dsn, db_name)
