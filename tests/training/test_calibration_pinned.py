"""Calibration, procedure check and held-out simulation pinned on a fixed synthetic input.

The expected values were produced by the training code before training/calibrate.py was split by
stage (commit f4d502f^) and again by the split code, byte for byte; a change that moves any of them
changes the figures docs/classifier.md reports, and must say so. No torch needed.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_outcomes import LADDER_ARG, PRICES, make_mixed_records

from core.outcomes import OutcomeRecord
from core.registry import Prices
from training.calibrate import Objective, calibrate
from training.data import Ladder, LadderData, build_ladder_data, replay_registry
from training.procedure_check import procedure_check
from training.simulate import registry_cost_fn, simulate_setting
from training.verifier_fit import answer_matrices, fit_verifier, out_of_fold_verifier_scores, score_verifier

_START = {"expensive_if_complex_at_least": 1.01, "skip_cheap_if_simple_below": 1.01}  # always start cheap
_WIDE = {"cheap": -0.3, "mid": 0.3}
EXPECTED_SETTING = {
    "policy": "cascade",
    "policy_params": {
        "by_kind": {
            "code/alpha": {"expensive_if_complex_at_least": 0.8, "skip_cheap_if_simple_below": 0.4},
            "code/beta": {"expensive_if_complex_at_least": 0.8, "skip_cheap_if_simple_below": 1.01},
            "general/alpha": _START, "general/beta": _START, "math/alpha": _START,
            "math/beta": {"expensive_if_complex_at_least": 1.01, "skip_cheap_if_simple_below": 0.2},
        },
        "expensive_if_complex_at_least": 0.0, "skip_cheap_if_simple_below": 0.0,
    },
    "margins": {"cheap": None, "mid": None},
    "margins_by_kind": {"code/alpha": _WIDE, "code/beta": _WIDE, "general/alpha": _WIDE, "general/beta": _WIDE,
                        "math/alpha": _WIDE, "math/beta": {"cheap": 0.5, "mid": 0.5}},
    "max_escalations": 2,
}
OPTIONS = {"min_kind_prompts": 40, "kind_shrinkage": 30.0}


def _ladder_data(n_alpha: int, n_beta: int, seed: int) -> tuple[LadderData, np.ndarray, list[str]]:
    prices = {k: Prices.model_validate(v) for k, v in PRICES.items() if not k.startswith("_")}
    records = [OutcomeRecord.model_validate(r)
               for r in make_mixed_records(n_alpha, "alpha", seed) + make_mixed_records(n_beta, "beta", seed + 1)]
    data = build_ladder_data(records, Ladder.parse(LADDER_ARG), prices)
    probabilities = np.random.default_rng(seed).dirichlet([2, 1, 1], size=data.n)
    return data, probabilities, [r.source for r in data.records]  # the source stands in for a topic


@pytest.fixture(scope="module")
def pinned():
    train, p_train, topics = _ladder_data(300, 200, 3)
    registry = replay_registry(Ladder.parse(LADDER_ARG),
                               {k: Prices.model_validate(v) for k, v in PRICES.items() if not k.startswith("_")})
    matrices = answer_matrices(train, p_train)
    scores = out_of_fold_verifier_scores(train, matrices, registry, folds=3, seed=0)
    objective = Objective("guard", guard=0.01, safety_z=1.0)
    result = calibrate(train, registry, p_train, matrices, scores, "cascade", objective, topics=topics, **OPTIONS)
    return train, p_train, topics, registry, matrices, scores, objective, result


def test_calibration_chooses_the_pinned_setting(pinned) -> None:
    *_, result = pinned
    chosen = result.chosen
    setting = {"policy": chosen.policy, "policy_params": chosen.policy_params, "margins": chosen.margins,
               "margins_by_kind": chosen.margins_by_kind, "max_escalations": chosen.max_escalations}
    assert setting == EXPECTED_SETTING
    assert result.groups == {"code/alpha": 50, "code/beta": 42, "general/alpha": 153, "general/beta": 98,
                             "math/alpha": 97, "math/beta": 60}
    assert len(result.frontier) == 177
    assert (chosen.accuracy, chosen.expensive_share) == (0.84, 0.256)
    assert chosen.cost_usd == pytest.approx(0.07826093315038368, rel=1e-12)
    assert chosen.diff_se == pytest.approx(0.015745729579794008, rel=1e-12)


def test_procedure_check_gives_the_pinned_figures(pinned) -> None:
    train, p_train, topics, registry, matrices, scores, objective, _ = pinned
    check = procedure_check(train, registry, p_train, matrices, scores, "cascade", objective, topics=topics,
                            seed=0, repeats=1, safeties=(0.0, 0.005), **OPTIONS)
    assert check["n"] == 500 and check["safety"] == 0.0
    assert check["optimism_by_half"] == pytest.approx([0.0, 0.044], abs=1e-12)
    assert check["diff_se"] == pytest.approx(0.015995999499874958, rel=1e-12)
    assert [row["extra_safety"] for row in check["by_safety"]] == [0.0, 0.005]
    assert [row["accuracy_minus_expensive"] for row in check["by_safety"]] == pytest.approx([-0.008, -0.008])
    assert [row["savings_vs_expensive"] for row in check["by_safety"]] == pytest.approx(
        [0.4954484768984113, 0.4741845212068211], rel=1e-12)


def test_held_out_simulation_of_the_chosen_setting_is_pinned(pinned) -> None:
    train, _, _, registry, matrices, _, _, result = pinned
    test, p_test, topics = _ladder_data(80, 60, 11)
    test_matrices = answer_matrices(test, p_test)
    scores = score_verifier(fit_verifier(train, matrices), test_matrices, registry)  # the served verifier
    out = simulate_setting(test, test_matrices, registry_cost_fn(registry), registry, p_test, scores,
                           EXPECTED_SETTING, topics)
    assert out.accuracy == pytest.approx(0.7571428571428571, rel=1e-12)
    assert out.cost_usd == pytest.approx(0.017940699999999997, rel=1e-12)
    assert out.calls.sum(axis=0).tolist() == [22, 129, 30]
    assert np.bincount(out.final_tier, minlength=3).tolist() == [11, 99, 30]
