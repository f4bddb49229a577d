"""The demo: pushes prompts through the running stack (HTTP /generate and straight to Kafka) and prints
where each went and what it cost, from Postgres."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from core.messages import SIMULATED_TIME_KEY, PromptMessage, new_request_id
from core.outcomes import load_outcomes, outcome_files
from core.savings import SavingsTotals, format_delta_ci95, paired_delta_ci95, router_label
from core.settings import Settings
from sql.keys import create_key
from sql.repository import BILLED_BY_MODEL_SQL, savings_totals_columns
from stack.demo_router import DemoRouter
from stream_processors.runtime import load_registry

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


async def produce_prompts(settings: Settings, messages: list[PromptMessage]) -> None:
    """Produce prompts straight to the prompts topic, keyed by request id, as fast as the producer goes;
    returns once the broker has every one."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, acks="all",
                                linger_ms=5)
    await producer.start()
    try:
        sends = [await producer.send(settings.topic_prompts, key=m.request_id.encode(), value=m.to_bytes())
                 for m in messages]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _wait_for_rows(dsn: str, request_ids: list[str], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cursor = await conn.execute("SELECT count(*) FROM requests WHERE request_id = ANY(%s)", (request_ids,))
            (found,) = await cursor.fetchone()
            if found >= len(request_ids) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.25)


async def demo_key(settings: Settings, tenant: str = "demo") -> str:
    """A fresh API key for the demo's tenant, made the way ``python -m ingest.keys create`` makes one."""
    assert settings.pg_dsn
    async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
        key, _ = await create_key(conn, settings.api_key_pepper.get_secret_value(), tenant, name="local demo")
    return key


async def push_prompts(settings: Settings, api_url: str, prompts: list[str], console: Console,
                       api_key: str | None = None) -> DemoSummary:
    """Half the prompts through POST /generate (concurrently), half straight to the prompts topic."""
    summary = DemoSummary()
    via_http, via_kafka = prompts[0::2], prompts[1::2]  # both paths get easy and hard prompts
    api_key = api_key or await demo_key(settings)
    async with httpx.AsyncClient(timeout=settings.generate_timeout_s + 10,
                                 headers={"Authorization": f"Bearer {api_key}"}) as client:
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


async def summarize(settings: Settings, summary: DemoSummary, console: Console, timeout_s: float = 120,
                    demo_router: DemoRouter | None = None) -> None:
    assert settings.pg_dsn
    summary.recorded = await _wait_for_rows(settings.pg_dsn, summary.request_ids, timeout_s)
    async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT coalesce(final_model, '(failed)'), difficulty, count(*), sum(cost_micro_usd)::bigint,"
            " sum(coalesce(counterfactual_cost_micro_usd, cost_micro_usd))::bigint"
            " FROM requests WHERE request_id = ANY(%s) GROUP BY 1, 2 ORDER BY 1, 2", (summary.request_ids,))
        rows = await cursor.fetchall()
    table = Table(title=f"{summary.recorded}/{len(summary.request_ids)} demo requests recorded in Postgres "
                        "(all-expensive: the expensive model's cost for the same prompt and answer)")
    for column in ("model", "difficulty", "requests", "cost USD", "all-expensive USD"):
        table.add_column(column, justify="right" if column not in ("model", "difficulty") else "left")
    for model, difficulty, count, cost, counterfactual in rows:
        table.add_row(model, difficulty, str(count), f"{cost / 1e6:.6f}", f"{counterfactual / 1e6:.6f}")
        summary.by_model[model] = summary.by_model.get(model, 0) + count
        summary.cost_micro_usd += int(cost)
        summary.counterfactual_micro_usd += int(counterfactual)
    console.print(table)
    async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
        router, savings = await read_savings(conn, summary.request_ids, demo_router)
    if savings.savings_ratio is not None:
        # Stub answers have no grade: the line says so ("ungraded") rather than showing an accuracy.
        console.print(f"[bold]{savings.line(router, 'the expensive model')}{router_note(demo_router)}[/bold]")


