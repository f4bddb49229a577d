"""The one place that writes completions to Postgres (and reads a request back).

Writes are idempotent by request id: a redelivered completion updates its row instead of adding one,
and its attempts and evaluation rows are replaced in the same transaction. When two completions of the
same request arrive (a redelivered prompt was answered twice), the later ``completed_at`` wins and the
row, its attempts and its evaluation always describe the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.messages import CompletionMessage, FeedbackMessage

REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id", "created_at", "completed_at", "tenant", "user_id", "customer_tier", "prompt", "prompt_chars",
    "max_tokens", "difficulty", "confidence", "probabilities", "decision_reason", "policy", "classifier",
    "routed_model", "final_model", "status", "attempts", "attempt_count", "escalated", "fell_back", "tokens_in",
    "tokens_out", "latency_ms", "cost_micro_usd", "counterfactual_model", "counterfactual_cost_micro_usd",
    "response", "finish_reason", "error", "metadata", "experiment_id", "arm", "router_version",
    "ttft_ms",
    # 0006: the savings definition's inputs (core/savings.py)
    "correct", "counterfactual_correct", "overhead_micro_usd", "recorded",
    "key_id",
)

UPSERT_REQUEST_SQL = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in REQUEST_COLUMNS)}) "
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in REQUEST_COLUMNS if c != "request_id")
    # An older duplicate never overwrites a newer answer, and one tenant's message never another tenant's row.
    + " WHERE requests.completed_at <= EXCLUDED.completed_at AND requests.tenant = EXCLUDED.tenant"
    " RETURNING request_id"
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

# The grade a replayed answer carries (its recorded correctness); feedback has sources of its own.
REPLAY_FEEDBACK_SOURCE = "replay"

# The sink writes whose grade it is too: the replay's recorded correctness, under its own feedback source.
SINK_EVAL_COLUMNS: tuple[str, ...] = (*EVAL_COLUMNS, "feedback_source", "tenant")

UPSERT_EVAL_SQL = (
    f"INSERT INTO model_eval ({', '.join(SINK_EVAL_COLUMNS)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in SINK_EVAL_COLUMNS)}) "
    "ON CONFLICT (request_id, feedback_source) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in SINK_EVAL_COLUMNS if c not in ("request_id", "feedback_source"))
)

# Only the replay grade follows the answer; feedback on the request stays.
DELETE_EVAL_SQL = f"DELETE FROM model_eval WHERE request_id = %s AND feedback_source = '{REPLAY_FEEDBACK_SOURCE}'"

# The sums core.savings.SavingsTotals is built from, over ``requests r`` (one pass; no join). Every place that
# shows savings from Postgres selects these, so the console and the dashboard agree to the micro-USD.
_SAVINGS_SUMS = {
    "requests": "count(*)",
    "spend_micro_usd": "coalesce(sum(r.cost_micro_usd), 0)",
    "comparable_requests": "count(r.counterfactual_cost_micro_usd)",
    "comparable_spend_micro_usd":
        "coalesce(sum(r.cost_micro_usd) FILTER (WHERE r.counterfactual_cost_micro_usd IS NOT NULL), 0)",
    "baseline_micro_usd": "coalesce(sum(r.counterfactual_cost_micro_usd), 0)",
    "graded": "count(*) FILTER (WHERE r.correct IS NOT NULL AND r.counterfactual_correct IS NOT NULL)",
    "correct": "count(*) FILTER (WHERE r.correct AND r.counterfactual_correct IS NOT NULL)",
    "baseline_correct": "count(*) FILTER (WHERE r.counterfactual_correct AND r.correct IS NOT NULL)",
    "overhead_micro_usd": "coalesce(sum(r.overhead_micro_usd), 0)",
}


def savings_totals_columns(prefix: str = "") -> str:
    """SELECT-list of the savings sums over ``requests r``, each aliased ``<prefix><SavingsTotals field>``."""
    return ",\n".join(f"({expr})::bigint AS {prefix}{name}" for name, expr in _SAVINGS_SUMS.items())


SAVINGS_TOTALS_COLUMNS = savings_totals_columns()

# Spend attributed to every model billed, attempt by attempt (a rejected cheap answer is the cheap model's).
BILLED_BY_MODEL_SQL = """
    SELECT a.model, count(*)::bigint AS calls,
           coalesce(sum(a.cost_micro_usd), 0)::bigint AS billed_micro_usd
    FROM request_attempts a WHERE a.request_id = ANY(%(ids)s) GROUP BY a.model ORDER BY a.model
