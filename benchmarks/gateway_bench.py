"""What the OpenAI-compatible gateway adds, side by side in one run against direct calls to the same stub.

    .venv/bin/python -m benchmarks.gateway_bench [--requests 200] [--concurrency 1 32] [--token-delay-ms 10]

Starts the local stack (Tansu, Postgres, the stub, a Faust worker, the API; no dashboard) with
``config/models.local.yaml``, then per concurrency level runs ``--requests`` rounds per lane, each round making
these calls one after the other, so every kind sees the same machine load:

1. *direct*: the openai SDK calling the stub's cheap model (non-streaming);
2. *generate*: POST /generate through the pipeline (API -> Kafka -> classify -> provider agent -> stub -> reply);
3. *gateway*: POST /v1/chat/completions with ``model="router"`` (the same pipeline), from the same HTTP client as
   /generate;
4. *direct stream*: the SDK streaming from the stub's cheap model: time to its first content token;
5. *gateway stream*: the SDK streaming from the gateway with the cheap model requested directly (tokens stream
   live through the reply topic): time to its first content token.

The stub pauses ``--token-delay-ms`` between streamed tokens (a model generating). Reported: p50/p99 per kind,
the gateway's added latency over direct and over /generate (non-streaming), and the added time to first token.
Targets (issue 17): added TTFT p50 <= 30 ms at 1 concurrent; non-streaming within 5 ms of /generate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from openai import AsyncOpenAI
from rich.console import Console

from benchmarks.bench_stack import benchmark_stack, machine_line, report

PROMPTS = (
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "Name three primary colors.",
    "What is 12 times 12?",
)

KINDS = ("direct", "generate", "gateway", "direct_stream_ttft", "gateway_stream_ttft")


def pct(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)), 2)


async def first_token_ms(client: AsyncOpenAI, model: str, prompt: str) -> float:
    started = time.perf_counter()
    first = None
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=64, stream=True)
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = (time.perf_counter() - started) * 1000
    if first is None:
        raise RuntimeError("stream without content")
    return first


async def latency_phase(api_url: str, api_key: str, stub_url: str, cheap_name: str, cheap_id: str, requests: int,
                        concurrency: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency * 2)
    direct = AsyncOpenAI(base_url=stub_url, api_key="unused", max_retries=0, timeout=60,
                         http_client=httpx.AsyncClient(limits=limits))
    gateway = AsyncOpenAI(base_url=f"{api_url}/v1", api_key=api_key,
                          max_retries=0, timeout=60, http_client=httpx.AsyncClient(limits=limits))
    http = httpx.AsyncClient(timeout=60, limits=limits)
    auth = {"Authorization": f"Bearer {api_key}"}
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    failures = 0
    first_errors: dict[str, str] = {}

    async def timed(kind: str, call) -> None:
        nonlocal failures
        started = time.perf_counter()
        try:
            result = await call
        except Exception as error:  # noqa: BLE001 - counted and reported, the run goes on
            failures += 1
            first_errors.setdefault(kind, repr(error)[:300])
            return
        samples[kind].append(result if kind.endswith("ttft") else (time.perf_counter() - started) * 1000)

    async def generate(prompt: str) -> None:
        response = await http.post(f"{api_url}/generate", headers=auth, json={"prompt": prompt, "max_tokens": 64})
        if response.status_code != 200:
            raise RuntimeError(response.text)

    async def chat(messages: list[dict]) -> None:
        # The same HTTP client as /generate, so the difference is the server's.
        response = await http.post(f"{api_url}/v1/chat/completions", headers=auth,
                                   json={"model": "router", "messages": messages, "max_tokens": 64})
        if response.status_code != 200:
            raise RuntimeError(response.text)

    async def one_round(i: int) -> None:
        prompt = f"{PROMPTS[i % len(PROMPTS)]} (#{i})"
        messages = [{"role": "user", "content": prompt}]
        await timed("direct", direct.chat.completions.create(model=cheap_id, messages=messages, max_tokens=64))
        await timed("generate", generate(prompt))
        await timed("gateway", chat(messages))
        await timed("direct_stream_ttft", first_token_ms(direct, cheap_id, prompt))
        await timed("gateway_stream_ttft", first_token_ms(gateway, cheap_name, prompt))

    counter = iter(range(requests))

    async def lane() -> None:
        for i in counter:
            await one_round(i)

    for i in range(min(10, requests)):  # warm-up: connections, the classifier, the first group assignment
        await one_round(i)
    for values in samples.values():
        values.clear()
    failures = 0
    first_errors.clear()
    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await http.aclose()
    await direct.close()
    await gateway.close()
    row: dict = {"concurrency": concurrency, "rounds": requests, "failures": failures, "wall_s": round(wall, 1)}
    row["first_errors"] = first_errors
    for kind, values in samples.items():
        if not values:
            raise RuntimeError(f"every {kind} call failed at concurrency {concurrency}: {first_errors.get(kind)}")
        row[f"{kind}_p50_ms"], row[f"{kind}_p99_ms"] = pct(values, 50), pct(values, 99)
    for q in ("p50", "p99"):
        row[f"gateway_added_over_direct_{q}_ms"] = round(row[f"gateway_{q}_ms"] - row[f"direct_{q}_ms"], 2)
        row[f"gateway_minus_generate_{q}_ms"] = round(row[f"gateway_{q}_ms"] - row[f"generate_{q}_ms"], 2)
        row[f"added_ttft_{q}_ms"] = round(row[f"gateway_stream_ttft_{q}_ms"] - row[f"direct_stream_ttft_{q}_ms"], 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="timed rounds per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--token-delay-ms", type=float, default=10.0, help="stub pause between streamed tokens")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    console = Console()
    results: dict = {"command": "python -m benchmarks.gateway_bench " + " ".join(argv or sys.argv[1:]),
                     "machine": machine_line()}
    with benchmark_stack("router-gateway-bench", console=console) as bench:
        registry, stub_url, api_key = bench.registry, bench.stub_url, bench.api_key
        cheap = registry.ladder[0]
        bench.set_stub_faults(token_delay_s=args.token_delay_ms / 1000)
        results["latency"] = []
        for concurrency in args.concurrency:
            row = asyncio.run(latency_phase(bench.stack.api_url, api_key, stub_url, cheap.name,
                                            cheap.provider_model_id, args.requests, concurrency))
            console.print(row)
            results["latency"].append(row)
    report(results, console, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
