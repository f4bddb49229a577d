"""Verifier fitting and policy calibration, on training data only.

The knobs (start-tier thresholds, the verifier's per-tier margins, max escalations) are picked on
out-of-fold predictions: every training prompt is scored by a prompt classifier and a verifier that
did not see it, so the chosen point is what the router does on unseen prompts, not on memorised ones.

``CascadeSimulator`` replays the ladder rule of ``providers.executor.LadderExecutor`` +
``routing.escalation.Escalation`` vectorised over a whole grid of knobs; start tiers come from the
real ``RoutingPolicy.decide`` and escalations from the same ``escalate_mask`` the live check uses.
``training.evaluate`` cross-checks it against the real replay of the chosen point.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression

from core.messages import LABELS, TIER_ORDER, Prediction, PromptMessage
from core.registry import ModelRegistry
from routing.answer_checks import ANSWER_CHECKS, DEFAULT_CHECKS, Answer
from routing.answer_features import verifier_features
from routing.cascade_policy import CascadePolicy
from routing.policy import RoutingPolicy, ThresholdPolicy
from routing.prompt_kind import DEFAULT_KIND, routing_kind, settings_for_kind
from routing.verifier import LogisticHead, TierVerifier, VerifierModel, escalate_mask
from training.data import LadderData, kfold_by_source, request_cost_usd

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

    def subset(self, rows: np.ndarray) -> AnswerMatrices:
        return AnswerMatrices(self.cheap[rows], self.mid_after_cheap[rows], self.mid_alone[rows],
                              self.input_tokens[rows], self.output_tokens[rows], self.default_reject[rows])


def label_prob_rows(probabilities: np.ndarray) -> list[list[float]]:
    return [list(map(float, row)) for row in probabilities]


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


# ----------------------------------------------------------------------------- verifier

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
                registry: ModelRegistry, topics: Sequence[str | None] | None = None) -> np.ndarray:
    """Start tier per prompt from the real policy (keyword/premium/context guard rails included)."""
    return policy_decisions(policy, records, label_probabilities, registry, topics)[0]


def policy_decisions(policy: RoutingPolicy, records: Sequence[Any], label_probabilities: np.ndarray,
                     registry: ModelRegistry, topics: Sequence[str | None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Start tier, output budget per tier ((n, 3), inf where none) and routing kind, from the real policy."""
    n = len(records)
    tiers = np.zeros(n, dtype=int)
    budgets = np.full((n, 3), np.inf)
    kinds: list[str] = []
    topics = list(topics) if topics is not None else [None] * n
    for i, (record, probs) in enumerate(zip(records, label_probabilities, strict=True)):
        best = int(np.argmax(probs))
        prediction = Prediction(label=LABELS[best], confidence=float(min(1.0, probs[best])),
                                probabilities={label: float(p) for label, p in zip(LABELS, probs, strict=True)},
                                topic=topics[i])
        decision = policy.decide(PromptMessage(prompt=record.prompt), prediction, registry, "simulated")
        tiers[i] = TIER_ORDER.index(decision.tier)
        for k, tier in enumerate(TIER_ORDER):
            if tier.value in decision.max_output_tokens:
                budgets[i, k] = decision.max_output_tokens[tier.value]
        kinds.append(decision.prompt_kind or routing_kind(record.prompt, topics[i]))
    return tiers, budgets, kinds


def simulate(correct: np.ndarray, cost: np.ndarray, start: np.ndarray, default_reject: np.ndarray,
             scores: VerifierScores | None, margins: tuple[Any, Any], max_escalations: int) -> Outcome:
    """The ladder rule: call, check, escalate while rejected and escalations remain (top tier kept).

    ``margins`` are scalars or per-row arrays; an infinite margin never escalates on the verifier."""
    n = len(start)
    m_cheap, m_mid = margins
    if scores is None:
        reject_cheap = default_reject[:, 0].copy()
        reject_mid_prev = default_reject[:, 1].copy()
        reject_mid_alone = default_reject[:, 1].copy()
    else:
        with np.errstate(invalid="ignore"):  # inf * 0 cost factor: nan, compares False (no escalation)
            reject_cheap = default_reject[:, 0] | escalate_mask(*scores.cheap, m_cheap)
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
    return Outcome(float(got.mean()) if n else 0.0, float(per_request.sum()), final, got, per_request, calls)


