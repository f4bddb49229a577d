"""Request and response bodies of the ingest API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.messages import Attempt, CompletionMessage, PromptMessage


class PromptIn(BaseModel):
    """A prompt to route. ``request_id`` is optional: send your own to make retries idempotent."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="The prompt text; not empty, at most settings.max_prompt_chars.")
    max_tokens: int | None = Field(None, ge=1, le=128_000)
    request_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    tenant: str | None = Field(None, min_length=1, max_length=128,
                               description="The tenant comes from the API key: leave this out, or send the key's own "
                                           "tenant (an admin key may name any tenant).")
    user: str | None = Field(None, max_length=128)
    customer_tier: Literal["standard", "premium"] = "standard"
    metadata: dict[str, str] = Field(default_factory=dict)

    def to_message(self, default_max_tokens: int, tenant: str = "default") -> PromptMessage:
        fields = self.model_dump(exclude_none=True, exclude={"timeout_s"})
        fields.setdefault("max_tokens", default_max_tokens)
        fields["tenant"] = tenant
        return PromptMessage(**fields)


class GenerateIn(PromptIn):
    timeout_s: float | None = Field(None, gt=0, le=3600,
                                    description="Wait at most this long (capped by the server's generate timeout).")


class Accepted(BaseModel):
    request_id: str
    status: Literal["accepted"] = "accepted"
    status_url: str


class GenerateOut(BaseModel):
    request_id: str
    status: Literal["ok", "failed"]
    model: str | None
    routed_model: str
    difficulty: str
    confidence: float
    decision_reason: str
    response: str | None
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    cost_micro_usd: int
    counterfactual_model: str | None
    counterfactual_cost_micro_usd: int | None
    latency_ms: float
    attempts: list[Attempt]
    error: str | None
    completed_at: datetime
    # Online experiments: the experiment and arm the request was assigned to, and the router version that decided.
    experiment_id: str | None = None
    arm: str | None = None
    router_version: str | None = None
    # Replay only: False when the outcomes data has no answer to this prompt and the stub answered it.
    recorded: bool | None = None
    # Whether the answer has a recorded grade (it then counts in accuracy); live and unrecorded answers do not.
    graded: bool = False

    @classmethod
    def from_completion(cls, completion: CompletionMessage) -> GenerateOut:
        decision = completion.decision
        return cls(
            request_id=completion.request_id, status=completion.status, model=completion.final_model,
            routed_model=decision.model, difficulty=decision.difficulty, confidence=decision.confidence,
            decision_reason=decision.reason, response=completion.response, finish_reason=completion.finish_reason,
            tokens_in=completion.input_tokens, tokens_out=completion.output_tokens,
            cost_micro_usd=completion.cost_micro_usd, counterfactual_model=completion.counterfactual_model,
            counterfactual_cost_micro_usd=completion.counterfactual_cost_micro_usd,
            latency_ms=completion.latency_ms, attempts=completion.attempts, error=completion.error,
            completed_at=completion.completed_at, experiment_id=decision.experiment_id, arm=decision.arm,
            router_version=decision.router_version, recorded=completion.recorded,
            graded=completion.correct is not None,
        )


class FeedbackIn(BaseModel):
    """A grade for one of your requests: ``pass_fail`` (thumbs) and/or a 1-5 ``score``; one per (request,
    source), so sending it again replaces it. The tenant is the caller's."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    pass_fail: bool | None = None
    score: int | None = Field(None, ge=1, le=5, description="1 (bad) to 5 (excellent)")
    notes: str | None = Field(None, max_length=4000)
    source: str = Field("user", pattern=r"^[A-Za-z0-9._:-]{1,64}$",
                        description="who graded: user thumbs, a rubric, an automatic grader ...")


class FeedbackOut(BaseModel):
    request_id: str
    source: str
    status: Literal["created", "updated"]
    passed: bool