async def run_demo(settings: Settings, api_url: str, *, console: Console | None = None,
                   limit: int | None = None, api_key: str | None = None,
                   demo_router: DemoRouter | None = None) -> DemoSummary:
    """Push the demo prompts through the running stack and print a summary read back from Postgres."""
    console = console or Console()
    prompts = list(DEMO_PROMPTS)
    if limit is not None:
        prompts = [prompts[i % len(prompts)] for i in range(limit)]
    summary = await push_prompts(settings, api_url, prompts, console, api_key)
    await summarize(settings, summary, console, demo_router=demo_router)
    if summary.recorded < len(summary.request_ids):
        raise RuntimeError(f"only {summary.recorded} of {len(summary.request_ids)} demo requests reached Postgres")
    return summary


# --- Replay demo: real prompts and real recorded answers, no keys, no internet -------------------------

REPLAY_LADDER_SOURCES = ("gsm8k", "math-l5", "crux")  # sources answered by all three demo ladder models


@dataclass
class ReplaySummary:
    sent: int
    recorded: int
    by_model: dict[str, int]  # requests per answering model
    billed_by_model: dict[str, int]  # micro-USD per billed model, attempt by attempt
    escalated: int
    fell_back: int
    baseline_model: str
    router: str
    savings: SavingsTotals
    delta_ci95: tuple[float, float] | None = None  # the accuracy delta's 95 % interval on the graded requests

    @property
    def spend_micro_usd(self) -> int:
        return self.savings.spend_micro_usd

    @property
    def savings_pct(self) -> float:
        ratio = self.savings.savings_ratio
        return 100.0 * ratio if ratio is not None else 0.0


def name_router(classifier: str | None, router_version: str | None, demo_router: DemoRouter | None = None) -> str:
    """How the savings line names the router of these rows: the demo's own label for the router it trained
    (trained, on how many prompts), else ``core.savings.router_label``."""
    if demo_router is not None and demo_router.version is not None and router_version == demo_router.version:
        return demo_router.label
    return router_label(classifier, router_version)


def router_note(demo_router: DemoRouter | None) -> str:
    """The savings line's suffix when the demo could not route with a trained router: what was missing."""
    return f" [no trained router: {demo_router.note}]" if demo_router is not None and demo_router.note else ""


async def read_savings(conn: psycopg.AsyncConnection, request_ids: list[str],
                       demo_router: DemoRouter | None = None) -> tuple[str, SavingsTotals]:
    """The savings of these requests by the one definition (core/savings.py), and the router(s) that decided."""
    cursor = await conn.execute(
        f"SELECT r.classifier, r.router_version, {savings_totals_columns()} FROM requests r"
        " WHERE r.request_id = ANY(%s) GROUP BY 1, 2 ORDER BY 1, 2", (request_ids,))
    columns = [c.name for c in cursor.description]
    rows = [dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()]
    parts = [SavingsTotals.from_row(row) for row in rows]
    total = SavingsTotals(**{name: sum(getattr(p, name) for p in parts)
                             for name in SavingsTotals.__dataclass_fields__})
    return " + ".join(name_router(r["classifier"], r["router_version"], demo_router) for r in rows) or "no router", total


EARLY_LINE_SHARE = 0.9  # the replay demo prints a partial savings line once this share of requests is recorded


async def recorded_ids(conn: psycopg.AsyncConnection, request_ids: list[str]) -> list[str]:
    cursor = await conn.execute("SELECT request_id FROM requests WHERE request_id = ANY(%s)", (request_ids,))
    return [row[0] for row in await cursor.fetchall()]


