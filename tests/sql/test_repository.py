"""The sink's writes: one row per request id however often a completion is delivered."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from core.messages import Attempt, CompletionMessage, PromptMessage, RoutingDecision, Tier, utcnow
from sql.repository import fetch_request, upsert_completion, upsert_completions


def make_completion(request_id: str, *, response: str = "Paris.", attempts: int = 1, correct: bool | None = None,
                    completed_offset_s: float = 0.0) -> CompletionMessage:
    prompt = PromptMessage(request_id=request_id, prompt="What is the capital of France?",
                           metadata={"source": "unit", "item_id": "q1"})
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9, "medium": 0.08,
                                                                             "complex": 0.02},
                               model="phi-3-mini", tier=Tier.cheap, reasons=["label simple", "confidence 0.90"],
                               policy="threshold", classifier="heuristic")
    tried = [Attempt(model="phi-3-mini", tier=Tier.cheap, status="rejected", input_tokens=7, output_tokens=1,
                     cost_micro_usd=1, error="too short", next_reason="escalate to llama-3-70b: too short")]
    tried += [Attempt(model="llama-3-70b", tier=Tier.mid, status="ok", input_tokens=7, output_tokens=3,
                      cost_micro_usd=6)]
    tried = tried[-attempts:]
    return CompletionMessage(
        request_id=request_id, prompt=prompt, decision=decision, attempts=tried, status="ok",
        final_model=tried[-1].model, response=response, finish_reason="stop", input_tokens=7, output_tokens=3,
        cost_micro_usd=sum(a.cost_micro_usd for a in tried), counterfactual_model="gpt-4o",
        counterfactual_cost_micro_usd=48, correct=correct,
        completed_at=utcnow() + timedelta(seconds=completed_offset_s),
    )


def counts(dsn: str, request_id: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        return tuple(conn.execute(f"SELECT count(*) FROM {table} WHERE request_id = %s", (request_id,)).fetchone()[0]
                     for table in ("requests", "request_attempts", "model_eval"))


@pytest.fixture()
async def conn(clean_db: str):
    async with await psycopg.AsyncConnection.connect(clean_db) as connection:
        yield connection


async def test_redelivered_completion_updates_the_one_row(conn, clean_db):
    completion = make_completion("req-dup", attempts=2)
    assert await upsert_completions(conn, [completion, completion]) == 2
    assert await upsert_completions(conn, [completion]) == 1
    assert counts(clean_db, "req-dup") == (1, 2, 0)
    row = await fetch_request(conn, "req-dup")
    assert row["routed_model"] == "phi-3-mini" and row["final_model"] == "llama-3-70b"
    assert row["escalated"] is True and row["fell_back"] is False
    assert row["tokens_in"] == 7 and row["cost_micro_usd"] == 7 and row["counterfactual_cost_micro_usd"] == 48
    assert row["decision_reason"] == "label simple; confidence 0.90"
    assert [a["attempt_no"] for a in row["attempt_rows"]] == [1, 2]
    assert row["attempt_rows"][0]["next_reason"].startswith("escalate")


async def test_newer_answer_replaces_attempts_and_older_one_never_overwrites(conn, clean_db):
    first = make_completion("req-two-answers", attempts=2, response="first")
    newer = make_completion("req-two-answers", attempts=1, response="newer", completed_offset_s=5)
    async with conn.transaction():
        assert await upsert_completion(conn, first)
    async with conn.transaction():
        assert await upsert_completion(conn, newer)
    async with conn.transaction():
        assert not await upsert_completion(conn, first)  # a late redelivery of the older answer
    row = await fetch_request(conn, "req-two-answers")
    assert row["response"] == "newer" and row["attempt_count"] == 1
    assert counts(clean_db, "req-two-answers") == (1, 1, 0)


async def test_graded_completion_writes_one_eval_row(conn, clean_db):
    graded = make_completion("req-graded", correct=True)
    await upsert_completions(conn, [graded])
    await upsert_completions(conn, [graded.model_copy(update={"correct": False,
                                                              "completed_at": graded.completed_at
                                                              + timedelta(seconds=1)})])
    row = await fetch_request(conn, "req-graded")
    assert counts(clean_db, "req-graded") == (1, 1, 1)
    assert row["evaluation"]["correct"] is False
    assert row["evaluation"]["source"] == "unit" and row["evaluation"]["item_id"] == "q1"


async def test_missing_request_is_none(conn):
    assert await fetch_request(conn, "no-such-request") is None


async def test_nul_characters_from_a_model_do_not_cost_the_row(conn, clean_db):
    completion = make_completion("req-nul", response="bad\x00byte")
    completion.attempts[0].error = "odd\x00error"
    await upsert_completions(conn, [completion])
    row = await fetch_request(conn, "req-nul")
    assert row["response"] == "bad\ufffdbyte" and row["attempt_rows"][0]["error"] == "odd\ufffderror"


async def test_out_of_range_value_is_refused_without_writing_anything(conn, clean_db):
    broken = make_completion("req-broken").model_copy(update={"input_tokens": 2**40})
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        await upsert_completions(conn, [make_completion("req-fine-but-same-batch"), broken])
    await conn.rollback()
    assert counts(clean_db, "req-fine-but-same-batch") == (0, 0, 0)  # the batch is one transaction


async def test_structured_escalation_columns_are_written_and_read_back(conn, clean_db):
    completion = make_completion("req-structured", attempts=2)
    completion.attempts[0].record_next("llama-3-70b", "short", "too short")
    assert await upsert_completions(conn, [completion]) == 1
    row = await fetch_request(conn, "req-structured")
    first = row["attempt_rows"][0]
    assert (first["next_model"], first["next_reason_kind"]) == ("llama-3-70b", "short")
    assert first["next_reason"] == "escalate to llama-3-70b: too short"
    assert row["escalated"] is True


def test_the_migration_reads_old_prose_reasons_into_the_columns(pg_admin_dsn: str) -> None:
    """Rows written before structured reasons get their next model and reason kind from the prose, once."""
    import uuid

    from sql.migrate import migration_files
    from stack.services import create_database, drop_database

    name = f"router_test_mig_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_admin_dsn, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(migration_files()[0].read_text())  # the schema as it was before 0002
            db.execute("INSERT INTO requests VALUES ('r', now(), now(), 't', NULL, 'standard', 'p', 1, 1, 'simple', 1,"
                       " '{}', 'why', 'threshold', 'heuristic', 'a', 'b', 'ok', '[]', 3, true, true, 0, 0, 0, 0,"
                       " NULL, NULL, 'x', 'stop', NULL, '{}')")
            for number, status, reason in [(1, "rejected", "escalate to b: refusal"),
                                           (2, "rejected", "escalate to c: p_up-p_this 0.31 >= 0.20"),
                                           (3, "error", "fallback to d: small: timeout after 30s per try"),
                                           (4, "error", "fallback to e: circuit open")]:
                db.execute("INSERT INTO request_attempts (request_id, attempt_no, model, tier, status, started_at,"
                           " latency_ms, tokens_in, tokens_out, cost_micro_usd, next_reason)"
                           " VALUES ('r', %s, 'a', 'cheap', %s, now(), 0, 0, 0, 0, %s)", (number, status, reason))
            db.execute(migration_files()[1].read_text())
            rows = db.execute("SELECT next_model, next_reason_kind FROM request_attempts ORDER BY attempt_no").fetchall()
        assert rows == [("b", "refusal"), ("c", "verifier"), ("d", "timeout"), ("e", "circuit_open")]
    finally:
        drop_database(pg_admin_dsn, name)
