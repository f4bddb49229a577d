"""Policy calibration, on training data only: the search over the knobs and the objective's choice.

The knobs (start-tier thresholds, the verifier's per-tier margins, output budgets, max escalations) are
picked on out-of-fold predictions: every training prompt is scored by a prompt classifier and a verifier
that did not see it, so the chosen point is what the router does on unseen prompts, not on memorised ones.
Each setting's figures come from ``training.simulate``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.registry import ModelRegistry
from routing.prompt_kind import DEFAULT_KIND, routing_kind
from routing.registry import build_policy
from training.data import LadderData, kfold_by_source
from training.simulate import NO_VERIFIER, CostFn, GridSums, budgeted_rows, grid_sums, registry_cost_fn, start_tiers
from training.verifier_fit import AnswerMatrices, VerifierScores

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
                policy = build_policy(policy_name, **params)
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
