"""The demo: pushes prompts through the running stack (HTTP /generate and straight to Kafka) and prints
where each went and what it cost, from Postgres."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import psycopg
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from core.messages import PromptMessage, new_request_id
from core.settings import Settings

# Embedded defaults: a spread of easy lookups, everyday tasks and hard multi-step work.
DEMO_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Name three primary colors.",
    "Give me a synonym for 'happy'.",
    "Who wrote Pride and Prejudice?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Write a polite email declining a meeting invitation for Thursday.",
    "Explain the difference between a list and a tuple in Python, with an example of each.",
    "Compare renting and buying a home for a young professional, listing three pros and cons of each.",
    "Explain step by step how to compute the derivative of x^2 * sin(x).",
    "Write a SQL query that returns the top 5 customers by total order value in the last 30 days.",
    "Prove that the square root of 2 is irrational, and explain each step of the argument.",
    "Design a rate limiter for a distributed API gateway: compare token bucket and sliding window, discuss "
    "consistency across nodes, failure modes, and give pseudocode for the approach you recommend.",
    "Analyze the trade-offs between optimistic and pessimistic concurrency control in a multi-region "
    "database, derive the conditions under which each minimizes latency, and propose a hybrid scheme.",
    "Write a Python function that finds the longest palindromic substring in O(n) time using Manacher's "
    "algorithm, then prove its time complexity and explain each step of the implementation.",
)


@dataclass
class DemoSummary:
    sent_http: int = 0
    sent_kafka: int = 0
    recorded: int = 0
    request_ids: list[str] = field(default_factory=list)
    cost_micro_usd: int = 0
    counterfactual_micro_usd: int = 0
    by_model: dict[str, int] = field(default_factory=dict)

    @property
    def savings_pct(self) -> float | None:
        if not self.counterfactual_micro_usd:
            return None
        return 100.0 * (1 - self.cost_micro_usd / self.counterfactual_micro_usd)


async def _generate(client: httpx.AsyncClient, api_url: str, prompt: str, console: Console) -> str | None:
    response = await client.post(f"{api_url}/generate", json={"prompt": prompt, "max_tokens": 256})
    body = response.json()
    if response.status_code != 200:
        console.print(f"[yellow]/generate {response.status_code}[/yellow] {body}")
        return body.get("request_id")
    console.print(f"[cyan]http [/cyan] {body['difficulty']:<7} → [bold]{body['model']:<12}[/bold] "
                  f"{body['cost_micro_usd'] / 1e6:>10.6f} USD  {prompt[:60]!r}")
    return body["request_id"]


async def _wait_for_rows(dsn: str, request_ids: list[str], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cursor = await conn.execute("SELECT count(*) FROM requests WHERE request_id = ANY(%s)", (request_ids,))
            (found,) = await cursor.fetchone()
            if found >= len(request_ids) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.25)


async def push_prompts(settings: Settings, api_url: str, prompts: list[str], console: Console) -> DemoSummary:
    """Half the prompts through POST /generate (concurrently), half straight to the prompts topic."""
    summary = DemoSummary()
    via_http, via_kafka = prompts[0::2], prompts[1::2]  # both paths get easy and hard prompts
    async with httpx.AsyncClient(timeout=settings.generate_timeout_s + 10) as client:
        ids = await asyncio.gather(*(_generate(client, api_url, p, console) for p in via_http))
    summary.request_ids += [i for i in ids if i]
    summary.sent_http = len(via_http)

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for prompt in via_kafka:
            message = PromptMessage(request_id=new_request_id(), prompt=prompt, max_tokens=256,
                                    metadata={"source": "demo-kafka"})
            await producer.send_and_wait(settings.topic_prompts, key=message.request_id.encode(),
                                         value=message.to_bytes())
            summary.request_ids.append(message.request_id)
    finally:
        await producer.stop()
    summary.sent_kafka = len(via_kafka)
    console.print(f"[cyan]kafka[/cyan] produced {len(via_kafka)} prompts straight to topic "
                  f"{settings.topic_prompts!r}")
    return summary


async def summarize(settings: Settings, summary: DemoSummary, console: Console, timeout_s: float = 120) -> None:
    assert settings.pg_dsn
    summary.recorded = await _wait_for_rows(settings.pg_dsn, summary.request_ids, timeout_s)
    async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT coalesce(final_model, '(failed)'), difficulty, count(*), sum(cost_micro_usd)::bigint,"
            " sum(coalesce(counterfactual_cost_micro_usd, cost_micro_usd))::bigint"
            " FROM requests WHERE request_id = ANY(%s) GROUP BY 1, 2 ORDER BY 1, 2", (summary.request_ids,))
        rows = await cursor.fetchall()
    table = Table(title=f"{summary.recorded}/{len(summary.request_ids)} demo requests recorded in Postgres")
    for column in ("model", "difficulty", "requests", "cost USD", "all-expensive USD"):
        table.add_column(column, justify="right" if column not in ("model", "difficulty") else "left")
    for model, difficulty, count, cost, counterfactual in rows:
        table.add_row(model, difficulty, str(count), f"{cost / 1e6:.6f}", f"{counterfactual / 1e6:.6f}")
        summary.by_model[model] = summary.by_model.get(model, 0) + count
        summary.cost_micro_usd += int(cost)
        summary.counterfactual_micro_usd += int(counterfactual)
    console.print(table)
    if summary.savings_pct is not None:
        console.print(f"spend {summary.cost_micro_usd / 1e6:.6f} USD vs {summary.counterfactual_micro_usd / 1e6:.6f} "
                      f"USD if every request went to the expensive model: [bold]{summary.savings_pct:.1f}% saved"
                      f"[/bold]")


async def run_demo(settings: Settings, api_url: str, *, console: Console | None = None,
                   limit: int | None = None) -> DemoSummary:
    """Push the demo prompts through the running stack and print a summary read back from Postgres."""
    console = console or Console()
    prompts = list(DEMO_PROMPTS)
    if limit is not None:
        prompts = [prompts[i % len(prompts)] for i in range(limit)]
    summary = await push_prompts(settings, api_url, prompts, console)
    await summarize(settings, summary, console)
    if summary.recorded < len(summary.request_ids):
        raise RuntimeError(f"only {summary.recorded} of {len(summary.request_ids)} demo requests reached Postgres")
    return summary
