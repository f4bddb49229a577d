"""The accepted-requests ledger: a reconciler pass marks recorded rows, republishes stale ones, expires late ones."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest

from core.messages import PromptMessage, utcnow
from sql.ledger import ledger_entry, reconcile, record_accepted
from sql.repository import upsert_completion
from tests.sql.test_repository import make_completion


def _prompt(text: str) -> PromptMessage:
    return PromptMessage(request_id=uuid.uuid4().hex, prompt=text, tenant="acme", metadata={"source": "unit"})


async def _accept(conn, prompt: PromptMessage, *, deadline_in_s: float, published_ago_s: float = 0) -> None:
    await record_accepted(conn, prompt, utcnow() + timedelta(seconds=deadline_in_s))
    await conn.execute("UPDATE accepted_requests SET last_published_at = now() - make_interval(secs => %s)"
                       " WHERE request_id = %s", (published_ago_s, prompt.request_id))


async def test_reconcile_marks_recorded_republishes_stale_and_expires_past_deadline(clean_db):
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
        await conn.execute("TRUNCATE accepted_requests")
        answered, fresh, stale, late = (_prompt(t) for t in ("answered", "fresh", "stale", "late"))
        await _accept(conn, answered, deadline_in_s=600, published_ago_s=120)
        await _accept(conn, fresh, deadline_in_s=600, published_ago_s=1)
        await _accept(conn, stale, deadline_in_s=600, published_ago_s=120)
        await _accept(conn, late, deadline_in_s=-1, published_ago_s=120)
        await upsert_completion(conn, make_completion(answered.request_id))

        result = await reconcile(conn, republish_after_s=60)
        assert result.recorded == 1 and result.expired == 1
        assert [p.request_id for p in result.republish] == [stale.request_id]
        assert result.republish[0] == stale  # the message as accepted, deadline and all
        assert (await ledger_entry(conn, answered.request_id))["state"] == "recorded"
        assert (await ledger_entry(conn, fresh.request_id))["state"] == "pending"
        assert (await ledger_entry(conn, stale.request_id))["republished"] == 1
        assert (await ledger_entry(conn, late.request_id))["state"] == "expired"
        row = await (await conn.execute("SELECT status, tenant, prompt, cost_micro_usd, error FROM requests"
                                        " WHERE request_id = %s", (late.request_id,))).fetchone()
        assert row[:4] == ("expired", "acme", "late", 0) and "deadline" in row[4]

        # The next pass does not republish what was just republished, nor expire anything twice.
        again = await reconcile(conn, republish_after_s=60)
        assert again.republish == [] and again.expired == 0 and again.recorded == 0

        # A late answer (of the same tenant) replaces the expired row: one terminal row, now with what was paid.
        late_answer = make_completion(late.request_id)
        late_answer.prompt.tenant = late.tenant
        await upsert_completion(conn, late_answer)
        statuses = await (await conn.execute("SELECT status FROM requests WHERE request_id = %s",
                                             (late.request_id,))).fetchall()
        assert statuses == [("ok",)]


async def test_only_one_reconciler_runs_at_a_time(clean_db):
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as holder, \
            await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as other:
        await holder.execute("SELECT pg_advisory_lock(%s)", (0x7265636F6E63,))
        assert await reconcile(other, republish_after_s=60) is None
        await holder.execute("SELECT pg_advisory_unlock(%s)", (0x7265636F6E63,))
        assert await reconcile(other, republish_after_s=60) is not None


@pytest.fixture(autouse=True)
def _empty_ledger(clean_db):
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("TRUNCATE accepted_requests")
