"""The stage health view and /readyz's lag come from the workers' heartbeats: known heartbeats, known figures."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import psycopg

from sql.ledger import live_workers, write_heartbeat
from tests.dashboard.test_app import metrics, run_view  # noqa: F401 - the fixture


async def _beats(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM worker_heartbeats")  # other tests' workers share this database
        await conn.execute("DELETE FROM accepted_requests")
        started = datetime.now(UTC)
        await write_heartbeat(conn, worker_id="w-live-1", app_id="cost-router", host="h", pid=1, started_at=started,
                              assignment={"prompts": [0, 1, 2], "route.small": [0]},
                              lag={"prompts": {0: 5, 1: 0, 2: 2}, "route.small": {0: 1}})
        await write_heartbeat(conn, worker_id="w-live-2", app_id="cost-router", host="h", pid=2, started_at=started,
                              assignment={"prompts": [3, 4, 5]}, lag={"prompts": {3: 10}})
        await write_heartbeat(conn, worker_id="w-gone", app_id="cost-router", host="h", pid=3, started_at=started,
                              assignment={"prompts": [0]}, lag={"prompts": {0: 999}})
        await conn.execute("UPDATE worker_heartbeats SET beat_at = now() - interval '1 hour' WHERE worker_id = 'w-gone'")
        await conn.execute("INSERT INTO accepted_requests (request_id, deadline_at, message) VALUES"
                           " (%s, now() + interval '1 hour', '{}'::jsonb)", (uuid.uuid4().hex,))


def test_lag_per_topic_sums_live_workers_only(clean_db: str) -> None:
    asyncio.run(_beats(clean_db))

    async def read() -> dict[str, int]:
        async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
            return (await live_workers(conn, "cost-router", 15)).lag

    assert asyncio.run(read()) == {"prompts": 17, "route.small": 1}


def test_stage_health_view_shows_workers_partitions_and_lag(clean_db: str, run_view) -> None:  # noqa: F811
    asyncio.run(_beats(clean_db))
    at = run_view("health")
    shown = metrics(at)
    assert shown["Live workers"] == "2" and shown["Accepted, no row yet"] == "1"
    per_topic = at.dataframe[0].value.set_index("topic")
    assert per_topic.loc["prompts", "partitions held"] == 6 and per_topic.loc["prompts", "lag"] == 17
    assert per_topic.loc["prompts", "workers"] == 2 and per_topic.loc["route.small", "lag"] == 1
    workers = at.dataframe[1].value.set_index("worker_id")
    assert workers.loc["w-gone", "state"] == "gone" and workers.loc["w-live-2", "lag"] == 10