# (tier index, input tokens, output tokens) -> USD per call, vectorised.
CostFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def registry_cost_fn(registry: ModelRegistry) -> CostFn:
    def cost(k: int, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        return request_cost_usd(registry.by_tier(TIER_ORDER[k]).prices, input_tokens, output_tokens)

    return cost


def _row_scores(scores: VerifierScores | None, rows: np.ndarray, mid_sees_cheap: np.ndarray) -> VerifierScores | None:
    """Scores of ``rows``; a mid answer after a cut-off cheap one is judged alone (nothing to compare)."""
    if scores is None:
        return None
    sub = scores.subset(rows)
    after = tuple(np.where(mid_sees_cheap, a, b) for a, b in zip(sub.mid_after_cheap, sub.mid_alone, strict=True))
    return VerifierScores(sub.cheap, after, sub.mid_alone)


@dataclass
class BudgetedRows:
    """What the ladder sees on some rows under given output budgets, ready to simulate many knobs on."""

    correct: np.ndarray  # right and not cut off
    cost: np.ndarray  # per call, cut-off answers charged their budget
    reject: np.ndarray  # seed checks, or cut off
    truncated: np.ndarray
    scores: VerifierScores | None


def budgeted_rows(correct: np.ndarray, m: AnswerMatrices, cost_fn: CostFn, rows: np.ndarray, budgets: np.ndarray,
                  scores: VerifierScores | None) -> BudgetedRows:
    in_tok, out_tok = m.input_tokens[rows], m.output_tokens[rows]
    truncated = out_tok > budgets
    billed_out = np.minimum(out_tok, budgets)
    cost = np.stack([cost_fn(k, in_tok[:, k], billed_out[:, k]) for k in range(3)], axis=1)
    return BudgetedRows(correct[rows] & ~truncated, cost, m.default_reject[rows] | truncated, truncated,
                        _row_scores(scores, rows, ~truncated[:, 0]))


def simulate_rows(b: BudgetedRows, start: np.ndarray, margins: tuple[Any, Any], max_escalations: int) -> Outcome:
    """``simulate`` with output budgets: an answer longer than its tier's budget is cut off (charged the
    budget, wrong, rejected) and a cut-off final answer gives way to the latest one that finished."""
    out = simulate(b.correct, b.cost, start, b.reject, b.scores, margins, max_escalations)
    if not b.truncated.any():
        return out
    final = out.final_tier.copy()
    idx = np.arange(len(start))
    for below in (1, 0):
        cut = b.truncated[idx, final] & (final > below)
        take = cut & out.calls[:, below] & ~b.truncated[:, below]
        final[take] = below
    got = b.correct[idx, final]
    return Outcome(float(got.mean()) if len(start) else 0.0, out.cost_usd, final, got, out.cost_per_request,
                   out.calls)


def margin_arrays(kinds: Sequence[str], margins: dict[str, Any],
                  margins_by_kind: dict[str, dict[str, Any]] | None) -> tuple[np.ndarray, np.ndarray]:
    chosen = [settings_for_kind(margins_by_kind or {}, k, margins) for k in kinds]
    cheap = np.array([margin_from_json(m.get("cheap")) for m in chosen])
    mid = np.array([margin_from_json(m.get("mid")) for m in chosen])
    return cheap, mid


def simulate_setting(data: LadderData, m: AnswerMatrices, cost_fn: CostFn, registry: ModelRegistry,
                     label_probabilities: np.ndarray, scores: VerifierScores | None, setting: dict[str, Any],
                     topics: Sequence[str | None] | None = None) -> Outcome:
    """One saved setting (as in ``policy.json``), through the real policy's decisions."""
    policy = build_named_policy(setting["policy"], setting["policy_params"])
    start, budgets, kinds = policy_decisions(policy, data.records, label_probabilities, registry, topics)
    margins = margin_arrays(kinds, setting.get("margins") or {}, setting.get("margins_by_kind"))
    rows = np.arange(data.n)
    return simulate_rows(budgeted_rows(data.correct, m, cost_fn, rows, budgets, scores), start, margins,
                         int(setting["max_escalations"]))


@dataclass
class GridSums:
    """Sums over rows for every (cheap margin, mid margin) pair of a grid: (len(cheap), len(mid)) arrays."""

    cost: np.ndarray
    diff_sum: np.ndarray  # sum of (router right - expensive right)
    diff_sq: np.ndarray
    expensive_calls: np.ndarray


def grid_sums(b: BudgetedRows, start: np.ndarray, expensive_right: np.ndarray,
              margins: tuple[Sequence[float], Sequence[float]], max_escalations: int) -> GridSums:
    """``simulate_rows`` for every margin pair at once.

    Each request takes one of six paths (start cheap: stop at cheap / stop at mid / go to the top;
    start mid: stop / go to the top; start at the top), and which path depends on the margins only
    through three rejection masks. A path's cost and correctness per row are fixed, so the totals
    for all margin pairs are a few matrix products of those masks."""
    ok, t = b.correct, b.truncated
    c0, c1, c2 = b.cost[:, 0], b.cost[:, 1], b.cost[:, 2]
    # Correctness where each path ends, after a cut-off final answer gives way to the latest finished one.
    at_cheap = ok[:, 0]
    at_mid_after_cheap = np.where(t[:, 1], ok[:, 0], ok[:, 1])
    at_top_after_both = np.where(t[:, 2], np.where(t[:, 1], ok[:, 0], ok[:, 1]), ok[:, 2])
    at_mid = ok[:, 1]
    at_top_after_mid = np.where(t[:, 2], np.where(t[:, 1], False, ok[:, 1]), ok[:, 2])
    at_top = ok[:, 2]

    def reject_matrix(column: int, triple: tuple[np.ndarray, ...] | None, grid: Sequence[float]) -> np.ndarray:
        base = b.reject[:, column][:, None]
        if triple is None:
            return np.broadcast_to(base, (len(start), len(grid))).astype(float)
        p_this, p_up, factor = triple
        with np.errstate(invalid="ignore"):
            verdict = (p_up - p_this)[:, None] >= np.asarray(grid)[None, :] * factor[:, None]
        return (base | verdict).astype(float)

    sc = b.scores
    rc = reject_matrix(0, sc.cheap if sc else None, margins[0])
    rmp = reject_matrix(1, sc.mid_after_cheap if sc else None, margins[1])
    rma = reject_matrix(1, sc.mid_alone if sc else None, margins[1])
    s0, s1, s2 = (start == 0).astype(float), (start == 1).astype(float), (start == 2).astype(float)
    two = max_escalations >= 2

    def total(a, bb, c, d, e, f) -> np.ndarray:
        cheap_part = (s0 * a).sum() + rc.T @ (s0 * (bb - a))
        mid_part = (s1 * d).sum() + (s1 * (e - d)) @ rma
        out = cheap_part[:, None] + mid_part[None, :] + (s2 * f).sum()
        if two:
            out = out + rc.T @ ((s0 * (c - bb))[:, None] * rmp)
        return out

    paths = [v.astype(float) for v in (at_cheap, at_mid_after_cheap, at_top_after_both, at_mid, at_top_after_mid,
                                       at_top)]
    right = total(*paths)
    right_and_expensive = total(*(v * expensive_right for v in paths))
    cost = total(c0, c0 + c1, c0 + c1 + c2, c1, c1 + c2, c2)
    zero, one = np.zeros(len(start)), np.ones(len(start))
    expensive_calls = total(zero, zero, one, zero, one, one)
    e_sum = float(expensive_right.sum())
    # diff is in {-1, 0, 1}: diff^2 = right + expensive_right - 2 * right * expensive_right.
    return GridSums(cost, right - e_sum, right + e_sum - 2 * right_and_expensive, expensive_calls)


# The guard judges accuracy minus z standard errors, and a setting's variance grows with how often it
# disagrees with the expensive model (diff_sq). A frontier on accuracy alone drops the low-variance
# settings the guard may need, so frontiers are kept for accuracy - lambda * diff_sq at these lambdas too
# (per disagreement; around z / (2 sqrt(disagreements)) for this data's sizes).
VARIANCE_PENALTIES = (0.0, 0.03, 0.1)


def _pareto_cells(sums: GridSums) -> list[tuple[int, int]]:
    """Cells no other cell of the grid beats on cost (or expensive calls) and penalised accuracy together."""
    keep: set[tuple[int, int]] = set()
    for penalty in VARIANCE_PENALTIES:
        flat_diff = (sums.diff_sum - penalty * sums.diff_sq).ravel()
        for key in (sums.cost.ravel(), sums.expensive_calls.ravel()):
            order = np.lexsort((-flat_diff, key))
            best = np.maximum.accumulate(flat_diff[order])
            improving = np.concatenate([[True], best[1:] > best[:-1] + 1e-9])
            for index in order[improving & (flat_diff[order] >= best - 1e-9)]:
                keep.add(tuple(int(x) for x in np.unravel_index(index, sums.cost.shape)))
    return sorted(keep)


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
    """One complete setting and what it gives on the calibration rows."""

    policy: str
    policy_params: dict[str, Any]
    margins: dict[str, float | None]
    margins_by_kind: dict[str, dict[str, float | None]]
    max_escalations: int
    accuracy: float
    cost_usd: float
    expensive_share: float
    diff_se: float = 0.0  # standard error of the paired accuracy difference vs the expensive model

    def as_json(self) -> dict[str, Any]:
        doc = {"policy": self.policy, "policy_params": self.policy_params, "margins": self.margins,
               "max_escalations": self.max_escalations, "accuracy": self.accuracy, "cost_usd": self.cost_usd,
               "expensive_share": self.expensive_share, "diff_se": self.diff_se}
        if self.margins_by_kind:
            doc["margins_by_kind"] = self.margins_by_kind
        return doc


@dataclass
class _Sums:
    """Sums over some rows for one setting."""

    cost: float
    diff_sum: float  # sum of (router right - expensive right)
    diff_sq: float
    expensive_calls: float
    n: int

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(self.cost + other.cost, self.diff_sum + other.diff_sum, self.diff_sq + other.diff_sq,
                     self.expensive_calls + other.expensive_calls, self.n + other.n)

    @classmethod
    def cell(cls, sums: GridSums, i: int, j: int, n: int) -> _Sums:
        return cls(float(sums.cost[i, j]), float(sums.diff_sum[i, j]), float(sums.diff_sq[i, j]),
                   float(sums.expensive_calls[i, j]), n)


@dataclass
class _Part:
    """A setting for one group of prompts (a kind): its sums on the search rows, which pick the
    frontier, and on the check rows, which the objective is judged on (the same rows when not split)."""

    settings: dict[str, dict[str, Any]]  # group -> {"params": ..., "margins": ...}
    search: _Sums
    check: _Sums


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
    groups: dict[str, int] = field(default_factory=dict)  # prompts per calibrated kind
    candidates: list[Candidate] = field(default_factory=list)  # every merged setting, for re-choosing


# Verifier margins tried per tier. Coarse on purpose: each prompt kind picks its own, and a fine grid
# let every kind pick its luckiest value (the procedure check measured 1.3 pt of optimism on the
# math/code training data with 35 values, 0.1 pt with these).
MARGIN_GRID = (-0.3, 0.0, 0.1, 0.2, 0.3, 0.5)
# Output budgets tried per tier: (cheap and mid, expensive); None = the model's own limit.
BUDGET_GRID: tuple[tuple[int | None, int | None], ...] = tuple(
    itertools.product((None, 1000, 500), (None, 1500, 1000, 700)))
MIN_KIND_PROMPTS = 150
# Pseudo-prompts of the parent kind added to each kind's figures (see ``calibrate``); 0 = none.
KIND_SHRINKAGE = 150.0


def policy_grid(policy_name: str) -> list[dict[str, Any]]:
    if policy_name == "threshold":
        values = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)
        return [{"simple_threshold": s, "medium_threshold": m} for s, m in itertools.product(values, values)]
    expensive = (0.0, 0.5, 0.6, 0.7, 0.8, 1.01)  # 0.0: always expensive, the reference point
    skip = (0.0, 0.1, 0.2, 0.3, 0.4, 1.01)  # 1.01: always start at mid (cheaper per answer on some kinds)
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


