"""What the router adds: latency of POST /generate over a direct call to the same OpenAI-compatible stub,
and the prompts/s the Kafka path sustains with stub providers.

    .venv/bin/python -m benchmarks.pipeline_bench [--requests 400] [--concurrency 1 32] [--throughput 3000]
                                                  [--workers 1] [--model-latency-ms 0] [--profile]

Starts the local stack (Tansu, Postgres, the stub, Faust worker(s), the API; no dashboard) with
``config/models.local.yaml``, then in one run:

1. Latency, per concurrency level: ``--requests`` calls each way, interleaved in pairs so both see the
   same machine load: *direct* is the openai SDK calling the stub; *pipeline* is POST /generate (API ->
   Kafka -> classify -> route topic -> provider agent -> the same stub -> completions -> reply topic -> API).
   Reported: p50/p99 of each and the added latency (pipeline minus direct, per percentile).
2. Throughput: ``--throughput`` prompts produced straight to the prompts topic; prompts/s = prompts / time
   until the last one's row is in Postgres (classified, answered, sunk).

``--profile`` samples the worker with py-spy, if installed, during the throughput phase.
Targets (issue 3): added p50 <= 25 ms and p99 <= 100 ms; >= 300 prompts/s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import psycopg
from openai import AsyncOpenAI
from rich.console import Console

from benchmarks.bench_stack import benchmark_stack, machine_line, read_stack_processes, report

# A mix the heuristic classifier sends to all three tiers, so every provider agent is on the path.
PROMPTS = (
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "Explain the difference between a list and a tuple in Python, with an example of each.",
    "Write a SQL query that returns the top 5 customers by total order value in the last 30 days.",
    "Design a rate limiter for a distributed API gateway: compare token bucket and sliding window, discuss "
    "consistency across nodes, failure modes, and give pseudocode for the approach you recommend.",
)


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


async def latency_phase(api_url: str, api_key: str, stub_url: str, model_id: str, requests: int,
                        concurrency: int) -> dict:
    direct_client = AsyncOpenAI(base_url=stub_url, api_key="unused", max_retries=0, timeout=30)
    http = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency * 2),
                             headers={"Authorization": f"Bearer {api_key}"})
    direct: list[float] = []
    pipeline: list[float] = []
    # Where a /generate's time goes, per request (same clock: everything runs on this machine).
    segments: dict[str, list[float]] = {"to_model_call": [], "model_call": [], "after_call": [], "reply": []}
    failures = 0
    counter = iter(range(requests))

    async def one_pair(i: int) -> None:
        nonlocal failures
        prompt = f"{PROMPTS[i % len(PROMPTS)]} (#{i})"
        started = time.perf_counter()
        await direct_client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=64)
        direct.append((time.perf_counter() - started) * 1000)
        sent_at = datetime.now(UTC)
        started = time.perf_counter()
        response = await http.post(f"{api_url}/generate", json={"prompt": prompt, "max_tokens": 64})
        elapsed = (time.perf_counter() - started) * 1000
        received_at = datetime.now(UTC)
        body = response.json() if response.status_code == 200 else {}
        if body.get("status") != "ok":
            failures += 1
            return
        pipeline.append(elapsed)
        attempt = body["attempts"][-1]
        call_start = datetime.fromisoformat(body["attempts"][0]["started_at"])
        call_end = datetime.fromisoformat(attempt["started_at"]) + timedelta(milliseconds=attempt["latency_ms"])
        completed = datetime.fromisoformat(body["completed_at"])
        segments["to_model_call"].append((call_start - sent_at).total_seconds() * 1000)
        segments["model_call"].append(sum(a["latency_ms"] for a in body["attempts"]))
        segments["after_call"].append((completed - call_end).total_seconds() * 1000)
        segments["reply"].append((received_at - completed).total_seconds() * 1000)

    async def lane() -> None:
        for i in counter:
            await one_pair(i)

    # Warm-up: connections, the classifier, the first group assignment.
    for i in range(min(20, requests)):
        await one_pair(i)
    direct.clear()
    pipeline.clear()
    for samples in segments.values():
        samples.clear()
    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await http.aclose()
    await direct_client.close()
    d50, d99 = percentiles(direct)
    p50, p99 = percentiles(pipeline)
    return {"concurrency": concurrency, "requests": len(pipeline), "failures": failures, "wall_s": round(wall, 2),
            "direct_p50_ms": round(d50, 2), "direct_p99_ms": round(d99, 2),
            "pipeline_p50_ms": round(p50, 2), "pipeline_p99_ms": round(p99, 2),
            "added_p50_ms": round(p50 - d50, 2), "added_p99_ms": round(p99 - d99, 2),
            # Medians of: API + prompts topic + classify + route topic until the model call starts; the call
            # (SDK + stub); ladder bookkeeping until the completion; completions/reply topics + API.
            "median_segments_ms": {k: round(float(np.median(v)), 2) for k, v in segments.items() if v}}


async def throughput_phase(settings, prompts: int) -> dict:
    from core.messages import PromptMessage, new_request_id
    from stack.demo import produce_prompts

    messages = [PromptMessage(request_id=new_request_id(), prompt=f"{PROMPTS[i % len(PROMPTS)]} (#{i})",
                              max_tokens=64, metadata={"source": "bench"}) for i in range(prompts)]
    ids = [m.request_id for m in messages]
    started = time.perf_counter()
    await produce_prompts(settings, messages)
    produced_s = time.perf_counter() - started
    async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + max(120, prompts / 20)
        found = 0
        while time.monotonic() < deadline:
            cursor = await conn.execute("SELECT count(*), max(completed_at) FROM requests WHERE request_id = ANY(%s)",
                                        (ids,))
            found, _ = await cursor.fetchone()
            if found >= prompts:
                break
            await asyncio.sleep(0.1)
    total_s = time.perf_counter() - started
    return {"prompts": prompts, "recorded": found, "produce_s": round(produced_s, 2), "total_s": round(total_s, 2),
            "prompts_per_s": round(found / total_s, 1)}


def cpu_seconds_by_part(stack, data_root: Path) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each part of the stack, children included, and by this
    process (the load generator); worker processes are summed as one part. Needs psutil; empty without it."""
    def cpu_seconds(part: str, proc) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    totals: dict[str, float] = {}
    for part, seconds in read_stack_processes(stack, data_root, cpu_seconds):
        label = "worker" if part.startswith("worker") else part
        totals[label] = totals.get(label, 0.0) + seconds
    return totals


