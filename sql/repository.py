"""The one place that writes completions to Postgres (and reads a request back).

Writes are idempotent by request id: a redelivered completion updates its row instead of adding one,
and its attempts and evaluation rows are replaced in the same transaction. When two completions of the
same request arrive (a redelivered prompt was answered twice), the later ``completed_at`` wins and the
row, its attempts and its evaluation always describe the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.messages import CompletionMessage

REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id", "created_at", "completed_at", "tenant", "user_id", "customer_tier", "prompt", "prompt_chars",
    "max_tokens", "difficulty", "confidence", "probabilities", "decision_reason", "policy", "classifier",
    "routed_model", "final_model", "status", "attempts", "attempt_count", "escalated", "fell_back", "tokens_in",
    "tokens_out", "latency_ms", "cost_micro_usd", "counterfactual_model", "counterfactual_cost_micro_usd",
    "response", "finish_reason", "error", "metadata",
)

UPSERT_REQUEST_SQL = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in REQUEST_COLUMNS)}) "
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in REQUEST_COLUMNS if c != "request_id")
    # An older duplicate never overwrites a newer answer.
    + " WHERE requests.completed_at <= EXCLUDED.completed_at RETURNING request_id"
)

DELETE_ATTEMPTS_SQL = "DELETE FROM request_attempts WHERE request_id = %s"

ATTEMPT_COLUMNS: tuple[str, ...] = (
    "request_id", "attempt_no", "model", "tier", "status", "started_at", "latency_ms", "tokens_in", "tokens_out",
    "cost_micro_usd", "finish_reason", "retries", "error", "next_model", "next_reason_kind", "next_reason",
)

INSERT_ATTEMPT_SQL = (
    f"INSERT INTO request_attempts ({', '.join(ATTEMPT_COLUMNS)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in ATTEMPT_COLUMNS)})"
)

EVAL_COLUMNS: tuple[str, ...] = (
    "request_id", "evaluated_at", "model", "difficulty", "source", "item_id", "correct", "cost_micro_usd",
)

UPSERT_EVAL_SQL = (
    f"INSERT INTO model_eval ({', '.join(EVAL_COLUMNS)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in EVAL_COLUMNS)}) "
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in EVAL_COLUMNS if c != "request_id")
)

DELETE_EVAL_SQL = "DELETE FROM model_eval WHERE request_id = %s"


def _without_nul(value: Any) -> Any:
    """Postgres text and jsonb cannot hold NUL; a model that emits one must not cost us the row."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def storable(completion: CompletionMessage) -> CompletionMessage:
    return CompletionMessage.model_validate(_without_nul(completion.model_dump()))


def request_row(completion: CompletionMessage) -> dict[str, Any]:
    prompt, decision = completion.prompt, completion.decision
    attempts = completion.attempts
    return {
        "request_id": completion.request_id,
        "created_at": prompt.created_at,
        "completed_at": completion.completed_at,
        "tenant": prompt.tenant,
        "user_id": prompt.user,
        "customer_tier": prompt.customer_tier,
        "prompt": prompt.prompt,
        "prompt_chars": len(prompt.prompt),
        "max_tokens": prompt.max_tokens,
        "difficulty": decision.label,
        "confidence": decision.confidence,
        "probabilities": Jsonb(decision.probabilities),
        "decision_reason": decision.reason,
        "policy": decision.policy,
        "classifier": decision.classifier,
        "routed_model": decision.model,
        "final_model": completion.final_model,
        "status": completion.status,
        "attempts": Jsonb([a.model_dump(mode="json") for a in attempts]),
        "attempt_count": len(attempts),
        # A message from before structured reasons carries only ``next_reason``: it counts the same.
        "escalated": any(a.status == "rejected" and (a.next_model or a.next_reason) for a in attempts),
        "fell_back": any(a.status == "error" and (a.next_model or a.next_reason) for a in attempts),
        "tokens_in": completion.input_tokens,
        "tokens_out": completion.output_tokens,
        "latency_ms": completion.latency_ms,
        "cost_micro_usd": completion.cost_micro_usd,
        "counterfactual_model": completion.counterfactual_model,
        "counterfactual_cost_micro_usd": completion.counterfactual_cost_micro_usd,
        "response": completion.response,
        "finish_reason": completion.finish_reason,
        "error": completion.error,
        "metadata": Jsonb(prompt.metadata),
    }