def _pareto_indices(cost: np.ndarray, diff_sum: np.ndarray, diff_sq: np.ndarray,
                    expensive_calls: np.ndarray) -> np.ndarray:
    """Indices of the settings no other beats on both cost and (penalised) accuracy, nor on both expensive
    calls and accuracy: per penalty and key, the ones that improve on every cheaper one (ties in order).
    Listed in the order first found, so merging and choosing break ties the same way every run."""
    found = []
    for penalty in VARIANCE_PENALTIES:
        score = diff_sum - penalty * diff_sq
        for key in (cost, expensive_calls):
            order = np.lexsort((-score, key))  # stable: equal settings keep their order
            ranked = score[order]
            best_before = np.maximum.accumulate(np.concatenate([[-np.inf], ranked[:-1]]))
            found.append(order[ranked > best_before + 1e-9])
    every = np.concatenate(found)
    _, first = np.unique(every, return_index=True)
    return every[np.sort(first)]


def _pareto_parts(parts: list[_Part]) -> list[_Part]:
    """Parts on the frontier (``_pareto_indices``) of their search rows (it never looks at the check rows)."""
    if not parts:
        return []
    sums = [p.search for p in parts]
    columns = (np.array([getattr(x, name) for x in sums])
               for name in ("cost", "diff_sum", "diff_sq", "expensive_calls"))
    return [parts[i] for i in _pareto_indices(*columns)]


