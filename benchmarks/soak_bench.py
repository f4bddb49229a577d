"""Sustained load through the Kafka path, side by side with a bare aiokafka produce-consume of the same messages.

    .venv/bin/python -m benchmarks.soak_bench --minutes 10 --rate 300 [--workers 1] [--baseline-seconds 30]
                                              [--drain-minutes 10] [--json PATH]

Starts the local stack (Tansu, embedded Postgres, the stub models, Faust worker(s), the API; no dashboard) with
``config/models.local.yaml``, then in one run:

1. Baseline: the same serialized PromptMessage bytes produced to a topic of their own (``bench.baseline``, as many
   partitions as the prompts topic) on the same broker, and consumed by a bare aiokafka consumer in this process;
   once paced at ``--rate`` and once flat out, ``--baseline-seconds`` each. Reported: produced/s, consumed/s, and
   the CPU ms per message of the broker and of this process (the producer and the consumer).
2. Soak: prompts produced straight to the prompts topic at ``--rate`` per second (a batch every 100 ms) for
   ``--minutes``; every 10 s the rows in Postgres and the memory of every stack process are sampled. When the
   pipeline is slower than the offered rate the backlog waits in the broker; after the offer ends the run waits up
   to ``--drain-minutes`` for it to drain, then counts: produced vs recorded, duplicates, failed/expired rows,
   requests whose model was called on more than one delivery, parked requests and dead letters.
3. Report: sustained prompts/s (over the offer window and over offer + drain), recorded prompts per minute, CPU ms
   per prompt by part next to the baseline's CPU ms per message, memory at start / after the first minute / at the
   end per process with its least-squares slope after the first minute (MB per minute).

Memory is RSS per process tree; Postgres is a group of processes sharing its buffers, so its figure is the sum of
their PSS (each shared page counted once). Tansu runs its memory engine: its memory holds the whole log, so it grows
with every message produced; that is the broker's storage, not a leak.
The issue's target is >= 300 prompts/s for 10 minutes on 2 cores with nothing lost and flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import psutil
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

from benchmarks.bench_stack import benchmark_stack, machine_line, read_stack_processes, report
from benchmarks.pipeline_bench import PROMPTS, cpu_seconds_by_part, idle_cpu_percent

BASELINE_TOPIC = "bench.baseline"
TICK_S = 0.1  # the producer sends one batch per tick, so the offered rate is steady at this resolution
SAMPLE_S = 10.0
# The pipeline counts as idle (a shortfall is then lost, not queued) once no row arrived for this long.
IDLE_AFTER_S = 60.0
FLAT_OUT_MAX_MESSAGES = 100_000
IDLE_S = 10.0


def prompt_message(run: str, seq: int, source: str):
    from core.messages import PromptMessage

    return PromptMessage(request_id=f"{run}-{seq:08d}", prompt=f"{PROMPTS[seq % len(PROMPTS)]} (#{seq})",
                         max_tokens=64, metadata={"source": source})


# --- Memory ------------------------------------------------------------------------------------------------

def memory_mb_by_part(stack, data_root: Path) -> dict[str, float]:
    """MB of memory held now by each part of the stack (RSS of its process tree; PSS summed for Postgres, whose
    backends share their buffers) and by this process (the load generator)."""
    def held_bytes(part: str, proc) -> float:
        return proc.memory_full_info().pss if part == "postgres" else proc.memory_info().rss

    totals: dict[str, float] = {}
    for part, held in read_stack_processes(stack, data_root, held_bytes):
        totals[part] = totals.get(part, 0.0) + held / 2**20
    return {part: round(mb, 1) for part, mb in totals.items()}


def memory_summary(samples: list[dict]) -> dict[str, dict]:
    """Per part: MB at start, after the first minute, at the end, and the least-squares slope in MB per minute
    over the samples from the first minute on (all samples when the run is shorter)."""
    parts = sorted({part for s in samples for part in s["memory_mb"]})
    first_minute = next((s for s in samples if s["t_s"] >= 60), samples[-1])
    summary = {}
    for part in parts:
        points = [(s["t_s"], s["memory_mb"][part]) for s in samples if part in s["memory_mb"]]
        late = [p for p in points if p[0] >= 60]
        fit = late if len(late) >= 3 else points
        slope = float(np.polyfit([t / 60 for t, _ in fit], [mb for _, mb in fit], 1)[0]) if len(fit) >= 2 else 0.0
        summary[part] = {"start_mb": points[0][1], "after_1_min_mb": first_minute["memory_mb"].get(part),
                         "end_mb": points[-1][1], "slope_mb_per_min": round(slope, 2)}
    return summary


async def paced_batches(rate: float, seconds: float) -> AsyncIterator[int]:
    """How many messages to send at each tick (every ``TICK_S``) to offer ``rate`` per second, steadily, for
    ``seconds``; the caller sends each batch before asking for the next."""
    started = time.perf_counter()
    owed = 0.0
    tick = 0
    while time.perf_counter() - started < seconds:
        owed += rate * TICK_S
        batch = int(owed)
        owed -= batch
        yield batch
        tick += 1
        await asyncio.sleep(max(0.0, started + tick * TICK_S - time.perf_counter()))


# --- Baseline: bare aiokafka ---------------------------------------------------------------------------------

async def create_baseline_topic(settings) -> None:
    from core.topics import TopicSpec, create_topics

    await create_topics(settings.kafka_bootstrap, [TopicSpec(BASELINE_TOPIC, settings.prompts_partitions)])


async def baseline_run(settings, payloads: list[tuple[bytes, bytes]], seconds: float, rate: float | None) -> dict:
    """Produce ``payloads`` round-robin to the baseline topic for ``seconds`` (paced at ``rate``/s, or flat out when
    ``rate`` is None) while a consumer in this process reads them back; returns the counts and times."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="latest")
    await consumer.start()
    partitions = [TopicPartition(BASELINE_TOPIC, p) for p in range(settings.prompts_partitions)]
    consumer.assign(partitions)
    # Start after what earlier runs left in the topic: read the current end by position, not from the broker's
    # "latest" answer (which Tansu gets wrong), by seeking to the beginning and counting what is there.
    await consumer.seek_to_beginning(*partitions)
    while await consumer.getmany(timeout_ms=500, max_records=10_000):
        pass
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, acks="all",
                                linger_ms=5)
    await producer.start()
    consumed = 0
    last_consumed_at = time.perf_counter()
    stop_consuming = asyncio.Event()

    async def consume() -> None:
        nonlocal consumed, last_consumed_at
        while not stop_consuming.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            got = sum(len(records) for records in batches.values())
            if got:
                consumed += got
                last_consumed_at = time.perf_counter()

    reader = asyncio.create_task(consume())
    produced = 0
    started = time.perf_counter()
    try:
        if rate is None:
            # Capped, so the broker's in-memory log does not start the soak holding millions of baseline messages.
            while time.perf_counter() - started < seconds and produced < FLAT_OUT_MAX_MESSAGES:
                sends = [await producer.send(BASELINE_TOPIC, key=k, value=v)
                         for k, v in (payloads[(produced + i) % len(payloads)] for i in range(500))]
                await asyncio.gather(*sends)
                produced += len(sends)
        else:
            async for batch in paced_batches(rate, seconds):
                sends = [await producer.send(BASELINE_TOPIC, key=k, value=v)
                         for k, v in (payloads[(produced + i) % len(payloads)] for i in range(batch))]
                await asyncio.gather(*sends)
                produced += batch
        produce_s = time.perf_counter() - started
        deadline = time.monotonic() + 60
        while consumed < produced and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop_consuming.set()
        await reader
        await producer.stop()
        await consumer.stop()
    consume_s = last_consumed_at - started
    return {"offered_rate": rate or "flat out", "produced": produced, "consumed": consumed,
            "produce_s": round(produce_s, 2), "produced_per_s": round(produced / produce_s, 1),
            "consumed_per_s": round(consumed / consume_s, 1) if consume_s > 0 else None}


