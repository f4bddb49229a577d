"""Calibration on out-of-fold predictions meets its objective on its own data (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_outcomes import LADDER_ARG, PRICES, make_records

from core.messages import TIER_ORDER
from core.outcomes import OutcomeRecord
from core.registry import Prices
from routing.prompt_kind import DEFAULT_KIND
from training.calibrate import (
    Objective,
    _merge,
    _pareto_parts,
    _Part,
    _shrink_toward_parents,
    _Sums,
    calibrate,
    kind_groups,
    kind_parent,
)
from training.data import Ladder, build_ladder_data, label_from_correct, replay_registry, stratified_split
from training.procedure_check import procedure_check, safety_from_check
from training.simulate import (
    NO_VERIFIER,
    GridSums,
    budgeted_rows,
    grid_sums,
    registry_cost_fn,
    simulate,
    simulate_rows,
    simulate_setting,
)
from training.verifier_fit import answer_matrices, out_of_fold_verifier_scores


@pytest.fixture(scope="module")
def setup():
    records = [OutcomeRecord.model_validate(r) for r in make_records(300, "alpha", 3) + make_records(200, "beta", 4)]
    prices = {k: Prices.model_validate(v) for k, v in PRICES.items() if not k.startswith("_")}
    ladder = Ladder.parse(LADDER_ARG)
    data = build_ladder_data(records, ladder, prices)
    registry = replay_registry(ladder, prices)
    probs = np.full((data.n, 3), 1 / 3)
    matrices = answer_matrices(data, probs)
    scores = out_of_fold_verifier_scores(data, matrices, registry, folds=3, seed=0)
    return data, registry, probs, matrices, scores


def test_labels_follow_correctness() -> None:
    assert label_from_correct(True, False) == "simple"
    assert label_from_correct(False, True) == "medium"
    assert label_from_correct(False, False) == "complex"


def test_split_is_deterministic_and_stratified() -> None:
    records = [OutcomeRecord.model_validate(r) for r in make_records(50, "a", 1) + make_records(30, "b", 2)]
    train, test = stratified_split(records, 0.2, seed=7)
    assert (train, test) == stratified_split(records, 0.2, seed=7)
    assert not set(train) & set(test) and len(train) + len(test) == 80
    assert sum(records[i].source == "a" for i in test) == 10 and sum(records[i].source == "b" for i in test) == 6


def test_cascade_meets_the_guard_and_saves(setup) -> None:
    data, registry, probs, matrices, scores = setup
    objective = Objective("guard", guard=0.01, safety_z=1.0)
    result = calibrate(data, registry, probs, matrices, scores, "cascade", objective)
    chosen = result.chosen
    assert result.feasible
    assert chosen.accuracy - chosen.diff_se >= result.expensive_accuracy - 0.01
    assert chosen.cost_usd < 0.7 * result.expensive_cost_usd  # the verifier has real signal here
    # The frontier is monotone: more spend buys more accuracy.
    costs = [c.cost_usd for c in result.frontier]
    accs = [c.accuracy for c in result.frontier]
    assert costs == sorted(costs) and accs == sorted(accs)


def test_threshold_policy_is_an_option(setup) -> None:
    data, registry, probs, matrices, _ = setup
    result = calibrate(data, registry, probs, matrices, None, "threshold", Objective("guard"))
    assert result.chosen.policy == "threshold"
    assert set(result.chosen.policy_params) == {"simple_threshold", "medium_threshold"}
    assert result.chosen.accuracy - result.chosen.diff_se >= result.expensive_accuracy - 0.01


@pytest.mark.parametrize(("kind", "target"), [("spend", 0.5), ("expensive-share", 0.3)])
def test_budget_objectives(setup, kind: str, target: float) -> None:
    data, registry, probs, matrices, scores = setup
    result = calibrate(data, registry, probs, matrices, scores, "cascade", Objective(kind, target=target))
    if kind == "spend":
        assert result.chosen.cost_usd <= target * result.expensive_cost_usd
    else:
        assert result.chosen.expensive_share <= target


def test_simulation_charges_every_call(setup) -> None:
    data, _, _, matrices, scores = setup
    start = np.zeros(data.n, dtype=int)
    out = simulate(data.correct, data.cost_usd, start, matrices.default_reject, scores, (-10.0, -10.0), 2)
    # Margins that always escalate: every request pays for all three models and ends at the top.
    assert out.calls.all() and (out.final_tier == 2).all()
    assert out.cost_usd == pytest.approx(data.cost_usd.sum())


def test_grid_sums_match_the_simulator_for_every_margin_pair(setup) -> None:
    """Calibration totals all margin pairs at once; each must equal the one-setting simulator."""
    data, registry, _, matrices, scores = setup
    rng = np.random.default_rng(3)
    cost_fn = registry_cost_fn(registry)
    rows = np.arange(data.n)
    expensive_right = data.correct[:, 2].astype(float)
    grid = ((-0.3, 0.0, 0.1, 0.4, NO_VERIFIER), (-0.2, 0.05, 0.3, NO_VERIFIER))
    median_out = np.median(matrices.output_tokens, axis=0)
    for budgets in (np.full(3, np.inf), median_out):  # no budget, and one that cuts half the answers
        prepared = budgeted_rows(data.correct, matrices, cost_fn, rows, np.broadcast_to(budgets, (data.n, 3)), scores)
        start = rng.integers(0, 3, data.n)
        for max_esc in (1, 2):
            sums = grid_sums(prepared, start, expensive_right, grid, max_esc)
            for i, j in np.ndindex(sums.cost.shape):
                out = simulate_rows(prepared, start, (grid[0][i], grid[1][j]), max_esc)
                diff = out.correct.astype(float) - expensive_right
                assert sums.cost[i, j] == pytest.approx(out.cost_usd)
                assert sums.diff_sum[i, j] == pytest.approx(diff.sum())
                assert sums.diff_sq[i, j] == pytest.approx((diff ** 2).sum())
                assert sums.expensive_calls[i, j] == pytest.approx(out.calls[:, 2].sum())


def test_output_budget_charges_the_budget_and_falls_back_to_a_finished_answer(setup) -> None:
    data, registry, _, matrices, scores = setup
    rows = np.arange(data.n)
    budgets = np.array([np.inf, np.inf, 1.0])  # every expensive answer is cut off after one token
    prepared = budgeted_rows(data.correct, matrices, registry_cost_fn(registry), rows,
                             np.broadcast_to(budgets, (data.n, 3)), scores)
    always_up = (-10.0, -10.0)
    out = simulate_rows(prepared, np.zeros(data.n, dtype=int), always_up, 2)
    # Every request paid cheap + mid in full and one output token of the expensive model ...
    top = registry.by_tier(TIER_ORDER[2]).prices
    expected = data.cost_usd[:, 0] + data.cost_usd[:, 1] + (matrices.input_tokens[:, 2] * top.input + top.output) / 1e6
    assert out.cost_usd == pytest.approx(expected.sum())
    # ... and answered with the mid model's (finished) answer.
    assert (out.final_tier == 1).all() and (out.correct == data.correct[:, 1]).all()
    started_on_top = simulate_rows(prepared, np.full(data.n, 2), always_up, 2)
    assert not started_on_top.correct.any()  # nothing finished to fall back to


def test_per_kind_calibration_keeps_rare_kinds_on_the_default(setup) -> None:
    data, _, _, _, _ = setup
    groups = kind_groups(data.records, min_prompts=10 ** 6)
    assert list(groups) == [DEFAULT_KIND] and len(groups[DEFAULT_KIND]) == data.n


def test_procedure_check_replays_the_calibration_on_unseen_halves(setup) -> None:
    data, registry, probs, matrices, scores = setup
    report = procedure_check(data, registry, probs, matrices, scores, "cascade", Objective("guard"))
    assert report["n"] == data.n
    # The synthetic data is learnable: calibrating on one half saves on the other, near the guard.
    assert report["savings_vs_expensive"] > 0.2
    assert report["accuracy_minus_expensive"] > -0.05
    assert report["repeats"] == 1 and len(report["optimism_by_half"]) == 2


def test_procedure_check_averages_several_halvings(setup) -> None:
    data, registry, probs, matrices, scores = setup
    one = procedure_check(data, registry, probs, matrices, scores, "cascade", Objective("guard"))
    three = procedure_check(data, registry, probs, matrices, scores, "cascade", Objective("guard"), repeats=3)
    assert three["repeats"] == 3 and len(three["optimism_by_half"]) == 6
    assert three["optimism_by_half"][:2] == one["optimism_by_half"]  # the first halving is the same one
    assert three["optimism"] == pytest.approx(np.mean(three["optimism_by_half"]))
    assert -1 <= three["accuracy_minus_expensive"] <= 1  # a per-prompt average over every replayed half


def test_procedure_check_picks_the_smallest_safety_that_keeps_the_guard(setup) -> None:
    data, registry, probs, matrices, scores = setup
    report = procedure_check(data, registry, probs, matrices, scores, "cascade", Objective("guard"),
                             safeties=(0.0, 0.01, 0.05))
    assert [e["extra_safety"] for e in report["by_safety"]] == [0.0, 0.01, 0.05]
    # While something is feasible, a larger margin never chooses a cheaper setting on the same halves.
    savings = [e["savings_vs_expensive"] for e in report["by_safety"]]
    assert savings[0] >= savings[1]
    assert report["savings_vs_expensive"] == savings[0]  # top-level figures: the first safety's

    def entry(extra: float, diff: float, se: float) -> dict:
        return {"extra_safety": extra, "accuracy_minus_expensive": diff, "diff_se": se}

    made_up = {"by_safety": [entry(0.0, -0.02, 0.004), entry(0.005, -0.008, 0.004), entry(0.01, -0.002, 0.004)]}
    assert safety_from_check(made_up, Objective("guard", guard=0.01, safety_z=1.0)) == (0.01, True)
    assert safety_from_check(made_up, Objective("guard", guard=0.01, safety_z=0.0)) == (0.005, True)
    assert safety_from_check(made_up, Objective("guard", guard=0.001)) == (0.01, False)  # none: the largest


def test_frontier_keeps_low_variance_settings_the_guard_may_need() -> None:
    """Two settings cost the same; one is 1 answer more accurate but disagrees with the expensive model
    on 60 prompts, the other on 4. The guard (accuracy - z SE) can prefer the second: it must survive."""
    def part(name: str, diff_sum: float, diff_sq: float) -> _Part:
        sums = _Sums(cost=1.0, diff_sum=diff_sum, diff_sq=diff_sq, expensive_calls=10.0, n=400)
        return _Part({name: {}}, sums, sums)

    noisy, steady = part("noisy", 0.0, 60.0), part("steady", -1.0, 4.0)
    kept = {next(iter(p.settings)) for p in _pareto_parts([noisy, steady])}
    assert kept == {"noisy", "steady"}
    dominated = part("dominated", -2.0, 60.0)  # less accurate and no steadier than "noisy": dropped
    assert "dominated" not in {next(iter(p.settings)) for p in _pareto_parts([noisy, steady, dominated])}


def test_split_check_judges_the_objective_on_the_other_half(setup) -> None:
    data, registry, probs, matrices, scores = setup
    result = calibrate(data, registry, probs, matrices, scores, "cascade", Objective("guard"), split_check=True)
    assert result.feasible
    # Figures are those of the check half: its own always-expensive baseline, not the whole set's.
    assert result.expensive_cost_usd < data.cost_usd[:, 2].sum()
    assert result.chosen.accuracy - result.chosen.diff_se >= result.expensive_accuracy - 0.01  # safety_z = 1


def test_kind_shrinkage_pulls_a_kind_toward_its_parent() -> None:
    """Topic kinds' figures become n/(n + n0) x (own sums + n0 x the surface kind's per-prompt sums);
    surface kinds and the default keep their own."""
    assert kind_parent("multiple_choice/law") == "multiple_choice"
    assert kind_parent("code") is None and kind_parent(DEFAULT_KIND) is None

    def sums(value: float) -> GridSums:
        return GridSums(*(np.full((1, 1), value) for _ in range(4)))

    sizes = {"mc/a": (100, 100), "mc/b": (300, 300), "code": (200, 200)}
    cells = {("mc/a", 0): ({}, sums(50.0), sums(50.0)),  # 0.5 per prompt
             ("mc/b", 0): ({}, sums(30.0), sums(30.0)),  # 0.1 per prompt
             ("code", 0): ({}, sums(100.0), sums(100.0))}  # 0.5 per prompt
    shrunk = _shrink_toward_parents(cells, sizes, pseudo_prompts=100.0)
    parent_mc = 80.0 / 400  # the two topics' prompts together
    # Answer counts are rounded to whole answers (as unshrunk sums are); cost is not.
    assert shrunk[("mc/a", 0)][1].diff_sum[0, 0] == round(100 / 200 * (50 + 100 * parent_mc))
    assert shrunk[("mc/b", 0)][2].cost[0, 0] == pytest.approx(300 / 400 * (30 + 100 * parent_mc))
    # A kind's per-prompt figure lands between its own and its parent's.
    assert parent_mc < shrunk[("mc/a", 0)][1].cost[0, 0] / 100 < 0.5
    assert shrunk[("code", 0)] == cells[("code", 0)]


def test_kind_shrinkage_keeps_the_guard_and_zero_gives_the_real_figures(setup) -> None:
    data, registry, probs, matrices, scores = setup
    objective = Objective("guard", guard=0.01, safety_z=1.0)
    topics = list(data.sources)  # the sources as topics: two topic kinds under one surface kind
    unshrunk = calibrate(data, registry, probs, matrices, scores, "cascade", objective, topics=topics,
                         kind_shrinkage=0.0)
    assert set(unshrunk.groups) == {"general/alpha", "general/beta"}
    replay = simulate_setting(data, matrices, registry_cost_fn(registry), registry, probs, scores,
                              unshrunk.chosen.as_json(), topics)
    assert unshrunk.chosen.accuracy == pytest.approx(replay.accuracy)
    assert unshrunk.chosen.cost_usd == pytest.approx(replay.cost_usd)
    shrunk = calibrate(data, registry, probs, matrices, scores, "cascade", objective, topics=topics,
                       kind_shrinkage=200.0)
    assert shrunk.feasible
    assert shrunk.chosen.accuracy - shrunk.chosen.diff_se >= shrunk.expensive_accuracy - 0.01


def test_merging_kinds_keeps_exactly_the_pairs_on_the_frontier() -> None:
    """The array merge against the plain definition: every pairing, then the frontier per penalty and key."""
    rng = np.random.default_rng(3)

    def parts(kind: str, count: int) -> list[_Part]:
        out = []
        for i in range(count):
            sums = _Sums(cost=float(rng.integers(1, 40)), diff_sum=float(rng.integers(-30, 5)),
                         diff_sq=float(rng.integers(0, 60)), expensive_calls=float(rng.integers(0, 20)), n=100)
            out.append(_Part({kind: {"i": i}}, sums, sums))
        return out

    a, b = parts("a", 40), parts("b", 30)
    merged = _merge(a, b)

    def naive_front(candidates: list[_Part]) -> list[tuple[int, int]]:
        keep: dict[tuple[int, int], None] = {}
        for penalty in (0.0, 0.03, 0.1):
            for key in ("cost", "expensive_calls"):
                best = -np.inf
                ranked = sorted(candidates, key=lambda p: (getattr(p.search, key),
                                                           -(p.search.diff_sum - penalty * p.search.diff_sq)))
                for p in ranked:
                    score = p.search.diff_sum - penalty * p.search.diff_sq
                    if score > best + 1e-9:
                        best = score
                        keep[(p.settings["a"]["i"], p.settings["b"]["i"])] = None
        return list(keep)

    every_pair = [_Part({**x.settings, **y.settings}, x.search + y.search, x.check + y.check) for x in a for y in b]
    assert [(p.settings["a"]["i"], p.settings["b"]["i"]) for p in merged] == naive_front(every_pair)
    assert 0 < len(merged) < len(every_pair)
    first = merged[0]
    pair = (a[first.settings["a"]["i"]], b[first.settings["b"]["i"]])
    assert first.search.cost == pair[0].search.cost + pair[1].search.cost
