"""Message schemas shared by every stage: ingest, the Faust agents, the providers, the sink and replay.

Every Kafka value is one of these models serialised as JSON. Producers writing straight to the
prompts topic send a ``PromptMessage``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Label = Literal["simple", "medium", "complex"]
LABELS: tuple[Label, ...] = ("simple", "medium", "complex")


class Tier(str, Enum):
    cheap = "cheap"
    mid = "mid"
    expensive = "expensive"


TIER_ORDER: tuple[Tier, ...] = (Tier.cheap, Tier.mid, Tier.expensive)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    return uuid.uuid4().hex


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str):
        return cls.model_validate_json(raw)


class PromptMessage(_Message):
    """A prompt to route. Key it by ``request_id`` on the prompts topic so its events stay ordered."""

    request_id: str = Field(default_factory=new_request_id, min_length=1, max_length=128)
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(512, ge=1, le=128_000)
    tenant: str = Field("default", min_length=1, max_length=128)
    user: str | None = Field(None, max_length=128)
    customer_tier: Literal["standard", "premium"] = "standard"
    metadata: dict[str, str] = Field(default_factory=dict)
    # Set by ingest's /generate bridge: the reply topic of the API process that waits for the answer.
    reply_to: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    # Set by ingest from the caller's API key (None: produced straight to the broker).
    key_id: str | None = None
    # How the sink stores the prompt and the answer: as sent, PII-redacted, or not at all (counts and costs only).
    storage: Literal["full", "redacted", "none"] = "full"
    # Routing picks no tier above this one (set by ingest when the caller's budget is near and the operator
    # asked for cheaper tiers then); escalation after a refused answer may still go higher.
    max_tier: Tier | None = None
    # Routing goes no higher than this tier (set when a budget is near and the operator asked for cheaper tiers).
    max_tier: Tier | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty or whitespace")
        return value


class Prediction(_Message):
    """What a difficulty classifier says about one prompt."""

    label: Label
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: dict[str, float]
    # The prompt's topic (e.g. an exam subject) when the router has a topic model.
    topic: str | None = None


class RoutingDecision(_Message):
    """The routing policy's choice for one prompt, with the reasons that led to it."""

    label: Label
    confidence: float
    probabilities: dict[str, float]
    model: str
    tier: Tier
    reasons: list[str]
    policy: str
    classifier: str
    # Kind of the prompt the policy's settings were looked up by (routing.prompt_kind): its surface
    # kind, refined by its topic when there is one ("multiple_choice/chemistry").
    prompt_kind: str | None = None
    topic: str | None = None
    # Output-token budget per tier ("cheap", "mid", "expensive") set by the policy; a model that runs
    # past it is cut off (finish_reason "length") and the ladder moves on.
    max_output_tokens: dict[str, int] = Field(default_factory=dict)
    # Online experiments (routing.experiments): the experiment and arm this request was assigned to, if any.
    experiment_id: str | None = None
    arm: str | None = None
    # Which router decided: "artifact:<sha256 prefix>" for a trained artifact, "heuristic:<policy>" otherwise.
    router_version: str | None = None
    # The artifact folder of the router that decided (its answer checks apply to the request); None: the default.
    artifact: str | None = None
    # False for a control arm: the named model answers alone (fallback on errors only, no escalation).
    escalate: bool = True

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


AttemptStatus = Literal["ok", "error", "rejected"]

# Why the next attempt happened. After a rejected answer (an escalation): the answer check that refused it.
# After a failed call (a fallback): the kind of failure.
EscalationReasonKind = Literal["refusal", "short", "length", "verifier"]
FallbackReasonKind = Literal["error", "timeout", "circuit_open"]
NextReasonKind = EscalationReasonKind | FallbackReasonKind


class Attempt(_Message):
    """One call to one model. ``rejected`` means it answered but an answer check refused the answer."""

    model: str
    tier: Tier
    status: AttemptStatus
    started_at: datetime = Field(default_factory=utcnow)
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    finish_reason: str | None = None
    retries: int = 0
    # False when the endpoint reported no usage and the tokens were counted with the model's tokenizer.
    usage_reported: bool = True
    error: str | None = None
    # The model called next and the kind of reason (read these); ``next_reason`` says it in words for people:
    # "escalate to <model>: <why>" after a rejected answer, "fallback to <model>: <error>" after a failure.
    next_model: str | None = None
    next_reason_kind: NextReasonKind | None = None
    next_reason: str | None = None

    def record_next(self, model: str, kind: NextReasonKind, why: str) -> None:
        """Record that ``model`` is called next, and why."""
        verb = "escalate" if self.status == "rejected" else "fallback"
        self.next_model, self.next_reason_kind, self.next_reason = model, kind, f"{verb} to {model}: {why}"


class RoutedMessage(_Message):
    """A classified prompt on its way to a model's topic (``route.<model>``)."""

    prompt: PromptMessage
    decision: RoutingDecision
    target_model: str
    attempts: list[Attempt] = Field(default_factory=list)
    routed_at: datetime = Field(default_factory=utcnow)


CompletionStatus = Literal["ok", "failed"]


class CompletionMessage(_Message):
    """The outcome of one request: what the sink writes and what ``/generate`` returns."""

    request_id: str
    prompt: PromptMessage
    decision: RoutingDecision
    attempts: list[Attempt]
    status: CompletionStatus
    final_model: str | None
    response: str | None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    # What the expensive model would have cost for the same tokens, for savings without guessing.
    counterfactual_model: str | None = None
    counterfactual_cost_micro_usd: int | None = None
    # Recorded correctness of the final answer, known only for replayed outcomes.
    correct: bool | None = None
    error: str | None = None
    completed_at: datetime = Field(default_factory=utcnow)

    @property
    def latency_ms(self) -> float:
        return sum(a.latency_ms for a in self.attempts)


class DeadLetterMessage(_Message):
    """A message that could not be parsed or processed, with where it came from and why."""

    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    raw: str
    error: str
    stage: str
    failed_at: datetime = Field(default_factory=utcnow)



class FeedbackMessage(_Message):
    """A grade for one recorded request: thumbs (``pass_fail``) and/or a 1-5 ``score``, from one ``source``
    (a user's thumbs, a rubric, an automatic grader). One grade per (request, source): a later one replaces it.
    Producers on the feedback topic state the request's tenant; a grade for another tenant's request is refused."""

    request_id: str = Field(min_length=1, max_length=128)
    tenant: str = Field("default", min_length=1, max_length=128)
    pass_fail: bool | None = None
    score: int | None = Field(None, ge=1, le=5)
    notes: str | None = Field(None, max_length=4000)
    source: str = Field("user", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    created_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _has_a_grade(self) -> FeedbackMessage:
        if self.pass_fail is None and self.score is None:
            raise ValueError("feedback needs pass_fail and/or score")
        return self