def baseline_phase(bench, rate: float, seconds: float, idle: dict[str, float], console: Console) -> dict:
    """The bare aiokafka runs. The broker's CPU per message is given as measured and net of its idle CPU (it also
    serves the idle stack's consumers meanwhile), which dominates at a low paced rate."""
    settings, stack, data_root = bench.stack.settings, bench.stack, bench.data_root
    asyncio.run(create_baseline_topic(settings))
    messages = [prompt_message("baseline", i, "soak-baseline") for i in range(1000)]
    payloads = [(m.request_id.encode(), m.to_bytes()) for m in messages]
    results: dict = {"topic": BASELINE_TOPIC, "partitions": settings.prompts_partitions,
                     "message_bytes_mean": round(sum(len(v) for _, v in payloads) / len(payloads), 1)}
    for label, offered in (("paced", rate), ("flat_out", None)):
        before = cpu_seconds_by_part(stack, data_root)
        started = time.perf_counter()
        row = asyncio.run(baseline_run(settings, payloads, seconds, offered))
        wall = time.perf_counter() - started
        after = cpu_seconds_by_part(stack, data_root)
        messages = max(row["consumed"], 1)
        used = {part: after[part] - before.get(part, 0.0) for part in ("broker", "load generator") if part in after}
        row["cpu_ms_per_message"] = {part: round(1000 * cpu / messages, 4) for part, cpu in used.items()}
        if "broker" in used:
            net = used["broker"] - idle.get("broker", 0.0) / 100 * wall
            row["broker_cpu_ms_per_message_net_of_idle"] = round(1000 * max(net, 0.0) / messages, 4)
        console.print(f"[cyan]baseline {label}[/cyan] {row}")
        results[label] = row
    from core.topics import delete_topics

    asyncio.run(delete_topics(settings.kafka_bootstrap, [BASELINE_TOPIC]))
    return results


