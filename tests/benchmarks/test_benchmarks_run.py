"""The pipeline benchmarks still run against the current stack (keys, readiness, stub faults): a tiny run of each,
as a subprocess with its own stack, must finish with every call answered. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "PG_DSN"}
    return {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def _run(module: str, args: list[str], out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", module, *args, "--json", str(out)], cwd=REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(900)
def test_the_gateway_and_pipeline_benchmarks_run_end_to_end(tmp_path):
    gateway = _run("benchmarks.gateway_bench", ["--requests", "4", "--concurrency", "2"], tmp_path / "gateway.json")
    (row,) = gateway["latency"]
    assert row["concurrency"] == 2 and row["failures"] == 0 and row["first_errors"] == {}
    assert row["gateway_stream_ttft_p50_ms"] > 0 and row["generate_p50_ms"] > 0

    pipeline = _run("benchmarks.pipeline_bench", ["--requests", "3", "--concurrency", "1", "--throughput", "30",
                                                  "--model-latency-ms", "50"], tmp_path / "pipeline.json")
    (row,) = pipeline["latency"]
    assert row["failures"] == 0 and row["requests"] == 3
    assert row["direct_p50_ms"] >= 50  # the stub's latency applied to every call
    assert pipeline["throughput"]["recorded"] == 30
