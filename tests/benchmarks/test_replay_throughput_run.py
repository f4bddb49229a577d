"""The replay throughput benchmark runs end to end on a small data set: both stacks answer every prompt of each
round and the result carries the ratio. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.test_demo_router import write_small_outcomes

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_replay_throughput_benchmark_runs_both_routers(tmp_path: Path) -> None:
    write_small_outcomes(tmp_path / "data", 450)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "PG_DSN"}
    out = tmp_path / "replay.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.replay_throughput", "--data-dir", str(tmp_path / "data"), "--data-root",
         str(tmp_path / "cache"), "--prompts", "12", "--rounds", "1", "--warmup", "2", "--json", str(out)],
        cwd=REPO_ROOT, env={**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}, capture_output=True, text=True,
        timeout=800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "trained pool router artifact:" in result["trained_router"] and "trained on 250 prompts" in result[
        "trained_router"]
    for router in ("heuristic", "trained"):
        (row,) = result["rounds"][router]
        assert row["recorded"] == row["prompts"] == 12 and row["prompts_per_s"] > 0
    assert result["trained_over_heuristic"] > 0