async def read_delta_ci95(conn: psycopg.AsyncConnection, request_ids: list[str],
                          savings: SavingsTotals) -> tuple[float, float] | None:
    """The 95 % interval of the accuracy delta on these requests' graded pairs (``core.savings.paired_delta_ci95``)."""
    cursor = await conn.execute(
        "SELECT count(*) FILTER (WHERE r.correct IS NOT NULL AND r.counterfactual_correct IS NOT NULL"
        " AND r.correct <> r.counterfactual_correct) FROM requests r WHERE r.request_id = ANY(%s)", (request_ids,))
    (discordant,) = await cursor.fetchone()
    return paired_delta_ci95(savings.graded, savings.accuracy_delta, int(discordant))


def ladder_records(data_dir, registry):
    """The outcomes records (of the replayed sources) that every ladder model has an answer for."""
    files = [f for f in outcome_files([data_dir / "outcomes"]) if f.name.split(".")[0] in REPLAY_LADDER_SOURCES]
    ids = [m.provider_model_id for m in registry.models]
    records = [r for r in load_outcomes(files) if all(i in r.outcomes for i in ids)]
    if not records:
        raise RuntimeError(f"no outcomes under {data_dir}/outcomes answered by all of {ids}")
    return records


def replay_sample(data_dir, registry, sample: int, seed: int = 7, records=None):
    """A seeded random sample of outcomes records that every ladder model has an answer for."""
    records = list(records if records is not None else ladder_records(data_dir, registry))
    random.Random(seed).shuffle(records)
    return records[:sample]


def simulated_times(count: int, days: int, seed: int = 7) -> list[datetime]:
    """``count`` timestamps spread uniformly over the last ``days`` days, oldest first."""
    now = datetime.now(UTC)
    rng = random.Random(seed)
    return sorted(now - timedelta(seconds=rng.uniform(0, days * 86_400)) for _ in range(count))