def _merge(a: list[_Part], b: list[_Part]) -> list[_Part]:
    """The frontier of every pairing of a setting from ``a`` with one from ``b`` (different kinds): sums
    added as arrays, and only the pairs on the frontier built as parts (the pairings run to millions)."""
    if not a or not b:
        return []

    def outer(name: str) -> np.ndarray:
        return (np.array([getattr(x.search, name) for x in a])[:, None]
                + np.array([getattr(y.search, name) for y in b])[None, :]).ravel()

    kept = _pareto_indices(outer("cost"), outer("diff_sum"), outer("diff_sq"), outer("expensive_calls"))
    pairs = (divmod(int(k), len(b)) for k in kept)
    return [_Part({**a[i].settings, **b[j].settings}, a[i].search + b[j].search, a[i].check + b[j].check)
            for i, j in pairs]


def kind_groups(records: Sequence[Any], min_prompts: int,
                topics: Sequence[str | None] | None = None) -> dict[str, np.ndarray]:
    """Rows per routing kind with enough prompts to calibrate on: a topic-refined kind, else the rest
    of its surface kind, else the default settings (the lookup order of ``settings_for_kind``)."""
    topics = list(topics) if topics is not None else [None] * len(records)
    refined = np.array([routing_kind(r.prompt, t) for r, t in zip(records, topics, strict=True)], dtype=object)
    groups: dict[str, np.ndarray] = {}
    left = np.ones(len(records), dtype=bool)
    for kind in sorted(set(refined)):
        rows = refined == kind
        if "/" in kind and rows.sum() >= min_prompts:
            groups[kind] = np.where(rows)[0]
            left &= ~rows
    surface = np.array([k.split("/", 1)[0] for k in refined], dtype=object)
    rest = np.zeros(len(records), dtype=bool)
    for kind in sorted(set(surface[left])):
        rows = left & (surface == kind)
        if rows.sum() >= min_prompts:
            groups[kind] = np.where(rows)[0]
        else:
            rest |= rows
    if rest.any() or not groups:
        groups[DEFAULT_KIND] = np.where(rest)[0]
    return groups


