"""The accepted-requests ledger and the worker heartbeats (migration 0003).

The API inserts a ``pending`` ledger row for every request it accepts, before it answers. The reconciler
(one worker at a time, under an advisory lock) marks rows whose request has a ``requests`` row as
``recorded``, republishes pending rows that have waited longer than the republish interval, and
records rows past their deadline as ``expired`` requests, so every accepted request ends in exactly
one terminal ``requests`` row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from core.messages import PromptMessage
from sql.repository import without_nul

# One reconciler at a time across all workers.
RECONCILER_LOCK_KEY = 0x7265636F6E63

INSERT_ACCEPTED_SQL = (
    "INSERT INTO accepted_requests (request_id, deadline_at, message) VALUES (%s, %s, %s)"
    " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
)


def accepted_row(prompt: PromptMessage, deadline_at: datetime | None = None) -> tuple:
    """``INSERT_ACCEPTED_SQL``'s parameters: the message as accepted, and its deadline (by default its own)."""
    deadline_at = deadline_at or prompt.deadline_at
    assert deadline_at is not None, "an accepted request has a deadline"
    # jsonb cannot hold a NUL either: kept as the sink keeps it (U+FFFD), so a republished copy is storable.
    return prompt.request_id, deadline_at, Jsonb(without_nul(prompt.model_dump(mode="json")))


async def record_accepted(conn: AsyncConnection, prompt: PromptMessage, deadline_at: datetime) -> bool:
    """The ledger row of an accepted request; False when it was already there (a client's retry with the same
    request id keeps the first row: that request is already accepted, and the reconciler answers for it). The
    API writes it in the admission transaction (``sql.keys.admit_request``'s ``accept``)."""
    cursor = await conn.execute(INSERT_ACCEPTED_SQL, accepted_row(prompt, deadline_at))
    return await cursor.fetchone() is not None


async def forget_unpublished(conn: AsyncConnection, request_id: str) -> None:
    """The broker refused the request (the client got a 503): it was not accepted, so nothing republishes it."""
    await conn.execute("DELETE FROM accepted_requests WHERE request_id = %s AND state = 'pending'"
                       " AND republished = 0", (request_id,))


async def ledger_entry(conn: AsyncConnection, request_id: str) -> dict[str, Any] | None:
    cursor = await conn.execute(
        "SELECT request_id, accepted_at, deadline_at, state, republished, message->>'tenant' FROM accepted_requests"
        " WHERE request_id = %s", (request_id,))
    row = await cursor.fetchone()
    if row is None:
        return None
    return dict(zip(("request_id", "accepted_at", "deadline_at", "state", "republished", "tenant"), row, strict=True))


@dataclass
class ReconcileResult:
    recorded: int = 0
    republish: list[PromptMessage] | None = None
    expired: int = 0


MARK_RECORDED_SQL = (
    "UPDATE accepted_requests a SET state = 'recorded', resolved_at = now() FROM requests r"
    " WHERE a.state = 'pending' AND r.request_id = a.request_id"
)

# Rows past their deadline with no requests row: one expired requests row each. A late completion still
# replaces it (the sink's upsert keeps the newest completed_at), so the request keeps one terminal row.
EXPIRE_SQL = """
WITH due AS (
    SELECT a.request_id, a.message, a.accepted_at, a.deadline_at, a.republished FROM accepted_requests a
    WHERE a.state = 'pending' AND a.deadline_at <= now()
      AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.request_id = a.request_id)
    ORDER BY a.deadline_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), inserted AS (
    INSERT INTO requests (request_id, created_at, completed_at, tenant, user_id, customer_tier, prompt, prompt_chars,
        max_tokens, difficulty, confidence, probabilities, decision_reason, policy, classifier, routed_model,
        final_model, status, attempts, attempt_count, escalated, fell_back, tokens_in, tokens_out, latency_ms,
        cost_micro_usd, error, metadata)
    SELECT request_id, (message->>'created_at')::timestamptz, now(), coalesce(message->>'tenant', 'default'),
        message->>'user', coalesce(message->>'customer_tier', 'standard'), message->>'prompt',
        length(message->>'prompt'), (message->>'max_tokens')::int, 'unrouted', 0, '{}'::jsonb,
        'expired before an answer was recorded', '', '', '', NULL, 'expired', '[]'::jsonb, 0, false, false, 0, 0,
        0, 0, format('no answer recorded by the deadline %%s (republished %%s times)', deadline_at, republished),
        coalesce(message->'metadata', '{}'::jsonb)
    FROM due
    ON CONFLICT (request_id) DO NOTHING
)
UPDATE accepted_requests a SET state = 'expired', resolved_at = now() FROM due WHERE a.request_id = due.request_id
"""

REPUBLISH_SQL = """
UPDATE accepted_requests a SET republished = a.republished + 1, last_published_at = now()
FROM (
    SELECT request_id FROM accepted_requests
    WHERE state = 'pending' AND deadline_at > now() AND last_published_at <= now() - make_interval(secs => %(after_s)s)
      AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.request_id = accepted_requests.request_id)
    ORDER BY last_published_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
) due
WHERE a.request_id = due.request_id
RETURNING a.message
"""


