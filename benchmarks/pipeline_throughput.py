"""End-to-end throughput of the streaming pipeline on the local stack.

Starts the local stack (Tansu, Postgres, stub models, N Faust workers, API), produces N prompts straight to
the prompts topic as fast as the producer goes, and measures until every one is a row in Postgres.

    python -m benchmarks.pipeline_throughput --prompts 3000 --workers 1

Prints prompts/s end to end and the per-request latency (created_at -> completed_at) percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import psutil
import psycopg
from aiokafka import AIOKafkaProducer
from rich.console import Console

from core.messages import PromptMessage
from core.settings import PROJECT_ROOT, get_settings
from stack.demo import DEMO_PROMPTS
from stack.runner import LocalStack


async def produce(bootstrap: str, topic: str, messages: list[PromptMessage]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        deliveries = [await producer.send(topic, key=m.request_id.encode(), value=m.to_bytes()) for m in messages]
        await asyncio.gather(*deliveries)
        return time.perf_counter() - started
    finally:
        await producer.stop()


def count_rows(dsn: str, tag: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM requests WHERE metadata->>'run' = %s", (tag,)).fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--data-root", type=Path, default=PROJECT_ROOT / ".data" / "bench")
    args = parser.parse_args(argv)
    console = Console()
    stack = LocalStack(get_settings(), data_root=args.data_root, workers=args.workers, dashboard=False,
                       console=console)
    try:
        stack.start()
        settings = stack.settings
        tag = f"bench-{int(time.time())}"
        messages = [PromptMessage(prompt=f"{DEMO_PROMPTS[i % len(DEMO_PROMPTS)]} (#{i})", max_tokens=128,
                                  metadata={"run": tag}) for i in range(args.prompts)]
        started = time.perf_counter()
        produce_s = asyncio.run(produce(settings.kafka_bootstrap, settings.topic_prompts, messages))
        console.print(f"produced {args.prompts} prompts in {produce_s:.2f}s")
        done = 0
        while done < args.prompts and time.perf_counter() - started < args.timeout_s:
            time.sleep(0.5)
            done = count_rows(settings.pg_dsn, tag)
            stack.check_children()
        elapsed = time.perf_counter() - started
        with psycopg.connect(settings.pg_dsn) as conn:
            p50, p95, p99 = conn.execute(
                "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
                " (ORDER BY extract(epoch FROM completed_at - created_at) * 1000)"
                " FROM requests WHERE metadata->>'run' = %s", (tag,)).fetchone()[0]
        cpu_s = {}
        for managed in stack.children.members:
            times = psutil.Process(managed.process.pid).cpu_times()
            cpu_s[managed.name] = round(times.user + times.system, 1)
        result = {"cpu_seconds_by_process": cpu_s, "prompts": args.prompts, "recorded": done, "workers": args.workers,
                  "seconds": round(elapsed, 2), "prompts_per_s": round(done / elapsed, 1),
                  "latency_ms_p50": round(p50), "latency_ms_p95": round(p95), "latency_ms_p99": round(p99)}
        console.print_json(json.dumps(result))
        return 0 if done == args.prompts else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