def calibrate(data: LadderData, registry: ModelRegistry, label_probabilities: np.ndarray, m: AnswerMatrices,
              scores: VerifierScores | None, policy_name: str, objective: Objective,
              max_escalations_options: Sequence[int] = (1, 2), progress: Any = None, *,
              cost_fn: CostFn | None = None, per_kind: bool = True, output_budgets: bool = True,
              min_kind_prompts: int = MIN_KIND_PROMPTS, topics: Sequence[str | None] | None = None,
              split_check: bool = False, seed: int = 0, margin_grid: Sequence[float] = MARGIN_GRID,
              kind_shrinkage: float = KIND_SHRINKAGE) -> CalibrationResult:
    """Pick the knobs on the given (out-of-fold) predictions.

    The cascade policy is searched per prompt kind (start thresholds, verifier margins, output
    budgets) and the kinds' settings are combined under the one objective over all prompts; the
    seed's threshold policy has one global setting.

    With ``split_check`` the training rows are halved: the search (millions of settings, each kind
    free to pick its luckiest) runs on one half and yields a frontier of candidates; the objective
    is judged on the other half, which only chooses along that frontier. The chosen point's figures
    are then honest estimates instead of the best of millions.

    With ``kind_shrinkage`` = n0 > 0, every kind's figures for a setting are shrunk toward what the
    same setting gives on its parent (a topic's surface kind; see ``kind_parent``), as if
    n0 of the parent's prompts were added to the kind: a small kind can no longer pick a setting that
    only its own few prompts make look good. The chosen point's figures are then these estimates."""
    if split_check:
        check_rows = kfold_by_source(data.sources, 2, seed + 1) == 1
    else:
        check_rows = np.ones(data.n, dtype=bool)
    expensive_acc = float(data.correct[check_rows, 2].mean())
    expensive_cost = float(data.cost_usd[check_rows, 2].sum())
    cost_fn = cost_fn or registry_cost_fn(registry)
    cascade = policy_name == "cascade"
    if cascade and scores is not None:
        margins_grid = (tuple(margin_grid) + (NO_VERIFIER,), tuple(margin_grid) + (NO_VERIFIER,))
    else:
        margins_grid = ((NO_VERIFIER,), (NO_VERIFIER,))
    budget_grid = BUDGET_GRID if cascade and output_budgets else ((None, None),)
    groups = (kind_groups(data.records, min_kind_prompts, topics) if cascade and per_kind
              else {DEFAULT_KIND: np.arange(data.n)})
    expensive_right = data.correct[:, 2].astype(float)
    grid = policy_grid(policy_name)
    work = [(g, budget) for g in groups for budget in budget_grid]
    iterator = progress(work, desc="calibrate", unit="kind x budget") if progress else work
    parts: dict[tuple[str, int], list[_Part]] = {}
    starts: dict[tuple[str, int], np.ndarray] = {}
    cells: dict[tuple[Any, ...], tuple[dict[str, Any], GridSums, GridSums]] = {}
    sizes: dict[str, tuple[int, int]] = {}  # group -> rows (search, check)
    grid_size = 0
    for group, (low, top) in iterator:
        budgets = np.array([np.inf if low is None else low] * 2 + [np.inf if top is None else top])
        halves = [groups[group][~check_rows[groups[group]]], groups[group][check_rows[groups[group]]]]
        if not split_check:
            halves = [groups[group], groups[group]]
        prepared = [budgeted_rows(data.correct, m, cost_fn, rows, np.broadcast_to(budgets, (len(rows), 3)), scores)
                    for rows in halves]
        for p_index, params in enumerate(grid):
            if (group, p_index) not in starts:
                policy = build_named_policy(policy_name, params)
                starts[(group, p_index)] = [start_tiers(policy, [data.records[i] for i in rows],
                                                        label_probabilities[rows], registry) for rows in halves]
            doc_params = dict(params)
            if low is not None or top is not None:
                doc_params["max_output_tokens"] = {
                    t: v for t, v in (("cheap", low), ("mid", low), ("expensive", top)) if v is not None}
            for max_esc in max_escalations_options:
                search, check = (grid_sums(prep, start, expensive_right[rows], margins_grid, max_esc)
                                 for prep, start, rows in zip(prepared, starts[(group, p_index)], halves,
                                                              strict=True))
                grid_size += search.cost.size
                cells[(group, low, top, p_index, max_esc)] = (doc_params, search, check)
                sizes[group] = (len(halves[0]), len(halves[1]))
    if kind_shrinkage > 0 and len(groups) > 1:
        cells = _shrink_toward_parents(cells, sizes, kind_shrinkage)
    for (group, _low, _top, _p, max_esc), (doc_params, search, check) in cells.items():
        bucket = parts.setdefault((group, max_esc), [])
        for i, j in _pareto_cells(search):
            bucket.append(_Part(
                {group: {"params": doc_params, "margins": {"cheap": _json_float(margins_grid[0][i]),
                                                          "mid": _json_float(margins_grid[1][j])}}},
                _Sums.cell(search, i, j, sizes[group][0]), _Sums.cell(check, i, j, sizes[group][1])))
    candidates: list[Candidate] = []
    for max_esc in max_escalations_options:
        merged: list[_Part] | None = None
        for group in groups:
            frontier = _pareto_parts(parts[(group, max_esc)])
            merged = frontier if merged is None else _merge(merged, frontier)
        for part in merged or []:
            candidates.append(_candidate(policy_name, part, max_esc, expensive_acc))
    frontier = pareto(candidates)
    chosen, feasible = choose(candidates, objective, expensive_acc, expensive_cost)
    result = CalibrationResult(chosen, frontier, expensive_acc, expensive_cost, objective, grid_size,
                               feasible=feasible, groups={g: int(len(r)) for g, r in groups.items()},
                               candidates=candidates)
    if not feasible:
        result.notes.append("no setting met the objective on training data; chose the most accurate one")
    return result


