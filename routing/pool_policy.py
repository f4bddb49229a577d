"""Routing across a pool of models: per prompt kind, which model first, whether to check its answer,
which model next, and when to stop. The three-tier ladder is one configuration of it.

A kind's plan has up to three stages:

    first   always called; its answer is accepted when p(right) >= accept_first_at (or when no
            other stage follows)
    second  called when the first answer is rejected; accepted when it agrees with the first answer
            (``accept_agreement``) or when p(right) >= accept_second_at (or when no final stage follows)
    final   called when both are rejected; its answer stands

Any model can take any stage, so a plan may start at any price and skip any model. ``p(right)`` is
the pool answer model's estimate (``AnswerModel``): a logistic head per model on the answer's
features (parsed answer present, JSON well-formed, length, hedging, whether the reasoning reaches
the answer it commits to, how much of the chosen option's wording it uses). The answers already
given feed the second stage as agreement. The model judges the answer it is shown; it never runs
the prompt's code nor calls another model.

Decisions travel in ``RoutingDecision.plan`` (the models after the first) and the
``PoolAnswerCheck`` answer check; ``routing.escalation.Escalation`` walks the plan, so the live
pipeline, the offline harness and replay share the executor's one code path. Numpy only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.messages import Prediction, PromptMessage, RoutingDecision, Tier
from core.registry import ModelRegistry
from routing.answer_checks import Answer, AnswerCheck
from routing.answer_features import (
    answer_features,
    consistency_features,
    option_support_features,
    parse_answer,
    prompt_features,
)
from routing.policy import RoutingPolicy
from routing.prompt_kind import routing_kind, settings_for_kind
from routing.verifier import LogisticHead, previous_texts

NEVER = 2.0  # an acceptance threshold no probability reaches: always go on to the next stage

# The answer features that do not depend on earlier answers (agreement is a rule of its own).
_SINGLE_ANSWER = slice(0, 7)


def pool_answer_features(prompt: str, response: str, input_tokens: int, output_tokens: int) -> np.ndarray:
    return np.asarray(
        prompt_features(prompt)
        + answer_features(response, input_tokens, output_tokens, [])[_SINGLE_ANSWER]
        + consistency_features(prompt, response)
        + option_support_features(prompt, response),
        dtype=np.float64,
    )


@dataclass
class AnswerModel:
    """p(this model's answer is right) from the answer's features, one logistic head per model."""

    feature_mean: np.ndarray
    feature_scale: np.ndarray
    heads: dict[str, LogisticHead]

    FILE = "answer_model.json"

    def probability(self, model: str, x: np.ndarray) -> np.ndarray:
        head = self.heads.get(model)
        z = (np.atleast_2d(x) - self.feature_mean) / self.feature_scale
        return head.prob(z) if head is not None else np.full(len(z), 0.5)

    def to_json(self) -> dict[str, Any]:
        return {"feature_mean": self.feature_mean.tolist(), "feature_scale": self.feature_scale.tolist(),
                "heads": {m: h.to_json() for m, h in self.heads.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AnswerModel:
        return cls(np.asarray(data["feature_mean"], dtype=np.float64), np.asarray(data["feature_scale"], dtype=np.float64),
                   {m: LogisticHead.from_json(h) for m, h in data["heads"].items()})

    def save(self, directory: Path) -> None:
        (directory / self.FILE).write_text(json.dumps(self.to_json()) + "\n")

    @classmethod
    def load(cls, path: Path) -> AnswerModel:
        return cls.from_json(json.loads(path.read_text()))


@dataclass(frozen=True)
class PoolPlan:
    first: str
    second: str | None = None
    final: str | None = None
    accept_first_at: float = NEVER
    accept_second_at: float = NEVER
    accept_agreement: bool = False

    def __post_init__(self) -> None:
        models = [m for m in (self.first, self.second, self.final) if m is not None]
        if len(set(models)) != len(models):
            raise ValueError(f"a pool plan calls each model at most once, got {models}")

    @property
    def after_first(self) -> list[str]:
        return [m for m in (self.second, self.final) if m is not None]

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        text = self.first
        if self.after_first:
            text += f" (keep at p>={self.accept_first_at:.2f})" if self.accept_first_at < NEVER else ""
        if self.second:
            rule = [f"p>={self.accept_second_at:.2f}"] if self.accept_second_at < NEVER else []
            rule += ["agreement"] if self.accept_agreement else []
            text += f" -> {self.second}" + (f" (keep on {' or '.join(rule)})" if rule and self.final else "")
        if self.final:
            text += f" -> {self.final}"
        return text


class PoolPolicy(RoutingPolicy):
    """The first model of the prompt kind's plan; keyword overrides and premium customers go straight
    to the reference model (the pool's guard rails, as the ladder's bump a tier)."""

    name = "pool"

    def __init__(self, reference: str, default: dict[str, Any], by_kind: dict[str, dict[str, Any]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        self.default = PoolPlan(**default)
        self.by_kind = {kind: PoolPlan(**plan) for kind, plan in (by_kind or {}).items()}

    def params(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"reference": self.reference, "default": self.default.as_json()}
        if self.by_kind:
            doc["by_kind"] = {kind: plan.as_json() for kind, plan in sorted(self.by_kind.items())}
        return doc

    def plan_for(self, kind: str) -> PoolPlan:
        return settings_for_kind(self.by_kind, kind, self.default)

    def overridden(self, prompt: PromptMessage) -> str | None:
        """Why this prompt goes straight to the reference model, or None."""
        if self._override_re is not None and (match := self._override_re.search(prompt.prompt)):
            return f"keyword override {match.group(1).lower()!r}: straight to {self.reference}"
        if self.premium_bump and prompt.customer_tier == "premium":
            return f"premium customer: straight to {self.reference}"
        return None

    def base_tier(self, prediction: Prediction, prompt: PromptMessage) -> tuple[Tier, str]:  # pragma: no cover
        raise NotImplementedError("the pool policy picks models, not tiers: use decide()")

    def decide(self, prompt: PromptMessage, prediction: Prediction, registry: ModelRegistry,
               classifier_name: str) -> RoutingDecision:
        kind = routing_kind(prompt.prompt, prediction.topic)
        plan = self.plan_for(kind)
        override = self.overridden(prompt)
        if override is not None:
            first, after, reasons = self.reference, [], [f"{kind}: plan {plan.describe()}", override]
        else:
            first, after, reasons = plan.first, plan.after_first, [f"{kind}: plan {plan.describe()}"]
        spec = registry.get(first)
        return RoutingDecision(label=prediction.label, confidence=prediction.confidence,
                               probabilities=prediction.probabilities, model=spec.name, tier=spec.tier,
                               reasons=reasons, policy=self.name, classifier=classifier_name, prompt_kind=kind,
                               topic=prediction.topic, plan=list(after))


def accept_stage(plan: PoolPlan, model: str, p_right: float, agrees: bool) -> bool:
    """The plan's rule for an answer of ``model``: the one rule the live check and the training
    simulator (``training.pool``, vectorised) apply."""
    if model == plan.first and plan.after_first:
        return p_right >= plan.accept_first_at
    if model == plan.second and plan.final is not None:
        return (plan.accept_agreement and agrees) or p_right >= plan.accept_second_at
    return True  # the last stage, or a model outside the plan (a fallback): its answer stands


class PoolAnswerCheck(AnswerCheck):
    """Rejects an answer when the prompt kind's plan says to go on to its next model."""

    name = "pool_answer"
    reason_kind = "verifier"  # a learned judgement of the answer, recorded like the ladder's verifier

    def __init__(self, model: AnswerModel, policy: PoolPolicy) -> None:
        self.model = model
        self.policy = policy

    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        kind = answer.kind or routing_kind(prompt.prompt, None)
        plan = self.policy.plan_for(kind)
        if answer.model not in (plan.first, plan.second):
            return None  # the last stage, the reference after an override, or a fallback: it stands
        x = pool_answer_features(prompt.prompt, answer.text, answer.input_tokens, answer.output_tokens)
        p_right = float(self.model.probability(answer.model, x)[0])
        parsed = parse_answer(answer.text)
        agrees = parsed is not None and any(parse_answer(text) == parsed for text in previous_texts(answer))
        if accept_stage(plan, answer.model, p_right, agrees):
            return None
        threshold = plan.accept_first_at if answer.model == plan.first else plan.accept_second_at
        shown = "never" if threshold >= NEVER else f"{threshold:.2f}"
        return f"pool plan: p(right)={p_right:.2f} < {shown}" + ("" if answer.model == plan.first else ", no agreement")
