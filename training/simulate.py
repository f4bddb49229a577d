"""Vectorised simulation of the cascade on recorded outcomes, for calibration and evaluation.

It replays the ladder rule of ``providers.executor.LadderExecutor`` + ``routing.escalation.Escalation``
vectorised over a whole grid of knobs; start tiers come from the real ``RoutingPolicy.decide`` and
escalations from the same ``escalate_mask`` the live check uses. ``training.evaluate`` cross-checks it
against the real replay of the chosen point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.messages import LABELS, TIER_ORDER, Prediction, PromptMessage
from core.registry import ModelRegistry
from routing.policy import RoutingPolicy
from routing.prompt_kind import routing_kind, settings_for_kind
from routing.registry import build_policy
from routing.verifier import escalate_mask
from training.data import LadderData, request_cost_usd
from training.verifier_fit import AnswerMatrices, VerifierScores

NO_VERIFIER = float("inf")  # a margin no gain reaches: never escalate on the verifier's word


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


def margin_from_json(value: float | None) -> float:
    return NO_VERIFIER if value is None else float(value)


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
    policy = build_policy(setting["policy"], **setting["policy_params"])
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