def kind_parent(group: str) -> str | None:
    """What a calibrated kind's figures are shrunk toward: a topic's surface kind (``multiple_choice`` for
    ``multiple_choice/law``). Surface kinds are not shrunk: code, math and plain prose differ for real
    (shrinking them toward all prompts cost math/code savings in the procedure check)."""
    return group.split("/", 1)[0] if "/" in group else None


def _shrink_toward_parents(cells: dict[tuple[Any, ...], tuple[dict[str, Any], GridSums, GridSums]],
                           sizes: dict[str, tuple[int, int]], pseudo_prompts: float
                           ) -> dict[tuple[Any, ...], tuple[dict[str, Any], GridSums, GridSums]]:
    """Each topic kind's grid sums for a setting, shrunk toward its parent's per-prompt sums for the same setting:
    n_k / (n_k + n0) x (kind sums + n0 x parent sums / n_parent). The parent's sums are those of the
    calibrated kinds under it (the sums are additive over prompts), so this costs no extra simulation."""
    groups = sorted(sizes)

    def members(parent: str) -> list[str]:
        return [g for g in groups if g == parent or g.startswith(parent + "/")]

    names = ("cost", "diff_sum", "diff_sq", "expensive_calls")
    parent_means: dict[tuple[Any, ...], dict[str, np.ndarray] | None] = {}

    def parent_mean(parent: str, rest: tuple[Any, ...], side: int) -> dict[str, np.ndarray] | None:
        key = (parent, rest, side)
        if key not in parent_means:
            family = members(parent)
            parent_n = sum(sizes[g][side] for g in family)
            parent_means[key] = None if len(family) < 2 or parent_n == 0 else {
                name: sum(getattr(cells[(g, *rest)][1 + side], name) for g in family) / parent_n for name in names}
        return parent_means[key]

    shrunk = {}
    for key, (doc_params, *own_sums) in cells.items():
        group, rest = key[0], key[1:]
        out = []
        parent = kind_parent(group)
        for side, own in enumerate(own_sums):
            mean = None if parent is None else parent_mean(parent, rest, side)
            if mean is None:
                out.append(own)
                continue
            weight = sizes[group][side] / (sizes[group][side] + pseudo_prompts)
            shrunk_sums = {name: weight * (getattr(own, name) + pseudo_prompts * mean[name]) for name in names}
            # Whole answers and calls, as unshrunk sums are: ties keep the kinds' fronts (and their merge,
            # a product of fronts) as small as without shrinkage.
            for name in ("diff_sum", "diff_sq", "expensive_calls"):
                shrunk_sums[name] = np.round(shrunk_sums[name])
            out.append(GridSums(**shrunk_sums))
        shrunk[key] = (doc_params, out[0], out[1])
    return shrunk


