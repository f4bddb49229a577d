"""Replay pipeline throughput with the trained router against the seed heuristic, side by side in one run.

    .venv/bin/python -m benchmarks.replay_throughput [--data-dir DIR] [--prompts 1000] [--rounds 2] [--profile]

Starts two local stacks at once (each: Tansu, embedded Postgres, one Faust worker, the API; no dashboard), both
with the replay models of ``config/models.demo.yaml``: one routes with the seed heuristic, the other with the
replay demo's trained router (``stack.demo_router``: the artifact ``python -m stack`` trains at start, found in
or added to ``--data-root``'s cache). Then, in alternating rounds (heuristic, trained, heuristic, ...), the same
``--prompts`` outcomes prompts are produced straight to each stack's prompts topic; prompts/s = prompts / time
until the last one's row is in Postgres (classified, every model call of its ladder made and replayed, checked,
priced, sunk). The idle stack meanwhile only polls. Reported per router: prompts/s per round and their median,
model calls per prompt, and the ratio trained / heuristic (target: >= 0.8).

Replayed answers come at once (``ROUTER_REPLAY_LATENCY_SCALE=0``): this measures what the pipeline and the
router cost, not the latency model's simulated waiting. ``--profile`` records the trained stack's worker with
py-spy during its first round and prints the functions with the most samples.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg
from rich.console import Console

from benchmarks.bench_stack import machine_line, report

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_SAMPLE = 200  # the demo's default --sample: the trained artifact is the one the demo trains and caches


async def timed_round(settings, records, tag: str) -> dict:
    """Produce one prompt per record to the stack's prompts topic; wait until each has its row."""
    from core.messages import PromptMessage, new_request_id
    from stack.demo import produce_prompts

    messages = [PromptMessage(request_id=new_request_id(), prompt=r.prompt, max_tokens=4096,
                              metadata={"source": r.source, "item_id": r.id, "demo": "replay", "bench": tag})
                for r in records]
    ids = [m.request_id for m in messages]
    started = time.perf_counter()
    await produce_prompts(settings, messages)
    async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + max(300, len(ids) / 5)
        found = 0
        while time.monotonic() < deadline:
            cursor = await conn.execute("SELECT count(*) FROM requests WHERE request_id = ANY(%s)", (ids,))
            (found,) = await cursor.fetchone()
            if found >= len(ids):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        cursor = await conn.execute("SELECT count(*) FROM request_attempts WHERE request_id = ANY(%s)", (ids,))
        (calls,) = await cursor.fetchone()
    return {"prompts": len(ids), "recorded": found, "seconds": round(elapsed, 2),
            "prompts_per_s": round(found / elapsed, 1), "model_calls_per_prompt": round(calls / max(found, 1), 2)}


PROJECT_PACKAGES = ("routing/", "providers/", "classifier/", "stream_processors/agents", "stream_processors/call_log",
                    "stream_processors/context", "core/", "sql/")