"""


def without_nul(value: Any) -> Any:
    """Postgres text and jsonb cannot hold NUL; a model that emits one must not cost us the row."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def storable(completion: CompletionMessage) -> CompletionMessage:
    return CompletionMessage.model_validate(without_nul(completion.model_dump()))


def request_row(completion: CompletionMessage) -> dict[str, Any]:
    prompt, decision = completion.prompt, completion.decision
    attempts = completion.attempts
    # storage "none": the tenant keeps no text in the database, only counts and costs.
    keep_text = prompt.storage != "none"
    return {
        "request_id": completion.request_id,
        "created_at": prompt.created_at,
        "completed_at": completion.completed_at,
        "tenant": prompt.tenant,
        "user_id": prompt.user,
        "customer_tier": prompt.customer_tier,
        "prompt": prompt.prompt if keep_text else "",
        "prompt_chars": len(prompt.prompt),
        "max_tokens": prompt.max_tokens,
        "difficulty": decision.difficulty,
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
        "response": completion.response if keep_text else None,
        "finish_reason": completion.finish_reason,
        "error": completion.error,
        "metadata": Jsonb(prompt.metadata if keep_text else {}),
        "experiment_id": decision.experiment_id,
        "arm": decision.arm,
        "router_version": decision.router_version,
        "ttft_ms": completion.ttft_ms,
        "correct": completion.correct,
        "counterfactual_correct": completion.counterfactual_correct,
        "overhead_micro_usd": completion.overhead_micro_usd,
        "recorded": completion.recorded,
        "key_id": prompt.key_id,
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
            "model": completion.final_model, "difficulty": completion.decision.difficulty,
            "source": metadata.get("source"), "item_id": metadata.get("item_id"), "correct": completion.correct,
            "cost_micro_usd": completion.cost_micro_usd, "feedback_source": REPLAY_FEEDBACK_SOURCE,
            "tenant": completion.prompt.tenant}


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
# The replay's grade first (a request has one per feedback source).
EVAL_BY_ID_SQL = (f"SELECT {', '.join(EVAL_COLUMNS)} FROM model_eval WHERE request_id = %(id)s"
                  f" ORDER BY feedback_source = '{REPLAY_FEEDBACK_SOURCE}' DESC, evaluated_at DESC")


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
        # Every grade: the replay's and each feedback source's.
        await cur.execute("SELECT * FROM model_eval WHERE request_id = %s ORDER BY evaluated_at DESC", (request_id,))
        row["evaluations"] = await cur.fetchall()
    return row


# ----------------------------------------------------------------------------- feedback


class UnknownRequest(LookupError):
    """No request with this id is recorded for this tenant (another tenant's request reads the same)."""


FEEDBACK_REQUEST_SQL = (
    "SELECT tenant, coalesce(final_model, routed_model) AS model, difficulty, metadata->>'source' AS source,"
    " metadata->>'item_id' AS item_id, cost_micro_usd FROM requests WHERE request_id = %s"
)

UPSERT_FEEDBACK_SQL = (
    "INSERT INTO model_eval (request_id, evaluated_at, model, difficulty, source, item_id, correct, cost_micro_usd,"
    " feedback_source, human_score, pass_fail, notes, tenant)"
    " VALUES (%(request_id)s, %(evaluated_at)s, %(model)s, %(difficulty)s, %(source)s, %(item_id)s, %(correct)s,"
    " %(cost_micro_usd)s, %(feedback_source)s, %(human_score)s, %(pass_fail)s, %(notes)s, %(tenant)s)"
    " ON CONFLICT (request_id, feedback_source) DO UPDATE SET evaluated_at = EXCLUDED.evaluated_at,"
    " correct = EXCLUDED.correct, human_score = EXCLUDED.human_score, pass_fail = EXCLUDED.pass_fail,"
    " notes = EXCLUDED.notes RETURNING (xmax = 0) AS inserted"
)