def choose(candidates: Sequence[Candidate], objective: Objective, expensive_acc: float,
           expensive_cost: float) -> tuple[Candidate, bool]:
    """The candidate the objective picks, and whether any met it (if none did: the most accurate one,
    usually all-expensive, the safe choice)."""
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
        return min(feasible, key=key), True
    return max(candidates, key=lambda c: (c.accuracy, -c.cost_usd)), False


def _candidate(policy_name: str, part: _Part, max_escalations: int, expensive_accuracy: float) -> Candidate:
    """A combined setting: the default group's knobs at the top level, each calibrated kind's under by_kind.
    Its figures are those of the check rows."""
    sums = part.check
    n = max(sums.n, 1)
    mean = sums.diff_sum / n
    se = float(np.sqrt(max(sums.diff_sq / n - mean ** 2, 0.0) / n))
    default = part.settings.get(DEFAULT_KIND)
    kinds = {g: s for g, s in part.settings.items() if g != DEFAULT_KIND}
    if default is None:  # every prompt fell in a calibrated kind: unseen kinds go straight to the top
        default = {"params": {"expensive_if_complex_at_least": 0.0, "skip_cheap_if_simple_below": 0.0}
                   if policy_name == "cascade" else {"simple_threshold": 1.01, "medium_threshold": 1.01},
                   "margins": {"cheap": None, "mid": None}}
    params = dict(default["params"])
    if kinds:
        params["by_kind"] = {g: s["params"] for g, s in sorted(kinds.items())}
    return Candidate(policy_name, params, dict(default["margins"]),
                     {g: dict(s["margins"]) for g, s in sorted(kinds.items())}, max_escalations,
                     expensive_accuracy + mean, sums.cost, sums.expensive_calls / n, se)