async def reconcile(conn: AsyncConnection, *, republish_after_s: float, limit: int = 1000) -> ReconcileResult | None:
    """One reconciler pass in the caller's (autocommit) connection; None when another worker holds the lock.

    Returns the prompts to publish again. Their ``last_published_at`` is bumped in the same step, so a
    publish that fails is retried on a later pass, never lost."""
    cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (RECONCILER_LOCK_KEY,))
    if not (await cursor.fetchone())[0]:
        return None
    try:
        result = ReconcileResult()
        async with conn.transaction():
            result.recorded = (await conn.execute(MARK_RECORDED_SQL)).rowcount
            result.expired = (await conn.execute(EXPIRE_SQL, {"limit": limit})).rowcount
            rows = await (await conn.execute(REPUBLISH_SQL, {"after_s": republish_after_s, "limit": limit})).fetchall()
        result.republish = [PromptMessage.model_validate(row[0]) for row in rows]
        return result
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (RECONCILER_LOCK_KEY,))


async def write_heartbeat(conn: AsyncConnection, *, worker_id: str, app_id: str, host: str, pid: int,
                          started_at: datetime, assignment: dict[str, Sequence[int]],
                          lag: dict[str, dict[int, int]] | None = None) -> None:
    """``lag``: per topic and partition, how many messages the worker is behind (as it last saw it)."""
    await conn.execute(
        "INSERT INTO worker_heartbeats (worker_id, app_id, host, pid, started_at, beat_at, assignment, lag)"
        " VALUES (%s, %s, %s, %s, %s, now(), %s, %s) ON CONFLICT (worker_id) DO UPDATE SET beat_at = now(),"
        " assignment = EXCLUDED.assignment, lag = EXCLUDED.lag",
        (worker_id, app_id, host, pid, started_at, Jsonb({t: sorted(p) for t, p in assignment.items()}),
         Jsonb({t: {str(p): n for p, n in sorted(parts.items())} for t, parts in (lag or {}).items()})))


@dataclass
class LiveWorkers:
    """What the workers of one app whose heartbeat is fresh report together."""

    held: dict[str, set[int]]  # partitions held, per topic
    lag: dict[str, int]  # messages behind per topic, summed over partitions


async def live_workers(conn: AsyncConnection, app_id: str, fresh_s: float) -> LiveWorkers:
    """The partitions held and the lag of workers of ``app_id`` whose last heartbeat is at most ``fresh_s`` old."""
    cursor = await conn.execute(
        "SELECT assignment, lag FROM worker_heartbeats WHERE app_id = %s"
        " AND beat_at > now() - make_interval(secs => %s)", (app_id, fresh_s))
    live = LiveWorkers(held={}, lag={})
    for assignment, lag in await cursor.fetchall():
        for topic, partitions in assignment.items():
            live.held.setdefault(topic, set()).update(partitions)
        for topic, partitions in lag.items():
            live.lag[topic] = live.lag.get(topic, 0) + sum(int(n) for n in partitions.values())
    return live


CALL_STARTED_SQL = ("INSERT INTO model_calls (request_id, delivery, attempt_no, model) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING")
# A delivery's first call: recorded only when its request has no recorded answer (the caller checks that in the
# same round trip with ``ANSWERED_AMONG_SQL`` and does not call the model when it has one).
CALL_STARTED_UNLESS_ANSWERED_SQL = (
    "INSERT INTO model_calls (request_id, delivery, attempt_no, model) SELECT %s, %s, %s, %s"
    " WHERE NOT EXISTS (SELECT 1 FROM requests WHERE request_id = %s AND status IN ('ok', 'failed'))"
    " ON CONFLICT DO NOTHING")
CALL_FINISHED_SQL = (
    "INSERT INTO model_calls (request_id, delivery, attempt_no, model, finished_at, status, tokens_in, tokens_out,"
    " cost_micro_usd) VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s) ON CONFLICT (request_id, delivery, attempt_no)"
    " DO UPDATE SET finished_at = now(), status = EXCLUDED.status, tokens_in = EXCLUDED.tokens_in,"
    " tokens_out = EXCLUDED.tokens_out, cost_micro_usd = EXCLUDED.cost_micro_usd"
)


async def write_calls(conn: AsyncConnection, records: Sequence[tuple[str, tuple]],
                      started_unless_answered: Sequence[tuple] = ()) -> None:
    """Model-call records in order: ("started", (request_id, delivery, attempt_no, model)) or ("finished",
    (request_id, delivery, attempt_no, model, status, tokens_in, tokens_out, cost_micro_usd)); then the start
    records in ``started_unless_answered`` whose request has no recorded answer."""
    started = [row for kind, row in records if kind == "started"]
    finished = [row for kind, row in records if kind == "finished"]
    async with conn.cursor() as cur:
        if started:
            await cur.executemany(CALL_STARTED_SQL, started)
        if started_unless_answered:
            await cur.executemany(CALL_STARTED_UNLESS_ANSWERED_SQL, [(*row, row[0]) for row in started_unless_answered])
        if finished:  # after the starts: a finish upserts over its start
            await cur.executemany(CALL_FINISHED_SQL, finished)


# The requests among these whose answer is recorded (``ok`` or ``failed``; ``expired`` is not one).
ANSWERED_AMONG_SQL = "SELECT request_id FROM requests WHERE request_id = ANY(%s) AND status IN ('ok', 'failed')"

