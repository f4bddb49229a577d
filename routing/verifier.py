"""The learned answer verifier: accept a cheaper model's answer, or pay for the next tier up.

For an answer from tier k it estimates two probabilities from the prompt, the prompt classifier's
label probabilities and the answer itself (parsed answer present, JSON well-formed, length,
hedging, agreement with cheaper answers already given): ``p_this`` that this answer is right and
``p_up`` that the next tier's answer would be right. It escalates when the expected gain
``p_up - p_this`` is worth the next call's expected cost per request:

    escalate  iff  p_up - p_this >= margin[tier] * expected_next_cost / reference_next_cost

``margin`` is the calibrated knob (one per tier, picked by cross-validation in training). Expected
cost is per request: the prompt's input tokens and an output length predicted from this answer's,
at the next model's prices, so a verbose next model counts for what it costs.

Numpy only: the live agents and the offline harness run this same class (an ``AnswerCheck``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.messages import LABELS, TIER_ORDER, PromptMessage, Tier
from core.registry import ModelRegistry
from routing.answer_checks import Answer, AnswerCheck
from routing.answer_features import FEATURE_NAMES, verifier_features
from routing.answer_reader import AnswerReader
from routing.prompt_kind import prompt_kind, settings_for_kind


@dataclass
class LogisticHead:
    coef: np.ndarray
    intercept: float

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def to_json(self) -> dict[str, Any]:
        return {"coef": [float(c) for c in self.coef], "intercept": float(self.intercept)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogisticHead:
        return cls(np.asarray(data["coef"], dtype=np.float64), float(data["intercept"]))


@dataclass
class TierVerifier:
    """Heads for answers of one tier: is this answer right, would the next tier's be right."""

    this: LogisticHead
    up: LogisticHead
    # log1p(next output tokens) ~ a + b * log1p(this output tokens)
    next_tokens_a: float
    next_tokens_b: float
    reference_next_cost_usd: float

    def to_json(self) -> dict[str, Any]:
        return {"this": self.this.to_json(), "up": self.up.to_json(), "next_tokens_a": self.next_tokens_a,
                "next_tokens_b": self.next_tokens_b, "reference_next_cost_usd": self.reference_next_cost_usd}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TierVerifier:
        return cls(LogisticHead.from_json(data["this"]), LogisticHead.from_json(data["up"]),
                   float(data["next_tokens_a"]), float(data["next_tokens_b"]), float(data["reference_next_cost_usd"]))


@dataclass
class VerifierModel:
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    tiers: dict[str, TierVerifier]
    feature_names: tuple[str, ...] = FEATURE_NAMES
    reader: AnswerReader | None = None

    def reader_logit(self, tier: str, response: str) -> float:
        return float(self.reader.logits(tier, [response])[0]) if self.reader is not None else 0.0

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.feature_mean) / self.feature_scale

    def scores(self, tier: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``p_this`` and ``p_up`` for raw feature rows ``x`` of answers from ``tier``."""
        z = self.standardise(np.atleast_2d(x))
        head = self.tiers[tier]
        return head.this.prob(z), head.up.prob(z)

    def cost_factor(self, tier: str, input_tokens: np.ndarray, output_tokens: np.ndarray,
                    next_input_usd_per_m: float, next_output_usd_per_m: float) -> np.ndarray:
        """Expected cost of the next call for this request, relative to its average on training data."""
        head = self.tiers[tier]
        next_out = np.expm1(head.next_tokens_a + head.next_tokens_b * np.log1p(output_tokens))
        expected = (input_tokens * next_input_usd_per_m + next_out * next_output_usd_per_m) / 1e6
        return expected / max(head.reference_next_cost_usd, 1e-12)

    def to_json(self) -> dict[str, Any]:
        return {"feature_names": list(self.feature_names), "feature_mean": self.feature_mean.tolist(),
                "feature_scale": self.feature_scale.tolist(),
                "tiers": {t: v.to_json() for t, v in self.tiers.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifierModel:
        names = tuple(data["feature_names"])
        if names != FEATURE_NAMES:
            raise ValueError(f"verifier was trained on features {names}, this code computes {FEATURE_NAMES}; "
                             f"recalibrate the artifact (python -m training.train ... --reuse-classifier ARTIFACT_DIR)")
        return cls(np.asarray(data["feature_mean"]), np.asarray(data["feature_scale"]),
                   {t: TierVerifier.from_json(v) for t, v in data["tiers"].items()}, names)


def load_verifier(artifact_dir: Path, verifier_doc: dict[str, Any]) -> VerifierModel:
    """The verifier an artifact's policy names, with its answer reader when it has one."""
    model = VerifierModel.from_json(json.loads((artifact_dir / verifier_doc.get("file", "verifier.json")).read_text()))
    if verifier_doc.get("reader_file"):
        model.reader = AnswerReader.load(artifact_dir / verifier_doc["reader_file"])
    return model


def escalate_mask(p_this: np.ndarray, p_up: np.ndarray, cost_factor: np.ndarray, margin: float) -> np.ndarray:
    """The one escalation rule, shared by the live check and the calibration's vectorised replay."""
    return (p_up - p_this) >= margin * cost_factor


def previous_texts(answer: Answer) -> list[str]:
    """Cheaper answers this one is compared with; a cut-off answer has no final answer to compare."""
    return [a.text for a in answer.previous if a.finish_reason != "length"]


def label_probability_vector(probabilities: dict[str, float] | None) -> list[float]:
    if not probabilities:
        return [1.0 / len(LABELS)] * len(LABELS)
    return [float(probabilities.get(label, 0.0)) for label in LABELS]


class LearnedVerifierCheck(AnswerCheck):
    """Rejects a cheaper tier's answer when paying for the next tier is expected to be worth it."""

    name = "verifier"
    reason_kind = "verifier"

    def __init__(self, model: VerifierModel, registry: ModelRegistry, margins: dict[str, float],
                 margins_by_kind: dict[str, dict[str, float]] | None = None) -> None:
        self.model = model
        self.registry = registry
        self.margins = dict(margins)
        self.margins_by_kind = {kind: dict(m) for kind, m in (margins_by_kind or {}).items()}

    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        spec = self.registry.get(answer.model)
        tier = spec.tier.value
        margins = settings_for_kind(self.margins_by_kind, answer.kind or prompt_kind(prompt.prompt), self.margins)
        if spec.tier == Tier.expensive or tier not in self.model.tiers or tier not in margins:
            return None
        next_spec = self.registry.by_tier(TIER_ORDER[TIER_ORDER.index(spec.tier) + 1])
        x = verifier_features(prompt.prompt, label_probability_vector(answer.label_probabilities), answer.text,
                              answer.input_tokens, answer.output_tokens, previous_texts(answer),
                              self.model.reader_logit(tier, answer.text))
        p_this, p_up = self.model.scores(tier, x)
        factor = self.model.cost_factor(tier, np.asarray([answer.input_tokens]), np.asarray([answer.output_tokens]),
                                        next_spec.prices.input, next_spec.prices.output)
        margin = margins[tier]
        if escalate_mask(p_this, p_up, factor, margin)[0]:
            needed = margin * float(factor[0])
            return (f"verifier: p(right)={float(p_this[0]):.2f}, p({next_spec.name} right)={float(p_up[0]):.2f}, "
                    f"gain {float(p_up[0] - p_this[0]):.2f} >= {needed:.2f} for its cost")
        return None
