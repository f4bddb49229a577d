"""Message schemas shared by every stage: ingest, the Faust agents, the providers, the sink and replay.

Every Kafka value is one of these models serialised as JSON. Producers writing straight to the
prompts topic send a ``PromptMessage``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Label = Literal["simple", "medium", "complex"]
LABELS: tuple[Label, ...] = ("simple", "medium", "complex")
# Recorded as a request's difficulty when no classifier prediction could be made for it.
UNCLASSIFIED = "unclassified"


class Tier(str, Enum):
    cheap = "cheap"
    mid = "mid"
    expensive = "expensive"


TIER_ORDER: tuple[Tier, ...] = (Tier.cheap, Tier.mid, Tier.expensive)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Metadata key of a demo request whose created_at was spread over simulated days (``--simulate-days``): its
# attempts and completion are stamped on the same simulated clock, and the dashboard labels it simulated.
SIMULATED_TIME_KEY = "simulated_time"


def new_request_id() -> str:
    return uuid.uuid4().hex


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str):
        return cls.model_validate_json(raw)


ChatRole = Literal["system", "developer", "user", "assistant", "tool"]


class ChatTurn(_Message):
    """One turn of a conversation as the OpenAI chat API carries it. ``content`` is text or a list of parts
    (``{"type": "text", "text": ...}``; other part types are passed to the provider as sent)."""

    model_config = ConfigDict(extra="allow")

    role: ChatRole
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "\n".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


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
    # Set by the API when it accepts the request: past it, the request is recorded as expired.
    deadline_at: datetime | None = None
    # The conversation as the caller sent it (OpenAI chat form). When absent, the conversation is one user
    # turn holding ``prompt``; when present, ``prompt`` is its last user turn's text (what the classifier reads).
    messages: list[ChatTurn] | None = None
    # Sampling and tool parameters passed as sent to the model that answers (temperature, top_p, stop, seed,
    # response_format, tools, tool_choice, ...).
    params: dict[str, Any] = Field(default_factory=dict)
    # A configured model's name: call that model directly (no routing, no escalation), priced the same way.
    requested_model: str | None = None
    # The cheapest tier this request may go to (a conversation kept on the model an earlier turn used).
    min_tier: Tier | None = None
    # The caller reads the answer as a stream: tokens go to ``reply_to`` as ChunkMessages while generated.
    stream: bool = False

    @model_validator(mode="before")
    @classmethod
    def _prompt_from_messages(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("prompt") and data.get("messages"):
            data = {**data, "prompt": last_user_text(data["messages"])}
        return data
    # Set by ingest from the caller's API key (None: produced straight to the broker).
    key_id: str | None = None
    # How the sink stores the prompt and the answer: as sent, PII-redacted, or not at all (counts and costs only).
    storage: Literal["full", "redacted", "none"] = "full"
    # Routing picks no tier above this one (set by ingest when the caller's budget is near and the operator
    # asked for cheaper tiers then); escalation after a refused answer may still go higher.
    max_tier: Tier | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty or whitespace")
        return value

    @property
    def conversation(self) -> list[ChatTurn]:
        return self.messages if self.messages else [ChatTurn(role="user", content=self.prompt)]

    @property
    def conversation_text(self) -> str:
        """Every turn's text, for the context-window check: the whole conversation goes to the model."""
        return "\n".join(turn.text for turn in self.conversation)

    @property
    def has_tools(self) -> bool:
        return bool(self.params.get("tools"))


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user turn (else of the last turn with text)."""
    turns = [m if isinstance(m, ChatTurn) else ChatTurn.model_validate(m) for m in messages]
    for turn in reversed(turns):
        if turn.role == "user" and turn.text.strip():
            return turn.text
    for turn in reversed(turns):
        if turn.text.strip():
            return turn.text
    return ""


class Prediction(_Message):
    """What a difficulty classifier says about one prompt."""

    label: Label
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: dict[str, float]
    # The prompt's topic (e.g. an exam subject) when the router has a topic model.
    topic: str | None = None


class RoutingDecision(_Message):
    """The routing policy's choice for one prompt, with the reasons that led to it."""

    # The classifier's prediction. None on a direct request (``requested_model``) that the API sent straight to
    # its model's topic: the provider agent adds the prediction while the model answers (for A/B), so a
    # completion carries it unless the classifier failed.
    label: Label | None = None
    confidence: float = 0.0
    probabilities: dict[str, float] = Field(default_factory=dict)
    model: str
    tier: Tier
    reasons: list[str]
    policy: str
    classifier: str = ""
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
    # The models to call after ``model``, in order, when its answer is rejected or it fails (a pool
    # policy's plan for this prompt); empty on a ladder: the tiers above, in order.
    plan: list[str] = Field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def difficulty(self) -> str:
        """The predicted label as recorded and shown: ``unclassified`` when the classifier gave none."""
        return self.label or UNCLASSIFIED


AttemptStatus = Literal["ok", "error", "rejected"]

# Why the next attempt happened. After a rejected answer (an escalation): the answer check that refused it.
# After a failed call (a fallback): the kind of failure.
EscalationReasonKind = Literal["refusal", "short", "length", "verifier"]
FallbackReasonKind = Literal["error", "timeout", "circuit_open"]
# On a failed attempt with no ``next_model``: a fallback was refused because the next model costs more than the
# configured multiple of the routed model's price (settings.fallback_cost_cap).
CostCapKind = Literal["cost_cap"]
NextReasonKind = EscalationReasonKind | FallbackReasonKind | CostCapKind


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
    # Times this request was parked because its allowed models were down (stream_processors/parking.py); its
    # ``attempts`` then hold every call made so far, and the ladder starts again from ``target_model``.
    parks: int = Field(0, ge=0)


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
    # Tool calls of the final answer, in the OpenAI chat shape.
    tool_calls: list[dict[str, Any]] | None = None
    # Streamed requests: how many ChunkMessages went to the reply topic before this completion, and the
    # time from the prompt's creation to the first token published (the first chunk, or this completion
    # when the answer was held back for its answer checks).
    streamed_chunks: int = 0
    ttft_ms: float | None = None
    # The counterfactual model's recorded correctness on this prompt (replay only): the accuracy baseline.
    counterfactual_correct: bool | None = None
    # What the attempts whose answers were not returned cost (rejected before an escalation, billed errors).
    overhead_micro_usd: int = 0
    # Replay only: False when no model had a recorded answer and the stub answered (ungraded).
    recorded: bool | None = None
    # Set by the ladder on a failure that a later try may not meet (the allowed models were down: outage errors,
    # open circuits, a fallback beyond the cost cap); the provider agent parks such a request until its deadline.
    # Never serialised: it only passes from the executor to the agent.
    retryable: bool = Field(False, exclude=True)

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
    # Length of the original value, and whether ``raw`` keeps only its start (dead letters are capped).
    raw_chars: int | None = None
    raw_truncated: bool = False


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


class ParkedNotice(_Message):
    """Told to the waiting API process (on its reply topic) when a request is parked because every model it may use
    is down: a caller that times out meanwhile gets 503 with Retry-After instead of a bare timeout."""

    request_id: str
    retry_at: datetime
    deadline_at: datetime
    parks: int = Field(ge=1)
    error: str | None = None


class ChunkMessage(_Message):
    """Part of an answer streamed to the waiting API process on its reply topic, keyed by request id.

    ``seq`` counts from 0 per request; the request's CompletionMessage follows its last chunk."""

    request_id: str
    seq: int = Field(ge=0)
    model: str
    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None
