"""Parked requests: parking holds the ledger row, the sweep publishes due rows once and releases them."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest

from core.messages import Attempt, PromptMessage, RoutedMessage, RoutingDecision, Tier, utcnow
from sql.ledger import ledger_entry, reconcile, record_accepted
from sql.parking import park, release_due


def _routed(parks: int = 1) -> RoutedMessage:
    prompt = PromptMessage(request_id=uuid.uuid4().hex, prompt="What is 2 plus 2?")
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9}, model="small",
                               tier=Tier.cheap, reasons=["test"], policy="threshold", classifier="test")
    failed = Attempt(model="small", tier=Tier.cheap, status="error", error="small: 503")
    return RoutedMessage(prompt=prompt, decision=decision, target_model="small", attempts=[failed], parks=parks)


async def test_a_parked_request_is_released_once_when_due_and_the_ledger_waits_for_it(clean_db):
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
        due_now, later = _routed(), _routed()
        for routed in (due_now, later):
            await record_accepted(conn, routed.prompt, utcnow() + timedelta(seconds=600))
            # Published long ago: without parking the reconciler would republish it to the prompts topic now.
            await conn.execute("UPDATE accepted_requests SET last_published_at = now() - interval '120 seconds'"
                               " WHERE request_id = %s", (routed.prompt.request_id,))
        deadline = utcnow() + timedelta(seconds=600)
        await park(conn, due_now, not_before=utcnow() - timedelta(seconds=1), deadline_at=deadline, last_error="503")
        await park(conn, later, not_before=utcnow() + timedelta(seconds=60), deadline_at=deadline, last_error="503")

        republished = await reconcile(conn, republish_after_s=60)
        assert later.prompt.request_id not in [p.request_id for p in republished.republish]

        published: list = []

        async def publish(rows) -> None:
            published.extend(rows)

        assert await release_due(conn, publish) == 1
        assert [row.request_id for row in published] == [due_now.prompt.request_id]
        assert RoutedMessage.model_validate(published[0].routed) == due_now  # attempts and parks travel with it
        assert await release_due(conn, publish) == 0  # released once
        assert (await ledger_entry(conn, due_now.prompt.request_id))["state"] == "pending"

        # Parked again (a later try failed too): the same row, parked anew.
        again = due_now.model_copy(update={"parks": 2})
        await park(conn, again, not_before=utcnow() - timedelta(seconds=1), deadline_at=deadline, last_error="503")
        rows = await (await conn.execute("SELECT parks, released_at FROM parked_requests WHERE request_id = %s",
                                         (due_now.prompt.request_id,))).fetchall()
        assert rows == [(2, None)]


async def test_a_publish_that_fails_leaves_the_request_parked(clean_db):
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
        routed = _routed()
        await park(conn, routed, not_before=utcnow() - timedelta(seconds=1),
                   deadline_at=utcnow() + timedelta(seconds=600), last_error="503")

        async def broker_down(rows) -> None:
            raise ConnectionError("broker down")

        with pytest.raises(ConnectionError):
            await release_due(conn, broker_down)
        published: list = []

        async def publish(rows) -> None:
            published.extend(rows)

        assert await release_due(conn, publish) == 1 and published[0].request_id == routed.prompt.request_id


@pytest.fixture(autouse=True)
def _empty_tables(clean_db):
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("TRUNCATE accepted_requests, parked_requests")
