"""Verifier fitting, on training data only: the answer features of every recorded answer a cascade can see,
the verifier fitted on them, and its out-of-fold scores (each prompt scored by a verifier that did not see it),
which calibration picks the margins on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression

from core.messages import TIER_ORDER, PromptMessage
from core.registry import ModelRegistry
from routing.answer_checks import ANSWER_CHECKS, DEFAULT_CHECKS, Answer
from routing.answer_features import verifier_features
from routing.verifier import LogisticHead, TierVerifier, VerifierModel
from training.data import LadderData, kfold_by_source


@dataclass
class AnswerMatrices:
    """Verifier features of every recorded answer a cascade can see, per (tier, called-after-cheap)."""

    cheap: np.ndarray
    mid_after_cheap: np.ndarray
    mid_alone: np.ndarray
    input_tokens: np.ndarray  # (n, 3)
    output_tokens: np.ndarray  # (n, 3)
    default_reject: np.ndarray  # (n, 3) bool: the seed checks (refusal, empty, truncated) reject it

    def subset(self, rows: np.ndarray) -> AnswerMatrices:
        return AnswerMatrices(self.cheap[rows], self.mid_after_cheap[rows], self.mid_alone[rows],
                              self.input_tokens[rows], self.output_tokens[rows], self.default_reject[rows])


def answer_matrices(data: LadderData, label_probabilities: np.ndarray,
                    reader_logits: np.ndarray | None = None) -> AnswerMatrices:
    """``reader_logits``: (n, 2) answer-reader log-odds of the cheap and mid answers (None: no reader)."""
    reader_logits = np.zeros((data.n, 2)) if reader_logits is None else reader_logits
    checks = [ANSWER_CHECKS[name]() for name in DEFAULT_CHECKS]
    cheap_m, mid_m, _ = data.ladder.models
    rows_cheap, rows_mid_prev, rows_mid = [], [], []
    n = data.n
    in_tok = np.zeros((n, 3))
    out_tok = np.zeros((n, 3))
    reject = np.zeros((n, 3), dtype=bool)
    for i, (record, probs) in enumerate(zip(data.records, label_probabilities, strict=True)):
        oc, om = record.outcomes[cheap_m], record.outcomes[mid_m]
        read_cheap, read_mid = reader_logits[i]
        rows_cheap.append(verifier_features(record.prompt, probs, oc.response, oc.input_tokens, oc.output_tokens, [],
                                            read_cheap))
        rows_mid_prev.append(verifier_features(record.prompt, probs, om.response, om.input_tokens, om.output_tokens,
                                               [oc.response], read_mid))
        rows_mid.append(verifier_features(record.prompt, probs, om.response, om.input_tokens, om.output_tokens, [],
                                          read_mid))
        prompt = PromptMessage(prompt=record.prompt)
        for k, model in enumerate(data.ladder.models):
            o = record.outcomes[model]
            in_tok[i, k], out_tok[i, k] = o.input_tokens, o.output_tokens
            answer = Answer(model, o.response, "stop", o.output_tokens, input_tokens=o.input_tokens)
            reject[i, k] = any(c.reject_reason(prompt, answer) for c in checks)
    return AnswerMatrices(np.asarray(rows_cheap), np.asarray(rows_mid_prev), np.asarray(rows_mid), in_tok, out_tok,
                          reject)


def fit_logistic_head(x: Any, y: np.ndarray, c: float, max_iter: int = 5000) -> LogisticHead:
    """A logistic head on ``x`` (dense or sparse); a constant one when ``y`` has one class only."""
    if y.min() == y.max():  # one class only: a constant head
        p = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        return LogisticHead(np.zeros(x.shape[1]), float(np.log(p / (1 - p))))
    model = LogisticRegression(C=c, max_iter=max_iter).fit(x, y)
    return LogisticHead(model.coef_[0].astype(np.float64), float(model.intercept_[0]))


def fit_verifier(data: LadderData, m: AnswerMatrices, rows: np.ndarray | None = None, c: float = 0.5) -> VerifierModel:
    rows = np.arange(data.n) if rows is None else rows
    stacked = np.vstack([m.cheap[rows], m.mid_after_cheap[rows], m.mid_alone[rows]])
    mean = stacked.mean(axis=0)
    scale = stacked.std(axis=0)
    scale[scale < 1e-9] = 1.0

    def z(x: np.ndarray) -> np.ndarray:
        return (x - mean) / scale

    y = data.correct[rows].astype(int)
    tiers: dict[str, TierVerifier] = {}
    situations = [((m.cheap[rows],), "cheap"), ((m.mid_after_cheap[rows], m.mid_alone[rows]), "mid")]
    for k, (x_parts, tier) in enumerate(situations):
        x = z(np.vstack(x_parts))
        reps = len(x_parts)
        this = fit_logistic_head(x, np.tile(y[:, k], reps), c)
        up = fit_logistic_head(x, np.tile(y[:, k + 1], reps), c)
        reg = LinearRegression().fit(np.log1p(m.output_tokens[rows, k])[:, None], np.log1p(m.output_tokens[rows, k + 1]))
        reference = float(data.cost_usd[rows, k + 1].mean())
        tiers[tier] = TierVerifier(this, up, float(reg.intercept_), float(reg.coef_[0]), reference)
    return VerifierModel(mean, scale, tiers)


@dataclass
class VerifierScores:
    """p_this, p_up and cost factor per row for the three answer situations."""

    cheap: tuple[np.ndarray, np.ndarray, np.ndarray]
    mid_after_cheap: tuple[np.ndarray, np.ndarray, np.ndarray]
    mid_alone: tuple[np.ndarray, np.ndarray, np.ndarray]

    def subset(self, rows: np.ndarray) -> VerifierScores:
        return VerifierScores(*(tuple(x[rows] for x in triple)
                                for triple in (self.cheap, self.mid_after_cheap, self.mid_alone)))


def score_verifier(model: VerifierModel, m: AnswerMatrices, registry: ModelRegistry,
                   rows: np.ndarray | None = None) -> VerifierScores:
    rows = np.arange(len(m.cheap)) if rows is None else rows
    mid_spec, top_spec = registry.by_tier(TIER_ORDER[1]), registry.by_tier(TIER_ORDER[2])

    def triple(x: np.ndarray, tier: str, k: int, nxt: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p_this, p_up = model.scores(tier, x[rows])
        factor = model.cost_factor(tier, m.input_tokens[rows, k], m.output_tokens[rows, k],
                                   nxt.prices.input, nxt.prices.output)
        return p_this, p_up, factor

    return VerifierScores(triple(m.cheap, "cheap", 0, mid_spec), triple(m.mid_after_cheap, "mid", 1, top_spec),
                          triple(m.mid_alone, "mid", 1, top_spec))


def out_of_fold_verifier_scores(data: LadderData, m: AnswerMatrices, registry: ModelRegistry, folds: int,
                                seed: int) -> VerifierScores:
    fold = kfold_by_source(data.sources, folds, seed)
    out = {name: [np.zeros(data.n) for _ in range(3)] for name in ("cheap", "mid_after_cheap", "mid_alone")}
    for k in range(folds):
        train_rows, test_rows = np.where(fold != k)[0], np.where(fold == k)[0]
        scores = score_verifier(fit_verifier(data, m, train_rows), m, registry, test_rows)
        for name in out:
            for j in range(3):
                out[name][j][test_rows] = getattr(scores, name)[j]
    return VerifierScores(*(tuple(out[name]) for name in ("cheap", "mid_after_cheap", "mid_alone")))