# Extra accuracy margins (on top of --safety) the procedure check tries under the guard objective.
SAFETY_GRID = (0.0, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02)


def procedure_check(data: LadderData, registry: ModelRegistry, label_probabilities: np.ndarray, m: AnswerMatrices,
                    scores: VerifierScores | None, policy_name: str, objective: Objective,
                    max_escalations_options: Sequence[int] = (1, 2), *, topics: Sequence[str | None] | None = None,
                    seed: int = 0, repeats: int = 1, safeties: Sequence[float] = (0.0,),
                    **options: Any) -> dict[str, Any]:
    """What the whole calibration procedure gives on prompts it did not calibrate on.

    The training prompts are halved; the procedure calibrates on one half and its chosen setting is
    replayed on the other, both ways round, for ``repeats`` different halvings (one halving's
    figures move by about a point between seeds on this data). The chosen point's own figures are
    the best of millions of settings on the prompts they were picked on; these are not (and
    calibration had half the data, so they lean pessimistic).

    Each extra safety margin in ``safeties`` (added to ``objective.safety``) re-chooses among the same
    searched settings, so trying several costs one search per half; ``by_safety`` has what each gives
    on the unseen halves. The first is the reference for ``optimism``."""
    cost_fn = registry_cost_fn(registry)
    expensive_cost = float(data.cost_usd[:, 2].sum()) * repeats
    expensive_right = data.correct[:, 2].astype(float)
    diffs = np.zeros((len(safeties), data.n))  # per prompt: router right - expensive right, summed over halvings
    costs = np.zeros(len(safeties))
    optimism = []
    splits = [(kfold_by_source(data.sources, 2, seed + 7 + 100 * r), k) for r in range(repeats) for k in (0, 1)]
    for half, k in splits:
        fit_rows, check_rows = np.where(half != k)[0], np.where(half == k)[0]
        fit_topics = [topics[i] for i in fit_rows] if topics is not None else None
        check_topics = [topics[i] for i in check_rows] if topics is not None else None
        fitted = calibrate(data.subset(fit_rows), registry, label_probabilities[fit_rows], m.subset(fit_rows),
                           scores.subset(fit_rows) if scores is not None else None, policy_name, objective,
                           max_escalations_options, topics=fit_topics, **options)
        check = data.subset(check_rows)
        for s_index, extra in enumerate(safeties):
            chosen, _ = choose(fitted.candidates, replace(objective, safety=objective.safety + extra),
                               fitted.expensive_accuracy, fitted.expensive_cost_usd)
            out = simulate_setting(check, m.subset(check_rows), cost_fn, registry, label_probabilities[check_rows],
                                   scores.subset(check_rows) if scores is not None else None, chosen.as_json(),
                                   check_topics)
            costs[s_index] += out.cost_usd
            diffs[s_index, check_rows] += out.correct.astype(float) - expensive_right[check_rows]
            if s_index == 0:
                # How much better the chosen point looked where it was picked than where it was not.
                optimism.append((chosen.accuracy - fitted.expensive_accuracy)
                                - (out.accuracy - float(check.correct[:, 2].mean())))
    per_prompt = diffs / repeats  # each prompt was replayed once per halving
    by_safety = [{"extra_safety": float(extra), "savings_vs_expensive": 1 - costs[i] / expensive_cost,
                  "accuracy_minus_expensive": float(per_prompt[i].mean()),
                  "diff_se": float(per_prompt[i].std() / np.sqrt(data.n))} for i, extra in enumerate(safeties)]
    return {"method": "calibrate on one half of the training prompts, replay on the other, both ways",
            "repeats": repeats, "n": int(data.n), **by_safety[0],
            "optimism": float(np.mean(optimism)), "optimism_by_half": [float(o) for o in optimism],
            "safety": objective.safety, "by_safety": by_safety}


def safety_from_check(report: dict[str, Any], objective: Objective) -> tuple[float, bool]:
    """The smallest extra safety whose unseen-half accuracy keeps the guard by ``safety_z`` standard
    errors; the largest tried (and False) when none does."""
    for entry in report["by_safety"]:
        if entry["accuracy_minus_expensive"] - objective.safety_z * entry["diff_se"] >= -objective.guard:
            return entry["extra_safety"], True
    return report["by_safety"][-1]["extra_safety"], False
