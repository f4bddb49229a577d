"""The soak benchmark runs end to end at a low rate: every prompt it offers is recorded once, and the result
carries the bare aiokafka baseline and the memory section. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_short_soak_records_every_prompt_once_and_reports_baseline_and_memory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "PG_DSN"}
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak_bench", "--minutes", "0.4", "--rate", "40", "--baseline-seconds", "3",
         "--drain-minutes", "1", "--json", str(out)],
        cwd=REPO_ROOT, env={**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}, capture_output=True, text=True,
        timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())

    soak = result["soak"]
    checks = soak["checks"]
    assert soak["produced"] >= 0.9 * 40 * 0.4 * 60  # the pacing offered about the asked rate
    assert checks["rows"] == soak["produced"] == soak["recorded_at_end"]
    assert checks["duplicates"] == 0 and checks["lost"] == 0 and checks["missing_sample"] == []
    assert checks["failed"] == checks["expired"] == checks["dead_letters"] == 0
    assert soak["sustained_per_s_whole_run"] > 0 and soak["recorded_per_minute"]
    assert soak["cpu_ms_per_prompt"]["worker"] > 0

    baseline = result["baseline"]
    for run in (baseline["paced"], baseline["flat_out"]):
        assert run["consumed"] == run["produced"] > 0
        assert run["cpu_ms_per_message"]["broker"] > 0
    assert baseline["flat_out"]["produced_per_s"] > baseline["paced"]["produced_per_s"]

    for part in ("worker-1", "broker", "api", "postgres", "load generator"):
        memory = soak["memory"][part]
        assert memory["start_mb"] > 0 and memory["end_mb"] > 0 and "slope_mb_per_min" in memory
    assert len(soak["samples"]) >= 3
