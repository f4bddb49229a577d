"""Training a pool policy (``routing.pool_policy``): any set of priced models, one reference model.

    python -m training.train --data FILES --pool M1,M2,... --reference REF --prices P --out DIR

1. Every answer of every pool model gets its features; a logistic head per model learns p(right)
   from them, out of fold (``--folds``) for calibration and on everything for serving.
2. Prompts are grouped by kind (surface kind, refined by the topic model's subject where the
   records carry one); kinds with fewer than ``--min-kind-prompts`` search prompts share their
   surface kind's or the default plan.
3. The training prompts are split (stratified by source) into a search part and a calibration part.
   On the search part every plan of every kind is simulated (first model x second x final x two
   thresholds x agreement); a sweep over the price of a dollar and of a disagreement with the
   reference gives one whole policy per point, each kind taking its best plan at that price.
4. Learn then Test (``training.guard``): the policies are ordered on the search part alone by how
   safely they clear the guard, and tested in that order on the calibration part; the cheapest of
   those passed before the first failure is served, the reference alone when none passes. The
   artifact records the guard, its confidence and the fresh-sample size it was sized for.

The simulator here (``simulate_plan``) applies the same rule as the live ``PoolAnswerCheck``
(``routing.pool_policy.accept_stage``) plus the executor's standard answer checks; ``training.evaluate``
checks that it gives exactly the real replay's cost and accuracy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import platform
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from core.messages import PromptMessage, Tier
from core.outcomes import OutcomeRecord, load_outcomes
from core.registry import ModelRegistry, ModelSpec, Prices
from routing.answer_checks import RefusalCheck, TooShortCheck
from routing.answer_features import parse_answer
from routing.pool_policy import NEVER, AnswerModel, PoolPlan, PoolPolicy, pool_answer_features
from routing.prompt_kind import DEFAULT_KIND, prompt_kind
from routing.verifier import LogisticHead
from training.data import REPLAY_CONTEXT_WINDOW, data_fingerprint, kfold_by_source, load_prices, request_cost_usd
from training.guard import GuardSpec, guard_test

log = logging.getLogger("training.pool")

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_KIND_PROMPTS = 150
COST_PRICES = (0.0, *np.geomspace(0.003, 30, 40))  # right answers a reference call's average cost is worth
DISAGREEMENT_PRICES = (0.0, 0.5, 1.0, 2.0, 4.0)  # right answers a disagreement with the reference costs
ANSWER_MODEL_C = 0.5
KEPT_BACK_RATIO = 3 / 7  # the kept-back check holds 30 % of the prompts against the 70 % given


# ---------------------------------------------------------------------------------------------- data

@dataclass
class PoolData:
    models: list[str]  # pool order; ``reference`` among them
    reference: str
    records: list[OutcomeRecord]
    correct: np.ndarray  # (n, M) bool
    cost_usd: np.ndarray  # (n, M)
    parsed: np.ndarray  # (n, M) object: the parsed final answer or None
    standard_reject: np.ndarray  # (n, M) bool: refused or empty (the executor's standard checks)
    features: np.ndarray  # (n, M, F)
    skipped_incomplete: int = 0

    @property
    def agree(self) -> np.ndarray:
        """(n, M, M): both answers parsed and the same (the live check's agreement)."""
        if getattr(self, "_agree", None) is None:
            p = self.parsed
            self._agree = np.asarray([[[a is not None and a == b for b in row] for a in row] for row in p], dtype=bool)
        return self._agree

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def ref(self) -> int:
        return self.models.index(self.reference)

    @property
    def sources(self) -> list[str]:
        return [r.source for r in self.records]

    def fingerprint(self) -> str:
        return data_fingerprint(self.records)

    def subset(self, rows: Sequence[int]) -> PoolData:
        rows = list(rows)
        return PoolData(self.models, self.reference, [self.records[i] for i in rows], self.correct[rows],
                        self.cost_usd[rows], self.parsed[rows], self.standard_reject[rows], self.features[rows])


def parse_pool(text: str, reference: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if len(set(models)) != len(models) or len(models) < 2:
        raise ValueError(f"--pool needs at least two distinct model ids, got {text!r}")
    if reference not in models:
        models.append(reference)  # the reference is always callable: it is the accuracy bar and the fallback
    return models


def build_pool_data(records: Sequence[OutcomeRecord], models: list[str], reference: str,
                    prices: dict[str, Prices], progress: bool = True) -> PoolData:
    missing = [m for m in models if m not in prices]
    if missing:
        raise ValueError(f"prices file has no price for {missing}")
    kept = [r for r in records if all(m in r.outcomes for m in models)]
    if not kept:
        raise ValueError(f"no record has outcomes for all of {models}")
    n, m_count = len(kept), len(models)
    correct = np.zeros((n, m_count), dtype=bool)
    cost = np.zeros((n, m_count))
    parsed = np.empty((n, m_count), dtype=object)
    reject = np.zeros((n, m_count), dtype=bool)
    feats: list[list[np.ndarray]] = []
    refusal, too_short = RefusalCheck(), TooShortCheck()
    dummy = PromptMessage(request_id="training", prompt="training")
    from routing.answer_checks import Answer  # noqa: PLC0415

    for i, record in enumerate(tqdm(kept, desc="answer features", unit="prompt", disable=not progress)):
        row = []
        for k, model in enumerate(models):
            out = record.outcomes[model]
            correct[i, k] = out.correct
            cost[i, k] = request_cost_usd(prices[model], out.input_tokens, out.output_tokens)
            parsed[i, k] = parse_answer(out.response)
            answer = Answer(model, out.response, "stop", out.output_tokens, input_tokens=out.input_tokens)
            reject[i, k] = bool(refusal.reject_reason(dummy, answer) or too_short.reject_reason(dummy, answer))
            row.append(pool_answer_features(record.prompt, out.response, out.input_tokens, out.output_tokens))
        feats.append(row)
    return PoolData(models, reference, kept, correct, cost, parsed, reject, np.asarray(feats),
                    len(records) - len(kept))


def load_pool_data(paths: Sequence[Path | str], models: list[str], reference: str,
                   prices: dict[str, Prices]) -> PoolData:
    return build_pool_data(load_outcomes(paths), models, reference, prices)


def pool_registry(models: list[str], reference: str, prices: dict[str, Prices]) -> ModelRegistry:
    """Replay models for the pool; tiers are price bands (the reference is ``expensive``)."""
    missing = [m for m in models if m not in prices]
    if missing:
        raise ValueError(f"prices file has no price for {missing}")
    others = sorted((m for m in models if m != reference), key=lambda m: prices[m].input + prices[m].output)
    band = {m: (Tier.cheap if i < (len(others) + 1) // 2 else Tier.mid) for i, m in enumerate(others)}
    band[reference] = Tier.expensive
    return ModelRegistry(pool=True, counterfactual=reference, models=[
        ModelSpec(name=m, kind="replay", tier=band[m], context_window=REPLAY_CONTEXT_WINDOW,
                  max_output_tokens=REPLAY_CONTEXT_WINDOW, prices=prices[m]) for m in models])


# ------------------------------------------------------------------------------------- answer model

def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(-1, x.shape[-1])
    mean, scale = flat.mean(axis=0), flat.std(axis=0)
    scale[scale < 1e-9] = 1.0
    return mean, scale


def _head(x: np.ndarray, y: np.ndarray) -> LogisticHead:
    if y.min() == y.max():
        p = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        return LogisticHead(np.zeros(x.shape[1]), float(np.log(p / (1 - p))))
    fit = LogisticRegression(C=ANSWER_MODEL_C, max_iter=2000).fit(x, y)
    return LogisticHead(fit.coef_[0].astype(np.float64), float(fit.intercept_[0]))


def fit_answer_model(data: PoolData, rows: np.ndarray | None = None) -> AnswerModel:
    rows = np.arange(data.n) if rows is None else rows
    mean, scale = _standardiser(data.features[rows])
    heads = {m: _head((data.features[rows, k] - mean) / scale, data.correct[rows, k].astype(int))
             for k, m in enumerate(data.models)}
    return AnswerModel(mean, scale, heads)


def answer_probabilities(model: AnswerModel, data: PoolData, rows: np.ndarray | None = None) -> np.ndarray:
    rows = np.arange(data.n) if rows is None else rows
    return np.stack([model.probability(m, data.features[rows, k]) for k, m in enumerate(data.models)], axis=1)


def out_of_fold_probabilities(data: PoolData, folds: int, seed: int) -> np.ndarray:
    """(n, M) p(right) of each model's answer from an answer model that did not see that prompt."""
    fold = kfold_by_source(data.sources, folds, seed)
    out = np.zeros(data.correct.shape)
    for k in range(folds):
        train_rows, test_rows = np.where(fold != k)[0], np.where(fold == k)[0]
        out[test_rows] = answer_probabilities(fit_answer_model(data, train_rows), data, test_rows)
    return out


# ------------------------------------------------------------------------------------------ kinds

def prompt_kinds(data: PoolData, topics: Sequence[str | None] | None) -> list[str]:
    return [f"{prompt_kind(r.prompt)}/{t}" if t else prompt_kind(r.prompt)
            for r, t in zip(data.records, topics or [None] * data.n, strict=True)]


def kind_groups(kinds: Sequence[str], search_rows: np.ndarray, min_prompts: int) -> dict[str, str]:
    """Each kind -> the kind whose plan it uses (itself, its surface kind, or the default), by the
    number of search prompts: the lookup ``routing.prompt_kind.settings_for_kind`` makes at serving."""
    counts: dict[str, int] = defaultdict(int)
    for i in search_rows:
        counts[kinds[i]] += 1
        if "/" in kinds[i]:
            counts[kinds[i].split("/", 1)[0]] += 1
    own = {k for k, c in counts.items() if c >= min_prompts}
    out = {}
    for kind in set(kinds):
        surface = kind.split("/", 1)[0]
        out[kind] = kind if kind in own else surface if surface in own else DEFAULT_KIND
    return out


# ------------------------------------------------------------------------------------- simulation

def enumerate_plans(models: Sequence[str], reference: str) -> list[PoolPlan]:
    """Every plan of up to three stages; the reference is only ever the last stage (calling anything
    after it would cost more than always calling it)."""
    plans: list[PoolPlan] = []
    for first in models:
        plans.append(PoolPlan(first))
        if first == reference:
            continue
        for final in models:
            if final == first:
                continue
            for t1 in THRESHOLDS:
                plans.append(PoolPlan(first, final=final, accept_first_at=t1))
            if final == reference:
                continue
            second = final
            for last in models:
                if last in (first, second):
                    continue
                for t1, t2, agree in itertools.product((*THRESHOLDS, NEVER), (*THRESHOLDS, NEVER), (False, True)):
                    if t2 == NEVER and not agree:
                        continue  # the middle answer would never be kept: same as first -> last
                    plans.append(PoolPlan(first, second=second, final=last, accept_first_at=t1,
                                          accept_second_at=t2, accept_agreement=agree))
    return plans


def simulate_plan(data: PoolData, probabilities: np.ndarray, rows: np.ndarray, plan: PoolPlan,
                  override: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt of ``rows``: the final model's index, whether it is right and the cost of every call,
    under the executor's standard checks and ``accept_stage``'s rule, vectorised."""
    idx = {m: k for k, m in enumerate(data.models)}
    f = idx[plan.first]
    reject_std = data.standard_reject[rows]
    cost = data.cost_usd[rows, f].copy()
    final = np.full(len(rows), f)
    after = plan.after_first
    if after:
        rejected = reject_std[:, f] | (probabilities[rows, f] < plan.accept_first_at)
        nxt = idx[after[0]]
        cost += rejected * data.cost_usd[rows, nxt]
        final = np.where(rejected, nxt, final)
        if plan.second is not None and plan.final is not None:
            s, last = idx[plan.second], idx[plan.final]
            agrees = data.agree[rows, f, s]
            keep_second = (plan.accept_agreement & agrees) | (probabilities[rows, s] >= plan.accept_second_at)
            rejected2 = rejected & (reject_std[:, s] | ~keep_second)
            cost += rejected2 * data.cost_usd[rows, last]
            final = np.where(rejected2, last, final)
    if override is not None and override[rows].any():
        hit = override[rows]
        final = np.where(hit, data.ref, final)
        cost = np.where(hit, data.cost_usd[rows, data.ref], cost)
    correct = data.correct[rows, final]
    return final, correct, cost


@dataclass
class PlanTable:
    """Every plan's figures on one group's search prompts."""

    plans: list[PoolPlan]
    correct: np.ndarray  # (plans,) right answers
    cost: np.ndarray  # (plans,) USD
    disagree: np.ndarray  # (plans,) prompts where right/wrong differs from the reference's


def plan_table(data: PoolData, probabilities: np.ndarray, rows: np.ndarray, plans: list[PoolPlan],
               override: np.ndarray) -> PlanTable:
    """Every plan's totals on ``rows``: one ``simulate_plan`` per plan (the plain definition)."""
    ref = data.correct[rows, data.ref]
    c, k, d = np.zeros(len(plans)), np.zeros(len(plans)), np.zeros(len(plans))
    for j, plan in enumerate(plans):
        _, right, cost = simulate_plan(data, probabilities, rows, plan, override)
        c[j], k[j], d[j] = right.sum(), cost.sum(), (right != ref).sum()
    return PlanTable(plans, c, k, d)


def fast_plan_table(data: PoolData, probabilities: np.ndarray, rows: np.ndarray, override: np.ndarray) -> PlanTable:
    """``plan_table`` of ``enumerate_plans`` for the same totals, with the thresholds of each model
    triple broadcast at once (a test checks it against the plain definition)."""
    models, m_ref = data.models, data.ref
    ov = override[rows]
    keep = ~ov
    ref = data.correct[rows, m_ref]
    ref_cost_ov = (data.cost_usd[rows, m_ref] * ov).sum()
    ref_right_ov = (ref & ov).sum()
    correct, cost, std, prob = data.correct[rows], data.cost_usd[rows], data.standard_reject[rows], probabilities[rows]
    agree = data.agree[rows]
    t_all = np.asarray((*THRESHOLDS, NEVER))
    plans: list[PoolPlan] = []
    c_out: list[np.ndarray] = []
    k_out: list[np.ndarray] = []
    d_out: list[np.ndarray] = []

    def emit(plan_list: list[PoolPlan], right: np.ndarray, spend: np.ndarray) -> None:
        # right, spend: (plans, n) before the override; the override sends those prompts to the reference.
        plans.extend(plan_list)
        c_out.append((right & keep).sum(axis=1) + ref_right_ov)
        k_out.append((spend * keep).sum(axis=1) + ref_cost_ov)
        d_out.append(((right != ref) & keep).sum(axis=1))

    reference = models[m_ref]
    for f, first in enumerate(models):
        emit([PoolPlan(first)], correct[None, :, f], cost[None, :, f])
        if first == reference:
            continue
        rej1_all = std[None, :, f] | (prob[None, :, f] < t_all[:, None])  # (T+1, n)
        for s_, second in enumerate(models):
            if s_ == f:
                continue
            rej1 = rej1_all[: len(THRESHOLDS)]
            emit([PoolPlan(first, final=second, accept_first_at=t) for t in THRESHOLDS],
                 np.where(rej1, correct[None, :, s_], correct[None, :, f]),
                 cost[None, :, f] + rej1 * cost[None, :, s_])
            if second == reference:
                continue
            for l_, last in enumerate(models):
                if l_ in (f, s_):
                    continue
                plan_list, rights, spends = [], [], []
                for agree_flag in (False, True):
                    keep_second = (agree_flag & agree[None, :, f, s_]) | (prob[None, :, s_] >= t_all[:, None])
                    rej2_base = std[None, :, s_] | ~keep_second  # (T2, n)
                    for i1, t1 in enumerate(t_all):
                        r1 = rej1_all[i1]
                        for i2, t2 in enumerate(t_all):
                            if t2 == NEVER and not agree_flag:
                                continue
                            r2 = r1 & rej2_base[i2]
                            plan_list.append(PoolPlan(first, second=second, final=last, accept_first_at=float(t1),
                                                      accept_second_at=float(t2), accept_agreement=agree_flag))
                            rights.append(np.where(r2, correct[:, l_], np.where(r1, correct[:, s_], correct[:, f])))
                            spends.append(cost[:, f] + r1 * cost[:, s_] + r2 * cost[:, l_])
                emit(plan_list, np.asarray(rights), np.asarray(spends))
    return PlanTable(plans, np.concatenate(c_out).astype(float), np.concatenate(k_out), np.concatenate(d_out).astype(float))


# ------------------------------------------------------------------------------------- search + LTT

@dataclass
class Candidate:
    plans: dict[str, PoolPlan]  # group -> plan
    search_cost: float
    search_correct: float
    search_slack: float = 0.0  # how far the search part clears the guard's test (ordering only)


def sweep_candidates(tables: dict[str, PlanTable], reference_cost: float,
                     cost_prices: Sequence[float], disagreement_prices: Sequence[float]) -> list[Candidate]:
    """One whole policy per (price of a dollar, price of a disagreement): each group takes the plan
    maximising right answers - price x cost / average reference cost - price x disagreements."""
    seen: dict[tuple, Candidate] = {}
    for nu, mu in itertools.product(cost_prices, disagreement_prices):
        chosen = {}
        for group, table in tables.items():
            utility = table.correct - nu * table.cost / reference_cost - mu * table.disagree
            chosen[group] = int(np.argmax(utility))
        key = tuple(sorted(chosen.items()))
        if key not in seen:
            seen[key] = Candidate({g: tables[g].plans[j] for g, j in chosen.items()},
                                  float(sum(tables[g].cost[j] for g, j in chosen.items())),
                                  float(sum(tables[g].correct[j] for g, j in chosen.items())))
    return list(seen.values())


def candidate_outcome(data: PoolData, probabilities: np.ndarray, rows: np.ndarray, groups: Sequence[str],
                      candidate: Candidate, override: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt of ``rows``: right or wrong, and cost, under the candidate's plans."""
    right = np.zeros(len(rows), dtype=bool)
    cost = np.zeros(len(rows))
    group_of = np.asarray([groups[i] for i in rows])
    for group, plan in candidate.plans.items():
        mask = group_of == group
        if mask.any():
            _, r, c = simulate_plan(data, probabilities, rows[mask], plan, override)
            right[mask], cost[mask] = r, c
    return right, cost


def reference_candidate(reference: str, groups: Sequence[str]) -> Candidate:
    return Candidate({g: PoolPlan(reference) for g in set(groups)}, float("inf"), 0.0, float("inf"))


@dataclass
class PoolCalibration:
    chosen: Candidate
    spec: GuardSpec
    table: list[dict[str, Any]]
    candidates: int
    search_rows: np.ndarray
    calibration_rows: np.ndarray
    chosen_figures: dict[str, Any]


def split_rows(data: PoolData, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Search and calibration rows, stratified by source, seeded."""
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(data.sources):
        by_source[s].append(i)
    search: list[int] = []
    for source in sorted(by_source):
        rows = np.asarray(by_source[source])
        rng.shuffle(rows)
        search.extend(rows[: int(round(share * len(rows)))].tolist())
    search_rows = np.asarray(sorted(search))
    calibration_rows = np.setdiff1d(np.arange(data.n), search_rows)
    return search_rows, calibration_rows


def override_mask(data: PoolData) -> np.ndarray:
    """Prompts the policy's guard rails send straight to the reference (keyword overrides)."""
    policy = PoolPolicy(reference=data.reference, default={"first": data.reference})
    return np.asarray([policy.overridden(PromptMessage(request_id="x", prompt=r.prompt)) is not None
                       for r in data.records], dtype=bool)


def calibrate_pool(data: PoolData, probabilities: np.ndarray, kinds: Sequence[str], spec: GuardSpec,
                   search_share: float = 0.5, min_kind_prompts: int = MIN_KIND_PROMPTS, seed: int = 0,
                   progress: bool = True) -> tuple[PoolCalibration, dict[str, str]]:
    search_rows, cal_rows = split_rows(data, search_share, seed)
    group_map = kind_groups(kinds, search_rows, min_kind_prompts)
    groups = [group_map[k] for k in kinds]
    override = override_mask(data)
    tables: dict[str, PlanTable] = {}
    group_names = sorted(set(groups[i] for i in search_rows))
    for group in tqdm(group_names, desc="simulate plans per kind", unit="kind", disable=not progress):
        rows = np.asarray([i for i in search_rows if groups[i] == group])
        tables[group] = fast_plan_table(data, probabilities, rows, override)
    for group in set(groups) - set(tables):  # a kind seen only in the calibration part: the reference
        tables[group] = PlanTable([PoolPlan(data.reference)], np.zeros(1), np.zeros(1), np.zeros(1))
    reference_cost = float(data.cost_usd[search_rows, data.ref].mean())
    total_ref_cost = float(data.cost_usd[search_rows, data.ref].sum())
    ref_cal = data.correct[cal_rows, data.ref]
    reference = reference_candidate(data.reference, groups)
    ref_outcome = candidate_outcome(data, probabilities, cal_rows, groups, reference, override)
    # Candidates: the whole policies of a sweep over the price of a dollar and of a disagreement. K
    # are picked on the search part alone: among those that pass the guard's test there (the same test,
    # on the search prompts).
    pool_of = [c for c in sweep_candidates(tables, reference_cost, COST_PRICES, DISAGREEMENT_PRICES)
               if c.search_cost < total_ref_cost]
    ref_search = data.correct[search_rows, data.ref]
    passing = []
    for cand in pool_of:
        right, _ = candidate_outcome(data, probabilities, search_rows, groups, cand, override)
        test = guard_test(right, ref_search, spec)
        cand.search_slack = test["fresh_sample_bound"] - test["required"]
        if test["passed"]:
            passing.append(cand)
    passing.sort(key=lambda c: -c.search_cost)
    # The most expensive passing policy, then evenly down to the median one: the cheapest policies that
    # pass on the search part are the ones the search flatters most.
    picks = sorted({int(round(x)) for x in np.linspace(0, (len(passing) - 1) / 2, spec.candidates)}) if passing else []
    picked = [passing[i] for i in picks]
    table: list[dict[str, Any]] = []
    certified: list[tuple[Candidate, np.ndarray, np.ndarray]] = [(reference, *ref_outcome)]
    for j, cand in enumerate(picked):
        right, cost = candidate_outcome(data, probabilities, cal_rows, groups, cand, override)
        row = {"candidate": j, **guard_test(right, ref_cal, spec), "search_cost_usd": cand.search_cost,
               "search_slack": cand.search_slack, "calibration_cost_usd": float(cost.sum())}
        table.append(row)
        if row["passed"]:
            certified.append((cand, right, cost))
    chosen, right, cost = min(certified, key=lambda c: c[2].sum())
    ref_cost_cal = float(data.cost_usd[cal_rows, data.ref].sum())
    figures = {"calibration_prompts": int(len(cal_rows)), "search_prompts": int(len(search_rows)),
               "accuracy": float(right.mean()), "reference_accuracy": float(ref_cal.mean()),
               "accuracy_minus_reference": float(right.mean() - ref_cal.mean()),
               "savings_vs_reference": 1 - float(cost.sum()) / ref_cost_cal if ref_cost_cal else 0.0,
               "tested": len(table), "passed": len(certified) - 1, "passing_on_search_part": len(passing)}
    return PoolCalibration(chosen, spec, table, len(pool_of), search_rows, cal_rows, figures), group_map


def policy_params(data: PoolData, chosen: Candidate) -> dict[str, Any]:
    default = chosen.plans.get(DEFAULT_KIND, PoolPlan(data.reference))
    by_kind = {g: p.as_json() for g, p in chosen.plans.items() if g != DEFAULT_KIND}
    return {"reference": data.reference, "default": default.as_json(), "by_kind": by_kind}


def default_eval_size(paths: Sequence[str], n: int, records: Sequence[OutcomeRecord]) -> tuple[int, str]:
    """The fresh sample the guard is sized for: the held-out side of the split the data came from
    (``split.json`` beside it), else the kept-back check's share (30 % against the 70 % given)."""
    for raw in paths:
        path = Path(raw)
        for candidate in (path.parent / "split.json", path.parent.parent / "split.json", path / "split.json"):
            if candidate.is_file():
                try:
                    split = json.loads(candidate.read_text())
                except json.JSONDecodeError:
                    continue
                ratio = _test_ratio(split)
                if ratio:
                    return max(1, int(round(n * ratio))), f"{candidate}: test/train ratio {ratio:.3f}"
    return max(1, int(round(n * KEPT_BACK_RATIO))), "kept-back share: 30 % against the 70 % given"


def _test_ratio(split: dict[str, Any]) -> float | None:
    fraction = split.get("test_fraction")
    return fraction / (1 - fraction) if isinstance(fraction, int | float) and 0 < fraction < 1 else None


# ------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description="Train a pool routing policy.")
    p.add_argument("--data", nargs="+", required=True, help="outcomes files or folders")
    p.add_argument("--pool", required=True, help="M1,M2,... model ids as in the outcomes")
    p.add_argument("--reference", required=True, help="the model whose accuracy is the bar and whose cost the baseline")
    p.add_argument("--prices", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--guard", type=float, default=0.01, help="accuracy the router may lose against the reference")
    p.add_argument("--guard-confidence", type=float, default=0.9,
                   help="probability that the guard holds on a fresh sample of --guard-eval-size prompts")
    p.add_argument("--guard-eval-size", type=int,
                   help="the fresh sample the guard is sized for (default: the split's held-out side when the "
                        "data come from `training.split`, else 3/7 of the training prompts: the kept-back share)")
    p.add_argument("--search-share", type=float, default=0.5,
                   help="share of the training prompts the plans are searched on; the rest certify the guard")
    p.add_argument("--folds", type=int, default=10, help="cross-fitting folds for the answer model's scores")
    p.add_argument("--min-kind-prompts", type=int, default=MIN_KIND_PROMPTS)
    p.add_argument("--no-topics", action="store_true", help="do not learn a topic model from the records' category")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude-ids", type=Path, metavar="FILE",
                   help="a file of record ids (one per line) left out of training, e.g. the prompts a demo replays")
    return p


def read_excluded_ids(path: Path) -> set[str]:
    try:
        return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}
    except OSError as exc:
        raise SystemExit(f"--exclude-ids: cannot read {path}: {exc}") from None


def train_pool(args: argparse.Namespace, argv: Sequence[str] | None, staging: Path) -> dict[str, Any]:
    started = time.time()
    prices = load_prices(args.prices)
    models = parse_pool(args.pool, args.reference)
    records = load_outcomes(args.data)
    excluded = read_excluded_ids(args.exclude_ids) if args.exclude_ids else set()
    if excluded:  # e.g. the local demo's replay sample: its figures stay out-of-sample
        records = [r for r in records if r.id not in excluded]
    data = build_pool_data(records, models, args.reference, prices)
    if data.n < 4 * args.folds:
        raise SystemExit(f"only {data.n} prompts with outcomes for {models}: too few to train on")
    log.info("%d prompts answered by all of %s (%d skipped)", data.n, models, data.skipped_incomplete)
    eval_size, eval_size_from = (args.guard_eval_size, "--guard-eval-size") if args.guard_eval_size \
        else default_eval_size(args.data, data.n, data.records)
    spec = GuardSpec(guard=args.guard, confidence=args.guard_confidence, eval_size=eval_size)

    topics, topic_report = None, None
    if not args.no_topics:
        from training.topic import fit_topic_models, record_topics  # noqa: PLC0415

        true_topics = record_topics(data.records)
        if true_topics is not None:
            topics, topic_model = fit_topic_models([r.prompt for r in data.records], true_topics, args.folds,
                                                   args.seed)
            topic_model.save(staging)
            topic_report = {"out_of_fold_accuracy": float(np.mean([a == b for a, b in zip(topics, true_topics,
                                                                                          strict=True)]))}
    kinds = prompt_kinds(data, topics)
    probabilities = out_of_fold_probabilities(data, args.folds, args.seed)
    auc = {m: _auc(data.correct[:, k], probabilities[:, k]) for k, m in enumerate(models)}
    log.info("answer model, out-of-fold AUC: %s", {m: round(a, 3) if a else None for m, a in auc.items()})
    cal, group_map = calibrate_pool(data, probabilities, kinds, spec, args.search_share, args.min_kind_prompts,
                                    args.seed)
    fit_answer_model(data).save(staging)
    params = policy_params(data, cal.chosen)
    policy_doc = {"policy": "pool", "params": params, "classifier": "heuristic",
                  "checks": ["refusal", "too_short", "pool_answer"], "answer_model": AnswerModel.FILE,
                  "max_escalations": 2, "guard": {**spec.as_json(), "eval_size_from": eval_size_from}}
    (staging / "policy.json").write_text(json.dumps(policy_doc, indent=2) + "\n")
    ref_cost = float(data.cost_usd[:, data.ref].sum())
    card = {
        "pool": models, "reference": args.reference,
        "prices_usd_per_1m": {m: prices[m].model_dump() for m in models},
        "data": {"files": [str(p) for p in args.data], "n": data.n, "fingerprint": data.fingerprint(),
                 "skipped_incomplete": data.skipped_incomplete,
                 "per_source": {s: data.sources.count(s) for s in sorted(set(data.sources))},
                 "excluded_ids": {"file": str(args.exclude_ids), "count": len(excluded)} if excluded else None},
        "guard": {**spec.as_json(), "eval_size_from": eval_size_from, "sequence": cal.table,
                  "policies_searched": cal.candidates, "chosen_on_calibration_part": cal.chosen_figures,
                  "statement": (f"with probability >= {spec.confidence:.0%}, accuracy >= {args.reference} "
                                f"- {100 * spec.guard:g} pt on a fresh sample of {spec.eval_size} prompts")},
        "answer_model": {"features": int(data.features.shape[-1]), "folds": args.folds, "out_of_fold_auc": auc},
        "topic_model": topic_report,
        "kinds": {"groups": sorted(set(group_map.values())), "min_kind_prompts": args.min_kind_prompts},
        "plans": {g: p.describe() for g, p in sorted(cal.chosen.plans.items())},
        "baselines_training_data": {m: {"accuracy": float(data.correct[:, k].mean()),
                                        "cost_usd": float(data.cost_usd[:, k].sum()),
                                        "savings_vs_reference": 1 - float(data.cost_usd[:, k].sum()) / ref_cost}
                                    for k, m in enumerate(models)},
        "command": "python -m training.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_seconds": round(time.time() - started, 1),
        "python": platform.python_version(),
    }
    (staging / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (staging / "MODEL_CARD.md").write_text(_card_markdown(card))
    return card


def _card_markdown(card: dict[str, Any]) -> str:
    g = card["guard"]
    fig = g["chosen_on_calibration_part"]
    lines = ["# Pool router artifact", "", f"Pool: {', '.join(card['pool'])}; reference {card['reference']}.", "",
             f"Guard: {g['statement']} (learn then test on {fig['calibration_prompts']} calibration prompts, "
             f"{fig['passed']} of {fig['tested']} candidates picked on the search part passed).", "",
             f"Chosen, on the calibration part: savings {100 * fig['savings_vs_reference']:.1f}% at "
             f"{100 * fig['accuracy_minus_reference']:+.2f} pt.", "", "Plans:", ""]
    lines += [f"- {kind}: {plan}" for kind, plan in card["plans"].items()]
    lines += ["", f"Command: `{card['command']}`", ""]
    return "\n".join(lines)


def _auc(right: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(right, score)) if right.any() and not right.all() else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    started = time.time()
    out_dir: Path = args.out
    staging = out_dir.with_name(out_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        card = train_pool(args, argv, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed run leaves no half-written artifact behind
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    fig = card["guard"]["chosen_on_calibration_part"]
    log.info("pool artifact written to %s in %.0f s: %s; calibration part: savings %.1f%% at %+.2f pt",
             out_dir, time.time() - started, card["guard"]["statement"], 100 * fig["savings_vs_reference"],
             100 * fig["accuracy_minus_reference"])
    return 0