def top_functions(raw_profile: Path, limit: int = 15) -> list[tuple[str, float]]:
    """The project's functions by share of py-spy samples with them on the stack (inclusive), highest first; the
    share of samples spent waiting in the event loop's select comes first, as ``(idle) select``."""
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in raw_profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        idle += int(count) if frames[-1].startswith("EpollSelector.select") else 0
        for function in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:  # a function, not its lines
            if any(package in function for package in PROJECT_PACKAGES):
                inclusive[function] += int(count)
    if not total:
        return []
    return [("(idle) select", round(idle / total, 3)),
            *((frame, round(count / total, 3)) for frame, count in inclusive.most_common(limit))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="the outcomes data (default ROUTER_DATA_DIR)")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / ".data",
                        help="where the demo caches its trained router (default .data/, as python -m stack)")
    parser.add_argument("--prompts", type=int, default=1000, help="prompts per round (the same ones each round)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per router, alternating")
    parser.add_argument("--warmup", type=int, default=50, help="untimed prompts per stack first")
    parser.add_argument("--profile", action="store_true", help="py-spy the trained stack's worker in its first round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    os.environ["ROUTER_MODELS_CONFIG"] = str(REPO_ROOT / "config" / "models.demo.yaml")
    os.environ["ROUTER_REPLAY_LATENCY_SCALE"] = "0"
    for name in ("ROUTER_STUB_URL", "ROUTER_CLASSIFIER_ARTIFACT", "ROUTER_PG_DSN", "PG_DSN"):
        os.environ.pop(name, None)

    from core.settings import get_settings
    from stack.demo import REPLAY_LADDER_SOURCES, ladder_records, replay_sample
    from stack.demo_router import DemoRouterTraining
    from stack.runner import LocalStack
    from stack.services import free_port
    from stream_processors.runtime import load_registry

    console = Console()
    get_settings.cache_clear()
    base = get_settings()
    data_dir = args.data_dir or base.data_dir
    if data_dir is None or not (Path(data_dir) / "outcomes").is_dir():
        parser.error("needs the outcomes data: set ROUTER_DATA_DIR or pass --data-dir")
    os.environ["ROUTER_DATA_DIR"] = str(Path(data_dir).resolve())
    get_settings.cache_clear()
    base = get_settings()
    registry = load_registry(base)
    records = ladder_records(Path(data_dir), registry)
    held_out = [r.id for r in replay_sample(Path(data_dir), registry, DEMO_SAMPLE, records=records)]
    router = DemoRouterTraining(registry, Path(data_dir), REPLAY_LADDER_SOURCES, held_out, args.data_root, console,
                                Path(tempfile.mkdtemp(prefix="router-replay-bench-logs-"))).start().wait()
    if router.artifact is None:
        raise SystemExit(f"no trained router: {router.note}")
    prompts = replay_sample(Path(data_dir), registry, args.prompts, seed=11, records=records)
    warmup = replay_sample(Path(data_dir), registry, args.warmup, seed=12, records=records)

    results: dict = {"command": "python -m benchmarks.replay_throughput " + " ".join(argv or sys.argv[1:]),
                     "machine": machine_line(),
                     "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                     "trained_router": router.label, "prompts": len(prompts), "rounds": {}}
    stacks: dict[str, LocalStack] = {}
    try:
        for name, artifact in (("heuristic", None), ("trained", router.artifact)):
            settings = base.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}", "api_port": free_port(),
                                               "pg_dsn": None, "classifier_artifact": None})
            console.rule(f"[bold]{name} stack")
            stacks[name] = LocalStack(settings, data_root=Path(tempfile.mkdtemp(prefix=f"router-replay-{name}-")),
                                      dashboard=False, console=console, router_ready=lambda a=artifact: a)
            stacks[name].start()
        for name, stack in stacks.items():
            asyncio.run(timed_round(stack.settings, warmup, f"warmup-{name}"))
        profiler = None
        for round_number in range(args.rounds):
            for name, stack in stacks.items():
                if args.profile and name == "trained" and round_number == 0:
                    worker = next(c for c in stack.children.members if c.name.startswith("worker"))
                    out = stack.data_root / "worker.pyspy.txt"
                    profiler = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker.process.pid),
                         "--duration", "30", "--format", "raw", "--output", str(out), "--nonblocking"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1)
                row = asyncio.run(timed_round(stack.settings, prompts, f"round-{round_number}-{name}"))
                console.print({"router": name, "round": round_number + 1, **row})
                results["rounds"].setdefault(name, []).append(row)
        if profiler is not None:
            profiler.wait(timeout=90)
            out = stacks["trained"].data_root / "worker.pyspy.txt"
            if out.is_file():
                results["profile_trained_worker_top"] = top_functions(out)
    finally:
        for stack in stacks.values():
            stack.stop()
    rates = {name: statistics.median(r["prompts_per_s"] for r in rows) for name, rows in results["rounds"].items()}
    results["median_prompts_per_s"] = rates
    if rates.get("heuristic"):
        results["trained_over_heuristic"] = round(rates.get("trained", 0.0) / rates["heuristic"], 3)
    report(results, console, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