def attempt_rows(completion: CompletionMessage) -> list[dict[str, Any]]:
    return [
        {"request_id": completion.request_id, "attempt_no": number, "model": a.model, "tier": a.tier.value,
         "status": a.status, "started_at": a.started_at, "latency_ms": a.latency_ms, "tokens_in": a.input_tokens,
         "tokens_out": a.output_tokens, "cost_micro_usd": a.cost_micro_usd, "finish_reason": a.finish_reason,
         "retries": a.retries, "error": a.error, "next_model": a.next_model,
         "next_reason_kind": a.next_reason_kind, "next_reason": a.next_reason}
        for number, a in enumerate(completion.attempts, start=1)
    ]


def eval_row(completion: CompletionMessage) -> dict[str, Any] | None:
    if completion.correct is None or completion.final_model is None:
        return None
    metadata = completion.prompt.metadata
    return {"request_id": completion.request_id, "evaluated_at": completion.completed_at,
            "model": completion.final_model, "difficulty": completion.decision.label,
            "source": metadata.get("source"), "item_id": metadata.get("item_id"), "correct": completion.correct,
            "cost_micro_usd": completion.cost_micro_usd}


async def upsert_completion(conn: AsyncConnection, completion: CompletionMessage) -> bool:
    """Write one completion inside the caller's transaction; False when a newer answer was already stored."""
    completion = storable(completion)
    cursor = await conn.execute(UPSERT_REQUEST_SQL, request_row(completion))
    if await cursor.fetchone() is None:
        return False
    async with conn.cursor() as cur:
        await cur.execute(DELETE_ATTEMPTS_SQL, (completion.request_id,))
        attempts = attempt_rows(completion)
        if attempts:
            await cur.executemany(INSERT_ATTEMPT_SQL, attempts)
        evaluation = eval_row(completion)
        if evaluation is None:
            await cur.execute(DELETE_EVAL_SQL, (completion.request_id,))
        else:
            await cur.execute(UPSERT_EVAL_SQL, evaluation)
    return True


async def upsert_completions(conn: AsyncConnection, completions: Sequence[CompletionMessage]) -> int:
    """Write a batch in one transaction; returns how many rows were inserted or updated."""
    written = 0
    async with conn.transaction():
        for completion in completions:
            written += await upsert_completion(conn, completion)
    return written


# One request, its attempts in chain order and its grading: the API's and the dashboard's detail views.
REQUEST_BY_ID_SQL = "SELECT * FROM requests WHERE request_id = %(id)s"
ATTEMPTS_BY_ID_SQL = f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM request_attempts WHERE request_id = %(id)s ORDER BY attempt_no"
EVAL_BY_ID_SQL = f"SELECT {', '.join(EVAL_COLUMNS)} FROM model_eval WHERE request_id = %(id)s"


async def fetch_request(conn: AsyncConnection, request_id: str) -> dict[str, Any] | None:
    """One request row with its attempt rows under ``attempt_rows``, or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(REQUEST_BY_ID_SQL, {"id": request_id})
        row = await cur.fetchone()
        if row is None:
            return None
        await cur.execute(ATTEMPTS_BY_ID_SQL, {"id": request_id})
        row["attempt_rows"] = await cur.fetchall()
        await cur.execute(EVAL_BY_ID_SQL, {"id": request_id})
        row["evaluation"] = await cur.fetchone()
    return row