async def run_replay_demo(settings: Settings, *, console: Console | None = None, sample: int = 200,
                          seed: int = 7, timeout_s: float = 300, simulate_days: int = 0,
                          demo_router: DemoRouter | None = None) -> ReplaySummary:
    """Stream a sample of outcomes prompts through the running stack (replay providers answer with the real
    recorded responses and token counts), then print spend, accuracy and savings vs always-expensive from Postgres."""
    console = console or Console()
    if settings.data_dir is None:
        raise RuntimeError("the replay demo needs the outcomes data: set ROUTER_DATA_DIR or pass --data-dir")
    registry = load_registry(settings)
    records = replay_sample(settings.data_dir, registry, sample, seed)
    shape = (f"the pool {', '.join(m.name for m in registry.models)}" if registry.pool
             else f"the ladder {' → '.join(m.name for m in registry.ladder)}")
    console.print(f"replaying {len(records)} outcomes prompts ({', '.join(REPLAY_LADDER_SOURCES)}) on {shape}")

    messages = [PromptMessage(request_id=new_request_id(), prompt=record.prompt, max_tokens=4096,
                              metadata={"source": record.source, "item_id": record.id, "demo": "replay"})
                for record in records]
    if simulate_days:
        # Trend views need time: the sample's timestamps are spread over simulated past days, and say so.
        for message, at in zip(messages, simulated_times(len(messages), simulate_days, seed), strict=True):
            message.created_at = at
            message.metadata[SIMULATED_TIME_KEY] = "true"
        console.print(f"[yellow]timestamps simulated:[/yellow] spread over the last {simulate_days} days "
                      "(labelled simulated on the dashboard)")
    request_ids = [m.request_id for m in messages]
    await produce_prompts(settings, messages)

    assert settings.pg_dsn
    deadline = time.monotonic() + timeout_s
    early_at = int(EARLY_LINE_SHARE * len(request_ids))
    with tqdm(total=len(request_ids), desc="recorded in Postgres", unit="req") as progress:
        async with await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True) as conn:
            while True:
                cursor = await conn.execute("SELECT count(*) FROM requests WHERE request_id = ANY(%s)",
                                            (request_ids,))
                (found,) = await cursor.fetchone()
                progress.update(found - progress.n)
                if found >= len(request_ids) or time.monotonic() > deadline:
                    break
                if early_at and found >= early_at:
                    # The last few answers are the longest (the latency model): the line on what is recorded
                    # comes now, marked as partial; the final line follows on every request.
                    early_at = 0
                    done = await recorded_ids(conn, request_ids)
                    router, partial = await read_savings(conn, done, demo_router)
                    ci = await read_delta_ci95(conn, done, partial)
                    progress.write(f"so far, {len(done)} of {len(request_ids)} recorded (the longest answers still to come): "
                                   f"{partial.line(router, registry.counterfactual_model.name)}"
                                   f"{format_delta_ci95(ci)}{router_note(demo_router)}")
                await asyncio.sleep(0.25)
            cursor = await conn.execute(
                "SELECT coalesce(r.final_model, '(failed)'), count(*), sum(r.cost_micro_usd)::bigint,"
                " count(*) FILTER (WHERE r.correct), count(r.correct),"
                " count(*) FILTER (WHERE r.escalated), count(*) FILTER (WHERE r.fell_back)"
                " FROM requests r WHERE r.request_id = ANY(%s) GROUP BY 1 ORDER BY 1", (request_ids,))
            rows = await cursor.fetchall()
            cursor = await conn.execute(BILLED_BY_MODEL_SQL, {"ids": request_ids})
            billed = await cursor.fetchall()
            router, savings = await read_savings(conn, request_ids, demo_router)
            delta_ci95 = await read_delta_ci95(conn, request_ids, savings)

    expensive = registry.counterfactual_model
    summary = ReplaySummary(
        sent=len(records), recorded=sum(r[1] for r in rows), by_model={r[0]: r[1] for r in rows},
        billed_by_model={model: int(cost) for model, _, cost in billed},
        escalated=sum(r[5] for r in rows), fell_back=sum(r[6] for r in rows), baseline_model=expensive.name,
        router=router, savings=savings, delta_ci95=delta_ci95)

    table = Table(title=f"replay demo: {summary.recorded}/{summary.sent} requests recorded in Postgres")
    for column in ("answered by", "requests", "correct"):
        table.add_column(column, justify="left" if column == "answered by" else "right")
    for model, count, _, correct, graded, _, _ in rows:
        table.add_row(model, str(count), f"{correct}/{graded}")
    console.print(table)
    billed_table = Table(title="spend by billed model (attempt by attempt)")
    for column in ("model", "calls", "spend USD"):
        billed_table.add_column(column, justify="left" if column == "model" else "right")
    for model, calls, cost in billed:
        billed_table.add_row(model, str(calls), f"{int(cost) / 1e6:.6f}")
    billed_table.add_row("total", str(sum(c for _, c, _ in billed)), f"{savings.spend_micro_usd / 1e6:.6f}")
    console.print(billed_table)
    console.print(f"router:           spend {savings.spend_micro_usd / 1e6:.6f} USD, accuracy "
                  f"{(savings.accuracy or 0):.1%} ({savings.correct}/{savings.graded}); {summary.escalated} "
                  f"escalated, {summary.fell_back} fell back; escalation overhead "
                  f"{savings.overhead_micro_usd / 1e6:.6f} USD")
    console.print(f"always {expensive.name}: spend {savings.baseline_micro_usd / 1e6:.6f} USD, accuracy "
                  f"{(savings.baseline_accuracy or 0):.1%} ({savings.baseline_correct}/{savings.graded})")
    console.print(f"[bold]{savings.line(router, expensive.name)}{format_delta_ci95(delta_ci95)}"
                  f"{router_note(demo_router)}[/bold]")
    if summary.recorded < summary.sent:
        raise RuntimeError(f"only {summary.recorded} of {summary.sent} replayed requests reached Postgres")
    return summary