# --- Soak: the router's Kafka path -----------------------------------------------------------------------------

async def count_rows(conn: psycopg.AsyncConnection, run: str) -> int:
    cursor = await conn.execute("SELECT count(*) FROM requests WHERE request_id LIKE %s", (f"{run}-%",))
    return (await cursor.fetchone())[0]


async def count_answered(conn: psycopg.AsyncConnection, run: str) -> int:
    """Prompts a model has answered (a finished model call), recorded or not: between this and the rows lies the
    completions topic and the sink, so the two counts show at which stage a backlog waits."""
    cursor = await conn.execute("SELECT count(DISTINCT request_id) FROM model_calls WHERE request_id LIKE %s"
                                " AND status = 'ok'", (f"{run}-%",))
    return (await cursor.fetchone())[0]


async def soak_phase(bench, run: str, rate: float, minutes: float, drain_minutes: float, console: Console) -> dict:
    settings, stack, data_root = bench.stack.settings, bench.stack, bench.data_root
    offer_s = minutes * 60
    produced = 0
    samples: list[dict] = []
    offer_done = asyncio.Event()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, acks="all",
                                linger_ms=5)
    await producer.start()
    conn = await psycopg.AsyncConnection.connect(settings.pg_dsn, autocommit=True)
    started = time.perf_counter()

    async def offer() -> None:
        nonlocal produced
        try:
            async for batch in paced_batches(rate, offer_s):
                sends = []
                for seq in range(produced, produced + batch):
                    message = prompt_message(run, seq, "soak")
                    sends.append(await producer.send(settings.topic_prompts, key=message.request_id.encode(),
                                                     value=message.to_bytes()))
                await asyncio.gather(*sends)
                produced += batch
        finally:
            offer_done.set()

    async def sample() -> dict:
        elapsed = time.perf_counter() - started
        row = {"t_s": round(elapsed, 1), "produced": produced, "answered": await count_answered(conn, run),
               "recorded": await count_rows(conn, run), "memory_mb": memory_mb_by_part(stack, data_root)}
        samples.append(row)
        worker_mb = sum(mb for part, mb in row["memory_mb"].items() if part.startswith("worker"))
        console.print(f"[dim]{elapsed:6.0f} s[/dim]  produced {row['produced']:>7}  answered {row['answered']:>7}  recorded {row['recorded']:>7}  "
                      f"backlog {row['produced'] - row['recorded']:>7}  worker RSS {worker_mb:6.1f} MB  "
                      f"broker {row['memory_mb'].get('broker', 0):6.1f} MB  {'offering' if not offer_done.is_set() else 'draining'}")
        return row

    cpu_before = cpu_seconds_by_part(stack, data_root)
    offering = asyncio.create_task(offer())
    await sample()
    tick = 0
    while not offer_done.is_set():
        tick += 1
        try:
            await asyncio.wait_for(asyncio.shield(offer_done.wait()), max(0.0, started + tick * SAMPLE_S - time.perf_counter()))
        except TimeoutError:
            await sample()
    await offering
    await producer.stop()
    offer_end_s = time.perf_counter() - started
    offer_end = await sample()
    cpu_offer_end = cpu_seconds_by_part(stack, data_root)

    # Drain: wait for the backlog, until every prompt is recorded, the deadline, or no row arrived for a while.
    drain_deadline = time.perf_counter() + drain_minutes * 60
    last = offer_end
    last_progress_at = time.perf_counter()
    while last["recorded"] < produced and time.perf_counter() < drain_deadline:
        await asyncio.sleep(min(SAMPLE_S, max(0.0, drain_deadline - time.perf_counter())))
        row = await sample()
        if row["recorded"] > last["recorded"]:
            last_progress_at = time.perf_counter()
        elif time.perf_counter() - last_progress_at >= IDLE_AFTER_S:
            break
        last = row
    end = samples[-1]
    total_s = end["t_s"]
    cpu_end = cpu_seconds_by_part(stack, data_root)
    idle_for_s = time.perf_counter() - last_progress_at

    # When the last row arrived, to the sample (completed_at says when a model answered, not when the row was written).
    last_row_s = next((x["t_s"] for x in samples if x["recorded"] == end["recorded"]), None) if end["recorded"] else None
    checks = await final_checks(conn, settings, run, produced, end["recorded"])
    await conn.close()
    unrecorded = produced - end["recorded"]
    # A shortfall is lost only when the pipeline had gone idle; while rows still arrived it is backlog still queued.
    idle = idle_for_s >= IDLE_AFTER_S or unrecorded == 0
    checks.update({"unrecorded_at_end": unrecorded, "drained": unrecorded == 0,
                   "lost": unrecorded if idle else None,
                   "still_queued_at_end": 0 if idle else unrecorded})

    recorded = max(end["recorded"], 1)
    cpu_ms_per_prompt = {part: round(1000 * (cpu_end[part] - cpu_before.get(part, 0.0)) / recorded, 3)
                         for part in sorted(cpu_end)}
    stack_ms = sum(v for k, v in cpu_ms_per_prompt.items() if k != "load generator")
    # With a backlog left, most of the CPU went to prompts answered but not yet recorded: per answered prompt too.
    stack_cpu_s = sum(cpu_end[k] - cpu_before.get(k, 0.0) for k in cpu_end if k != "load generator")
    return {
        "offered_rate": rate, "minutes": minutes, "produced": produced,
        "offered_per_s_actual": round(produced / offer_end_s, 1),
        "recorded_during_offer": offer_end["recorded"],
        "answered_during_offer": offer_end["answered"],
        "answered_at_end": end["answered"],
        "backlog_at_offer_end": produced - offer_end["recorded"],
        "recorded_at_end": end["recorded"],
        "offer_s": round(offer_end_s, 1), "drain_s": round(total_s - offer_end_s, 1),
        "sustained_per_s_offer_window": round(offer_end["recorded"] / offer_end_s, 1),
        # From the first prompt offered to the first sample that saw the final row count (10 s resolution).
        "last_row_s": round(last_row_s, 1) if last_row_s else None,
        "sustained_per_s_whole_run": round(end["recorded"] / last_row_s, 1) if last_row_s else None,
        "recorded_per_minute": per_minute(samples),
        # Over the whole soak (offer + drain), per recorded prompt; the load generator produces, samples and polls.
        "cpu_ms_per_prompt": cpu_ms_per_prompt,
        "cpu_ms_per_prompt_stack_total": round(stack_ms, 3),
        "stack_cpu_ms_per_answered_prompt": round(1000 * stack_cpu_s / end["answered"], 3) if end["answered"] else None,
        "cpu_seconds_offer_window": {part: round(cpu_offer_end[part] - cpu_before.get(part, 0.0), 1)
                                     for part in sorted(cpu_offer_end)},
        "checks": checks,
        "memory": memory_summary(samples),
        "samples": samples,
    }


