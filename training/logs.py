"""Logged traffic as training and replay data: each recorded request with its answer and its latest grade.

Shared by ``training.export`` (graded answers -> the outcomes format) and ``training.replay_logs`` (shadow
replay of a candidate router on what the log already holds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.outcomes import ModelOutcome, OutcomeRecord

LOGGED_SQL = """
SELECT r.request_id, r.created_at, r.tenant, r.user_id, r.prompt, r.max_tokens, r.metadata, r.status,
       r.final_model, r.tokens_in, r.tokens_out, r.response, r.finish_reason, r.cost_micro_usd, r.experiment_id,
       r.arm, g.correct
FROM requests r
LEFT JOIN LATERAL (
    SELECT e.correct FROM model_eval e
    WHERE e.request_id = r.request_id AND (%(sources)s::text[] IS NULL OR e.feedback_source = ANY(%(sources)s))
    ORDER BY e.evaluated_at DESC, e.feedback_source LIMIT 1) g ON true
WHERE (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR r.created_at < %(until)s)
  AND (%(tenant)s::text IS NULL OR r.tenant = %(tenant)s)
  AND (%(experiment)s::text IS NULL OR r.experiment_id = %(experiment)s)
ORDER BY r.created_at, r.request_id
"""


@dataclass(frozen=True)
class LoggedRequest:
    request_id: str
    created_at: datetime
    tenant: str
    user_id: str | None
    prompt: str
    max_tokens: int
    metadata: dict[str, Any]
    status: str
    final_model: str | None
    tokens_in: int
    tokens_out: int
    response: str | None
    finish_reason: str | None
    cost_micro_usd: int
    experiment_id: str | None
    arm: str | None
    correct: bool | None  # the latest grade; None: not graded

    @property
    def answered(self) -> bool:
        return self.status == "ok" and self.final_model is not None and self.response is not None


def load_logged(conn: Any, *, since: datetime | None = None, until: datetime | None = None, tenant: str | None = None,
                experiment: str | None = None, sources: Sequence[str] | None = None) -> list[LoggedRequest]:
    cursor = conn.execute(LOGGED_SQL, {"since": since, "until": until, "tenant": tenant, "experiment": experiment,
                                       "sources": list(sources) if sources else None})
    return [LoggedRequest(*row) for row in cursor.fetchall()]


@dataclass
class LoggedAnswer:
    """One model's latest logged answer to one prompt, with its grade (None: ungraded)."""

    model_id: str
    correct: bool | None
    input_tokens: int
    output_tokens: int
    response: str
    finish_reason: str | None
    created_at: datetime


@dataclass
class PromptLog:
    """Every model's latest answer to one prompt text (one tenant), across all the requests that sent it."""

    tenant: str
    prompt: str
    source: str
    category: str | None
    answers: dict[str, LoggedAnswer] = field(default_factory=dict)
    graded: dict[str, LoggedAnswer] = field(default_factory=dict)

    @property
    def record_id(self) -> str:
        digest = hashlib.sha256(self.tenant.encode() + b"\x00" + self.prompt.encode()).hexdigest()
        return f"traffic/{digest[:20]}"

    def to_record(self) -> OutcomeRecord:
        """The outcomes record of the graded answers (the format of the data README)."""
        return OutcomeRecord(id=self.record_id, source=self.source, prompt=self.prompt, category=self.category,
                             outcomes={model: ModelOutcome(correct=bool(a.correct), answer=None,
                                                           input_tokens=a.input_tokens, output_tokens=a.output_tokens,
                                                           response=a.response)
                                       for model, a in sorted(self.graded.items())})


def group_by_prompt(requests: Sequence[LoggedRequest], model_ids: dict[str, str] | None = None,
                    default_source: str = "traffic") -> dict[tuple[str, str], PromptLog]:
    """Logged answers by (tenant, prompt text): per model the latest answer, and the latest graded one.
    ``model_ids`` maps the registry's model names to the ids used in outcomes files (its ``model_id``)."""
    model_ids = model_ids or {}
    logs: dict[tuple[str, str], PromptLog] = {}
    for request in sorted(requests, key=lambda r: (r.created_at, r.request_id)):
        if not request.answered:
            continue
        key = (request.tenant, request.prompt)
        log = logs.get(key)
        if log is None:
            log = logs[key] = PromptLog(request.tenant, request.prompt,
                                        request.metadata.get("source") or default_source,
                                        request.metadata.get("category"))
        model = model_ids.get(request.final_model or "", request.final_model or "")
        answer = LoggedAnswer(model, request.correct, request.tokens_in, request.tokens_out, request.response or "",
                              request.finish_reason, request.created_at)
        log.answers[model] = answer  # later requests replace earlier ones
        if request.correct is not None:
            log.graded[model] = answer
    return logs
