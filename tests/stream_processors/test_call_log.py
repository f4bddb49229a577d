"""Model-call records: written before the call, batched, kept in memory while the database is down."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from core.messages import Attempt, Tier
from core.registry import ModelSpec
from providers.executor import AlreadyAnswered
from sql.repository import upsert_completion
from stream_processors.call_log import CallRecorder
from tests.sql.test_repository import make_completion


def _spec() -> ModelSpec:
    return ModelSpec(name="small", tier=Tier.cheap, kind="openai", base_url="http://stub/v1", model_id="stub-small",
                     context_window=4096, prices={"input": 0.1, "output": 0.2})


@pytest.fixture()
async def pool(clean_db):
    async with AsyncConnectionPool(clean_db, min_size=1, max_size=2, open=False) as pool:
        await pool.open(wait=True)
        yield pool


def _calls(dsn: str, request_id: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT delivery, attempt_no, model, status, cost_micro_usd FROM model_calls"
                            " WHERE request_id = %s ORDER BY delivery, attempt_no", (request_id,)).fetchall()


class Database:
    """The recorder's pool factory, with the database switched on or off."""

    def __init__(self, pool: AsyncConnectionPool, up: bool = True) -> None:
        self.pool, self.up = pool, up

    async def __call__(self) -> AsyncConnectionPool:
        if not self.up:
            raise psycopg.OperationalError("connection refused")
        return self.pool


@contextlib.asynccontextmanager
async def running(recorder: CallRecorder):
    runner = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        runner.cancel()


async def test_a_call_is_on_record_before_it_is_made_and_updated_when_it_ends(pool, clean_db):
    async with running(CallRecorder(Database(pool))) as recorder:
        request_id = uuid.uuid4().hex
        calls = recorder.for_delivery(request_id, "route.small/0/7/w1")
        await calls.started(1, _spec())
        assert _calls(clean_db, request_id) == [("route.small/0/7/w1", 1, "small", "started", None)]
        await calls.finished(1, Attempt(model="small", tier=Tier.cheap, status="ok", cost_micro_usd=12))
        again = recorder.for_delivery(request_id, "route.small/0/9/w2")  # a redelivery: a second call, on record
        await again.started(1, _spec())
        await asyncio.sleep(0.2)
        assert _calls(clean_db, request_id) == [("route.small/0/7/w1", 1, "small", "ok", 12),
                                                ("route.small/0/9/w2", 1, "small", "started", None)]
        assert await recorder.answered(request_id) is False
        async with pool.connection() as conn:
            await upsert_completion(conn, make_completion(request_id))
        assert await recorder.answered(request_id) is True


async def test_records_wait_in_memory_while_the_database_is_down(pool, clean_db):
    database = Database(pool, up=False)
    async with running(CallRecorder(database, wait_s=0.5)) as recorder:
        request_id = uuid.uuid4().hex
        calls = recorder.for_delivery(request_id, "d1")
        await asyncio.wait_for(calls.started(1, _spec()), timeout=2)  # the call is not held back
        assert await recorder.answered(request_id) is False  # cannot say: the model is called
        await calls.finished(1, Attempt(model="small", tier=Tier.cheap, status="error"))
        assert len(recorder.backlog) == 2 and _calls(clean_db, request_id) == []
        database.up = True
        await asyncio.sleep(0.3)
        assert recorder.backlog == [] and _calls(clean_db, request_id) == [("d1", 1, "small", "error", 0)]


async def test_a_waiting_caller_does_not_wait_for_the_interval(pool, clean_db):
    # Group commit: a start record or an answered check is flushed at once when no flush is running, so a
    # request pays one round trip, not the batching interval (which only paces end records).
    async with running(CallRecorder(Database(pool), interval_s=30, wait_s=10)) as recorder:
        request_id = uuid.uuid4().hex
        calls = recorder.for_delivery(request_id, "d1")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await recorder.answered(request_id) is False
        await calls.started(1, _spec())
        assert loop.time() - started < 5
        assert _calls(clean_db, request_id) == [("d1", 1, "small", "started", None)]


async def test_a_deliverys_first_call_is_checked_for_a_recorded_answer_in_the_same_flush(pool, clean_db):
    async with running(CallRecorder(Database(pool), interval_s=30, wait_s=10)) as recorder:
        request_id = uuid.uuid4().hex
        first = recorder.for_delivery(request_id, "d1", check_answered=True)
        await first.started(1, _spec())  # no answer yet: the start is written
        await first.started(2, _spec())  # later calls of the delivery are not checked again
        assert first.checked and _calls(clean_db, request_id) == [("d1", 1, "small", "started", None),
                                                                   ("d1", 2, "small", "started", None)]
        async with pool.connection() as conn:
            await upsert_completion(conn, make_completion(request_id))
        redelivered = recorder.for_delivery(request_id, "d2", check_answered=True)
        with pytest.raises(AlreadyAnswered):
            await redelivered.started(1, _spec())
        assert [row[0] for row in _calls(clean_db, request_id)] == ["d1", "d1"]  # nothing written for d2


async def test_a_checked_start_goes_ahead_and_is_kept_while_the_database_is_down(pool, clean_db):
    database = Database(pool, up=False)
    async with running(CallRecorder(database, wait_s=0.5)) as recorder:
        request_id = uuid.uuid4().hex
        calls = recorder.for_delivery(request_id, "d1", check_answered=True)
        await asyncio.wait_for(calls.started(1, _spec()), timeout=2)  # cannot say: the model is called
        assert recorder.backlog == [("started", (request_id, "d1", 1, "small"))]
        database.up = True
        await asyncio.sleep(0.3)
        assert recorder.backlog == [] and _calls(clean_db, request_id) == [("d1", 1, "small", "started", None)]