def per_minute(samples: list[dict]) -> list[dict]:
    """Rows recorded in each minute of the run (the last one may be partial), from the 10 s samples."""
    rows = []
    start = samples[0]
    minute = 1
    for sample in samples[1:]:
        if sample["t_s"] >= minute * 60 - 1 or sample is samples[-1]:
            span = sample["t_s"] - start["t_s"]
            if span > 0:
                rows.append({"minute": minute, "span_s": round(span, 1),
                             "recorded_per_s": round((sample["recorded"] - start["recorded"]) / span, 1),
                             "produced_per_s": round((sample["produced"] - start["produced"]) / span, 1)})
            start = sample
            minute += 1
    return rows


async def final_checks(conn: psycopg.AsyncConnection, settings, run: str, produced: int, recorded: int) -> dict:
    pattern = f"{run}-%"
    cursor = await conn.execute(
        "SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE status = 'ok'),"
        " count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'expired')"
        " FROM requests WHERE request_id LIKE %s", (pattern,))
    rows, distinct, ok, failed, expired = await cursor.fetchone()
    cursor = await conn.execute(
        "SELECT count(*) FROM (SELECT request_id FROM model_calls WHERE request_id LIKE %s GROUP BY request_id"
        " HAVING count(DISTINCT delivery) > 1) AS twice", (pattern,))
    (called_on_two_deliveries,) = await cursor.fetchone()
    cursor = await conn.execute("SELECT count(*) FROM parked_requests WHERE request_id LIKE %s", (pattern,))
    (parked,) = await cursor.fetchone()
    # Produced ids with no row: named (up to 20) so a loss can be traced in the worker logs.
    missing: list[str] = []
    if recorded < produced:
        cursor = await conn.execute(
            "SELECT %s || '-' || lpad(seq::text, 8, '0') FROM generate_series(0, %s - 1) AS seq"
            " WHERE NOT EXISTS (SELECT 1 FROM requests WHERE request_id = %s || '-' || lpad(seq::text, 8, '0'))"
            " LIMIT 20", (run, produced, run))
        missing = [r[0] for r in await cursor.fetchall()]
    return {"produced": produced, "rows": rows, "distinct_request_ids": distinct, "duplicates": rows - distinct,
            "ok": ok, "failed": failed, "expired": expired, "called_on_more_than_one_delivery": called_on_two_deliveries,
            "parked": parked, "dead_letters": await count_dead_letters(settings), "missing_sample": missing}