def feedback_passes(feedback: FeedbackMessage, pass_score: int) -> bool:
    """Thumbs when given, else the score against the pass mark."""
    if feedback.pass_fail is not None:
        return feedback.pass_fail
    assert feedback.score is not None
    return feedback.score >= pass_score


async def record_feedback(conn: AsyncConnection, feedback: FeedbackMessage, pass_score: int) -> str:
    """Write one grade to ``model_eval`` (one row per request and feedback source: a repeat replaces it);
    returns "created" or "updated". Raises UnknownRequest, writing nothing, for a request that is not
    recorded or belongs to another tenant."""
    feedback = FeedbackMessage.model_validate(without_nul(feedback.model_dump()))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(FEEDBACK_REQUEST_SQL, (feedback.request_id,))
        request = await cur.fetchone()
        if request is None or request["tenant"] != feedback.tenant:
            raise UnknownRequest(f"no request {feedback.request_id!r} is recorded for tenant {feedback.tenant!r}")
        await cur.execute(UPSERT_FEEDBACK_SQL, {
            "request_id": feedback.request_id, "evaluated_at": feedback.created_at, "model": request["model"],
            "difficulty": request["difficulty"], "source": request["source"], "item_id": request["item_id"],
            "correct": feedback_passes(feedback, pass_score), "cost_micro_usd": request["cost_micro_usd"],
            "feedback_source": feedback.source, "human_score": feedback.score, "pass_fail": feedback.pass_fail,
            "notes": feedback.notes, "tenant": feedback.tenant})
        inserted = (await cur.fetchone())["inserted"]
    return "created" if inserted else "updated"


# ----------------------------------------------------------------------------- experiments

EXPERIMENT_COLUMNS = ("experiment_id", "tenant", "salt", "unit", "arms", "description", "created_at", "updated_at",
                      "ended_at")


def running_experiments(conn: Connection) -> list[dict[str, Any]]:
    """Every experiment not ended, as rows (``routing.experiments.Experiment`` validates them)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {', '.join(EXPERIMENT_COLUMNS)} FROM experiments WHERE ended_at IS NULL"
                    " ORDER BY experiment_id")
        return cur.fetchall()


def list_experiments(conn: Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {', '.join(EXPERIMENT_COLUMNS)} FROM experiments ORDER BY created_at, experiment_id")
        return cur.fetchall()


def get_experiment(conn: Connection, experiment_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {', '.join(EXPERIMENT_COLUMNS)} FROM experiments WHERE experiment_id = %s",
                    (experiment_id,))
        return cur.fetchone()


def insert_experiment(conn: Connection, experiment: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO experiments (experiment_id, tenant, salt, unit, arms, description)"
        " VALUES (%(experiment_id)s, %(tenant)s, %(salt)s, %(unit)s, %(arms)s, %(description)s)",
        {**experiment, "arms": Jsonb(experiment["arms"])})


def update_experiment_arms(conn: Connection, experiment_id: str, arms: list[dict[str, Any]],
                           description: str | None = None) -> bool:
    """New arms (shares) for a running experiment; False when it is unknown or has ended."""
    cursor = conn.execute(
        "UPDATE experiments SET arms = %s, description = coalesce(%s, description), updated_at = now()"
        " WHERE experiment_id = %s AND ended_at IS NULL", (Jsonb(arms), description, experiment_id))
    return cursor.rowcount == 1


def end_experiment(conn: Connection, experiment_id: str) -> bool:
    cursor = conn.execute("UPDATE experiments SET ended_at = now(), updated_at = now()"
                          " WHERE experiment_id = %s AND ended_at IS NULL", (experiment_id,))
    return cursor.rowcount == 1


# ----------------------------------------------------------------------------- conversations

CONVERSATION_MODELS_SQL = (
    "SELECT DISTINCT final_model FROM requests WHERE metadata->>'conversation_id' = %s"
    " AND user_id IS NOT DISTINCT FROM %s AND status = 'ok' AND final_model IS NOT NULL"
)


async def conversation_models(conn: AsyncConnection, conversation_id: str, user: str | None) -> list[str]:
    """The models that answered the earlier turns of a conversation (one caller's conversation id)."""
    cursor = await conn.execute(CONVERSATION_MODELS_SQL, (conversation_id, user))
    return [row[0] for row in await cursor.fetchall()]
