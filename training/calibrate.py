"""Verifier fitting and policy calibration, on training data only.

The knobs (start-tier thresholds, the verifier's per-tier margins, max escalations) are picked on
out-of-fold predictions: every training prompt is scored by a prompt classifier and a verifier that
did not see it, so the chosen point is what the router does on unseen prompts, not on memorised ones.

``CascadeSimulator`` replays the ladder rule of ``providers.executor.LadderExecutor`` +
``classifier.cascade.Escalation`` vectorised over a whole grid of knobs; start tiers come from the
real ``RoutingPolicy.decide`` and escalations from the same ``escalate_mask`` the live check uses.
``training.evaluate`` cross-checks it against the real replay of the chosen point.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression

from classifier.answer_features import verifier_features
from classifier.calibrated import CascadePolicy
from classifier.cascade import ANSWER_CHECKS, DEFAULT_CHECKS, Answer
from classifier.policy import RoutingPolicy, ThresholdPolicy
from classifier.verifier import LogisticHead, TierVerifier, VerifierModel, escalate_mask
from core.messages import LABELS, Prediction, PromptMessage, TIER_ORDER
from providers.registry import ModelRegistry
from training.data import LadderData, kfold_by_source

NO_VERIFIER = float("inf")  # a margin no gain reaches: never escalate on the verifier's word


# ----------------------------------------------------------------------------- features

@dataclass
class AnswerMatrices:
    """Verifier features of every recorded answer a cascade can see, per (tier, called-after-cheap)."""

    cheap: np.ndarray
    mid_after_cheap: np.ndarray
    mid_alone: np.ndarray
    input_tokens: np.ndarray  # (n, 3)
    output_tokens: np.ndarray  # (n, 3)
    default_reject: np.ndarray  # (n, 3) bool: the seed checks (refusal, empty, truncated) reject it


def label_prob_rows(probabilities: np.ndarray) -> list[list[float]]:
    return [list(map(float, row)) for row in probabilities]


def answer_matrices(data: LadderData, label_probabilities: np.ndarray) -> AnswerMatrices:
    checks = [ANSWER_CHECKS[name]() for name in DEFAULT_CHECKS]
    cheap_m, mid_m, _ = data.ladder.models
    rows_cheap, rows_mid_prev, rows_mid = [], [], []
    n = data.n
    in_tok = np.zeros((n, 3))
    out_tok = np.zeros((n, 3))
    reject = np.zeros((n, 3), dtype=bool)
    for i, (record, probs) in enumerate(zip(data.records, label_probabilities, strict=True)):
        oc, om = record.outcomes[cheap_m], record.outcomes[mid_m]
        rows_cheap.append(verifier_features(record.prompt, probs, oc.response, oc.input_tokens, oc.output_tokens, []))
        rows_mid_prev.append(verifier_features(record.prompt, probs, om.response, om.input_tokens, om.output_tokens,
                                               [oc.response]))
        rows_mid.append(verifier_features(record.prompt, probs, om.response, om.input_tokens, om.output_tokens, []))
        prompt = PromptMessage(prompt=record.prompt)
        for k, model in enumerate(data.ladder.models):
            o = record.outcomes[model]
            in_tok[i, k], out_tok[i, k] = o.input_tokens, o.output_tokens
            answer = Answer(model, o.response, "stop", o.output_tokens, input_tokens=o.input_tokens)
            reject[i, k] = any(c.reject_reason(prompt, answer) for c in checks)
    return AnswerMatrices(np.asarray(rows_cheap), np.asarray(rows_mid_prev), np.asarray(rows_mid), in_tok, out_tok,
                          reject)


# ----------------------------------------------------------------------------- verifier

def _fit_head(x: np.ndarray, y: np.ndarray, c: float) -> LogisticHead:
    if y.min() == y.max():  # one class only: a constant head
        p = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        return LogisticHead(np.zeros(x.shape[1]), float(np.log(p / (1 - p))))
    model = LogisticRegression(C=c, max_iter=5000).fit(x, y)
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
        this = _fit_head(x, np.tile(y[:, k], reps), c)
        up = _fit_head(x, np.tile(y[:, k + 1], reps), c)
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


# ----------------------------------------------------------------------------- simulation

@dataclass
class Outcome:
    accuracy: float
    cost_usd: float
    final_tier: np.ndarray
    correct: np.ndarray
    cost_per_request: np.ndarray
    calls: np.ndarray  # (n, 3) bool: which tiers were called


def start_tiers(policy: RoutingPolicy, records: Sequence[Any], label_probabilities: np.ndarray,
                registry: ModelRegistry) -> np.ndarray:
    """Start tier per prompt from the real policy (keyword/premium/context guard rails included)."""
    tiers = np.zeros(len(records), dtype=int)
    for i, (record, probs) in enumerate(zip(records, label_probabilities, strict=True)):
        best = int(np.argmax(probs))
        prediction = Prediction(label=LABELS[best], confidence=float(min(1.0, probs[best])),
                                probabilities={label: float(p) for label, p in zip(LABELS, probs, strict=True)})
        decision = policy.decide(PromptMessage(prompt=record.prompt), prediction, registry, "simulated")
        tiers[i] = TIER_ORDER.index(decision.tier)
    return tiers


def simulate(correct: np.ndarray, cost: np.ndarray, start: np.ndarray, default_reject: np.ndarray,
             scores: VerifierScores | None, margins: tuple[float, float], max_escalations: int) -> Outcome:
    """The ladder rule: call, check, escalate while rejected and escalations remain (top tier kept)."""
    n = len(start)
    m_cheap, m_mid = margins
    if scores is None or not np.isfinite(m_cheap):
        reject_cheap = default_reject[:, 0].copy()
    else:
        reject_cheap = default_reject[:, 0] | escalate_mask(*scores.cheap, m_cheap)
    if scores is None or not np.isfinite(m_mid):
        reject_mid_prev = default_reject[:, 1].copy()
        reject_mid_alone = default_reject[:, 1].copy()
    else:
        reject_mid_prev = default_reject[:, 1] | escalate_mask(*scores.mid_after_cheap, m_mid)
        reject_mid_alone = default_reject[:, 1] | escalate_mask(*scores.mid_alone, m_mid)
    calls = np.zeros((n, 3), dtype=bool)
    final = np.full(n, 2)
    # Start cheap.
    s0 = start == 0
    calls[s0, 0] = True
    stop0 = s0 & ~reject_cheap
    final[stop0] = 0
    up0 = s0 & reject_cheap
    calls[up0, 1] = True
    # Escalation counts rejections; the next tier is reached while rejections <= max_escalations.
    stop_mid = up0 & (~reject_mid_prev | (max_escalations < 2))
    final[stop_mid] = 1
    to_top = up0 & ~stop_mid
    calls[to_top, 2] = True
    # Start mid.
    s1 = start == 1
    calls[s1, 1] = True
    final[s1 & ~reject_mid_alone] = 1
    calls[s1 & reject_mid_alone, 2] = True
    final[s1 & reject_mid_alone] = 2
    # Start expensive.
    calls[start == 2, 2] = True
    got = correct[np.arange(n), final]
    per_request = (cost * calls).sum(axis=1)
    return Outcome(float(got.mean()), float(per_request.sum()), final, got, per_request, calls)


# ----------------------------------------------------------------------------- calibration

@dataclass
class Objective:
    kind: str = "guard"  # guard | spend | expensive-share
    guard: float = 0.01
    # Safety so unseen data keeps the guard: a fixed accuracy margin plus z standard errors of the
    # paired (router - expensive) accuracy difference, which shrink as the training data grows.
    safety: float = 0.0
    safety_z: float = 1.0
    target: float | None = None  # spend: share of always-expensive cost; expensive-share: share of calls

    def describe(self) -> str:
        if self.kind == "guard":
            return (f"lowest cost with accuracy - {self.safety_z:g} SE >= expensive - {self.guard:.3f}"
                    f"{f' + {self.safety:.3f}' if self.safety else ''} (out-of-fold)")
        if self.kind == "spend":
            return f"highest accuracy with cost <= {self.target:.2f} x always-expensive"
        return f"highest accuracy with <= {self.target:.2f} of requests calling the expensive model"


@dataclass
class Candidate:
    policy: str
    policy_params: dict[str, Any]
    margins: tuple[float, float]
    max_escalations: int
    accuracy: float
    cost_usd: float
    expensive_share: float
    diff_se: float = 0.0  # standard error of the paired accuracy difference vs the expensive model

    def as_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "policy_params": self.policy_params,
                "margins": {"cheap": _json_float(self.margins[0]), "mid": _json_float(self.margins[1])},
                "max_escalations": self.max_escalations, "accuracy": self.accuracy, "cost_usd": self.cost_usd,
                "expensive_share": self.expensive_share, "diff_se": self.diff_se}


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def margin_from_json(value: float | None) -> float:
    return NO_VERIFIER if value is None else float(value)


@dataclass
class CalibrationResult:
    chosen: Candidate
    frontier: list[Candidate]
    expensive_accuracy: float
    expensive_cost_usd: float
    objective: Objective
    grid_size: int = 0
    feasible: bool = True
    notes: list[str] = field(default_factory=list)


MARGIN_GRID = tuple(np.round(np.concatenate([np.linspace(-0.3, 0.0, 4), np.linspace(0.02, 0.5, 25),
                                             np.linspace(0.6, 1.0, 5)]), 3))


def policy_grid(policy_name: str) -> list[dict[str, Any]]:
    if policy_name == "threshold":
        values = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)
        return [{"simple_threshold": s, "medium_threshold": m} for s, m in itertools.product(values, values)]
    expensive = (0.0, 0.5, 0.6, 0.7, 0.8, 1.01)  # 0.0: always expensive, the reference point
    skip = (0.0, 0.1, 0.2, 0.3, 0.4)
    return [{"expensive_if_complex_at_least": e, "skip_cheap_if_simple_below": s}
            for e, s in itertools.product(expensive, skip)]


def build_named_policy(name: str, params: dict[str, Any]) -> RoutingPolicy:
    if name == "threshold":
        return ThresholdPolicy(**params)
    if name == "cascade":
        return CascadePolicy(**params)
    raise ValueError(f"unknown policy {name!r}: choose threshold or cascade")


def pareto(candidates: list[Candidate]) -> list[Candidate]:
    frontier: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: (c.cost_usd, -c.accuracy)):
        if not frontier or cand.accuracy > frontier[-1].accuracy + 1e-12:
            frontier.append(cand)
    return frontier


def calibrate(data: LadderData, registry: ModelRegistry, label_probabilities: np.ndarray, m: AnswerMatrices,
              scores: VerifierScores | None, policy_name: str, objective: Objective,
              max_escalations_options: Sequence[int] = (1, 2), progress: Any = None) -> CalibrationResult:
    expensive_acc = float(data.correct[:, 2].mean())
    expensive_cost = float(data.cost_usd[:, 2].sum())
    margins_grid: list[tuple[float, float]]
    if policy_name == "cascade" and scores is not None:
        margins_grid = list(itertools.product(MARGIN_GRID, MARGIN_GRID + (NO_VERIFIER,)))
    else:
        margins_grid = [(NO_VERIFIER, NO_VERIFIER)]
    candidates: list[Candidate] = []
    grid = policy_grid(policy_name)
    iterator = progress(grid, desc="calibrate", unit="policy") if progress else grid
    for params in iterator:
        policy = build_named_policy(policy_name, params)
        start = start_tiers(policy, data.records, label_probabilities, registry)
        for margins, max_esc in itertools.product(margins_grid, max_escalations_options):
            out = simulate(data.correct, data.cost_usd, start, m.default_reject, scores, margins, max_esc)
            diff = out.correct.astype(float) - data.correct[:, 2]
            candidates.append(Candidate(policy_name, params, margins, max_esc, out.accuracy, out.cost_usd,
                                        float(out.calls[:, 2].mean()), float(diff.std() / np.sqrt(len(diff)))))
    frontier = pareto(candidates)
    result = CalibrationResult(frontier[0], frontier, expensive_acc, expensive_cost, objective, len(candidates))
    if objective.kind == "guard":
        floor = expensive_acc - objective.guard + objective.safety
        feasible = [c for c in candidates if c.accuracy - objective.safety_z * c.diff_se >= floor]
        key = lambda c: (c.cost_usd, -c.accuracy)  # noqa: E731
    elif objective.kind == "spend":
        if objective.target is None:
            raise ValueError("--objective spend needs --target (share of the always-expensive cost, e.g. 0.6)")
        feasible = [c for c in candidates if c.cost_usd <= objective.target * expensive_cost]
        key = lambda c: (-c.accuracy, c.cost_usd)  # noqa: E731
    elif objective.kind == "expensive-share":
        if objective.target is None:
            raise ValueError("--objective expensive-share needs --target (share of requests, e.g. 0.3)")
        feasible = [c for c in candidates if c.expensive_share <= objective.target]
        key = lambda c: (-c.accuracy, c.cost_usd)  # noqa: E731
    else:
        raise ValueError(f"unknown objective {objective.kind!r}")
    if feasible:
        result.chosen = min(feasible, key=key)
    else:
        # Nothing meets the objective: the most accurate point (usually all-expensive) is the safe choice.
        result.chosen = max(candidates, key=lambda c: (c.accuracy, -c.cost_usd))
        result.feasible = False
        result.notes.append("no setting met the objective on training data; chose the most accurate one")
    return result