async def count_dead_letters(settings) -> int:
    """Every record on the dead-letter topic (one partition), read from the beginning until nothing more comes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partition = TopicPartition(settings.topic_dead_letter, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        count = 0
        while batches := await consumer.getmany(timeout_ms=2000, max_records=10_000):
            count += sum(len(records) for records in batches.values())
        return count
    finally:
        await consumer.stop()


# --- Report ------------------------------------------------------------------------------------------------------

def load_average() -> list[float]:
    return [round(x, 2) for x in psutil.getloadavg()]


def print_summary(results: dict, console: Console) -> None:
    soak, baseline = results["soak"], results["baseline"]
    table = Table(title=f"Soak: {soak['offered_rate']:g} prompts/s offered for {soak['minutes']:g} min")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in ("produced", "offered_per_s_actual", "sustained_per_s_offer_window", "sustained_per_s_whole_run",
                "answered_during_offer", "recorded_during_offer", "answered_at_end",
                "backlog_at_offer_end", "recorded_at_end", "offer_s", "drain_s", "last_row_s"):
        table.add_row(key, str(soak[key]))
    for key in ("duplicates", "failed", "expired", "called_on_more_than_one_delivery", "parked", "dead_letters",
                "unrecorded_at_end", "lost", "still_queued_at_end"):
        table.add_row(key, str(soak["checks"][key]))
    console.print(table)
    cpu = Table(title="CPU ms: per recorded prompt (soak) vs per message (bare aiokafka baseline)")
    for column in ("part", "soak", "baseline paced", "baseline flat out"):
        cpu.add_column(column, justify="right" if column != "part" else "left")
    for part, ms in soak["cpu_ms_per_prompt"].items():
        cpu.add_row(part, f"{ms:.3f}", str(baseline["paced"]["cpu_ms_per_message"].get(part, "")),
                    str(baseline["flat_out"]["cpu_ms_per_message"].get(part, "")))
    cpu.add_row("stack total", f"{soak['cpu_ms_per_prompt_stack_total']:.3f}", "", "")
    cpu.add_row("stack total per answered prompt", str(soak["stack_cpu_ms_per_answered_prompt"]), "", "")
    cpu.add_row("broker net of idle", "", str(baseline["paced"].get("broker_cpu_ms_per_message_net_of_idle", "")),
                str(baseline["flat_out"].get("broker_cpu_ms_per_message_net_of_idle", "")))
    console.print(cpu)
    memory = Table(title="Memory (MB) and slope after the first minute (MB/min)")
    for column in ("part", "start", "after 1 min", "end", "slope"):
        memory.add_column(column, justify="right" if column != "part" else "left")
    for part, row in soak["memory"].items():
        memory.add_row(part, str(row["start_mb"]), str(row["after_1_min_mb"]), str(row["end_mb"]),
                       str(row["slope_mb_per_min"]))
    console.print(memory)
    rates = ", ".join(f"{r['minute']}: {r['recorded_per_s']}" for r in soak["recorded_per_minute"])
    console.print(f"recorded prompts/s by minute: {rates}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long prompts are offered")
    parser.add_argument("--rate", type=float, default=300.0, help="prompts offered per second")
    parser.add_argument("--workers", type=int, default=1, help="Faust worker processes")
    parser.add_argument("--baseline-seconds", type=float, default=30.0, help="length of each baseline run")
    parser.add_argument("--drain-minutes", type=float, default=10.0, help="longest wait for the backlog after the offer")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    console = Console()
    run = f"soak-{uuid.uuid4().hex[:8]}"
    results: dict = {"command": "python -m benchmarks.soak_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "machine": machine_line(), "run": run, "load_average_start": load_average()}
    with benchmark_stack("router-soak", workers=args.workers, console=console) as bench:
        results["idle_cpu_percent"] = idle_cpu_percent(bench.stack, bench.data_root, IDLE_S)
        console.print(f"[cyan]idle CPU %[/cyan] {results['idle_cpu_percent']}")
        results["baseline"] = baseline_phase(bench, args.rate, args.baseline_seconds, results["idle_cpu_percent"],
                                             console)
        results["soak"] = asyncio.run(soak_phase(bench, run, args.rate, args.minutes, args.drain_minutes, console))
    results["load_average_end"] = load_average()
    print_summary(results, console)
    if args.json:
        report(results, Console(quiet=True), args.json)
    console.print(f"load average at start {results['load_average_start']}, at end {results['load_average_end']}")
    checks = results["soak"]["checks"]
    return 1 if checks["duplicates"] or checks["lost"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