def idle_cpu_percent(stack, data_root: Path, seconds: float = 10.0) -> dict[str, float]:
    """Percent of one core each part of the stack burns with no traffic (consumers polling the broker,
    heartbeats), over ``seconds``; empty without psutil."""
    before = cpu_seconds_by_part(stack, data_root)
    time.sleep(seconds)
    after = cpu_seconds_by_part(stack, data_root)
    return {part: round(100 * (after[part] - before.get(part, 0.0)) / seconds, 2)
            for part in sorted(after) if part != "load generator"}


def start_profile(pid: int, seconds: int, out: Path) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return None
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--format", "raw",
                             "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="timed /generate calls per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--throughput", type=int, default=3000, help="prompts for the Kafka throughput phase")
    parser.add_argument("--workers", type=int, default=1, help="Faust worker processes")
    parser.add_argument("--model-latency-ms", type=float, default=0.0,
                        help="the stub answers every call after this long (1000: a realistic model)")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during the throughput phase")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    console = Console()
    results: dict = {"command": "python -m benchmarks.pipeline_bench " + " ".join(argv or sys.argv[1:]),
                     "machine": machine_line()}
    with benchmark_stack("router-bench", workers=args.workers, console=console) as bench:
        stack, data_root, stub_url, api_key = bench.stack, bench.data_root, bench.stub_url, bench.api_key
        model_id = bench.registry.ladder[0].provider_model_id
        if args.model_latency_ms:
            bench.set_stub_faults(delay_s=args.model_latency_ms / 1000)
        # Idle cost: what the stack burns with no traffic (consumers polling the broker, heartbeats).
        idle = idle_cpu_percent(stack, data_root)
        if idle:
            results["idle_cpu_percent"] = idle
            console.print({"idle_cpu_percent": idle})
        results["latency"] = []
        for concurrency in args.concurrency:
            row = asyncio.run(latency_phase(stack.api_url, api_key, stub_url, model_id, args.requests, concurrency))
            console.print(row)
            results["latency"].append(row)
        profiler = None
        if args.profile:
            worker = next(c for c in stack.children.members if c.name.startswith("worker"))
            profiler = start_profile(worker.process.pid, 20, data_root / "worker.pyspy.txt")
        cpu_before = cpu_seconds_by_part(stack, data_root)
        results["throughput"] = asyncio.run(throughput_phase(stack.settings, args.throughput))
        cpu_after = cpu_seconds_by_part(stack, data_root)
        if cpu_after:
            recorded = max(results["throughput"]["recorded"], 1)
            per_prompt = {part: round(1000 * (cpu_after[part] - cpu_before.get(part, 0.0)) / recorded, 3)
                          for part in sorted(cpu_after)}
            results["throughput"]["cpu_ms_per_prompt"] = per_prompt
            stack_ms = sum(v for k, v in per_prompt.items() if k != "load generator")
            results["throughput"]["cpu_ms_per_prompt_stack_total"] = round(stack_ms, 3)
            # What 2 dedicated cores could sustain at this CPU cost, if nothing else ran on them.
            results["throughput"]["cpu_bound_prompts_per_s_on_2_cores"] = round(2000 / stack_ms, 1) if stack_ms else None
        console.print(results["throughput"])
        if profiler is not None:
            profiler.wait(timeout=60)
            results["profile"] = str(data_root / "worker.pyspy.txt")
    report(results, console, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
