"""Pool routing: the guard's test, the plan simulator against the real executor replay, and the
train/evaluate command-line contract with --pool."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from synthetic_outcomes import LADDER, PRICES, make_records, write_jsonl_gz

from classifier.heuristic import HeuristicClassifier
from core.outcomes import OutcomeRecord
from core.registry import ModelRegistry
from routing.escalation import Escalation
from routing.pool_policy import NEVER, PoolAnswerCheck, PoolPlan, PoolPolicy
from routing.router import Router
from training import evaluate as evaluate_cli
from training import train as train_cli
from training.data import load_prices
from training.evaluate import replay
from training.guard import GuardSpec, evaluation_report, guard_test
from training.pool import (
    answer_probabilities,
    build_pool_data,
    enumerate_plans,
    fast_plan_table,
    fit_answer_model,
    out_of_fold_probabilities,
    override_mask,
    plan_table,
    pool_registry,
    simulate_plan,
)

REFERENCE = LADDER[-1]
POOL = ",".join(LADDER)


@pytest.fixture(scope="module")
def pool_data(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("pool")
    (folder / "prices.json").write_text(json.dumps(PRICES))
    records = [OutcomeRecord.model_validate(r) for r in make_records(160, "alpha", seed=5)]
    records[3] = records[3].model_copy(update={"prompt": records[3].prompt + " Is this production ready?"})
    prices = load_prices(folder / "prices.json")
    return build_pool_data(records, list(LADDER), REFERENCE, prices, progress=False), prices


def test_guard_test_passes_a_safe_candidate_and_fails_a_lossy_one() -> None:
    reference = np.array([True] * 800 + [False] * 200)
    spec = GuardSpec(guard=0.01, confidence=0.9, eval_size=1000, candidates=1)
    same = guard_test(reference.copy(), reference, spec)
    assert same["passed"] and same["difference"] == 0.0
    lossy = reference.copy()
    lossy[:30] = False  # 3 pt worse
    assert not guard_test(lossy, reference, spec)["passed"]
    # Slightly better than the reference, with few disagreements: passes; the same with a tiny fresh
    # sample (whose own noise could break the guard) does not.
    better = reference.copy()
    better[800:820] = True
    assert guard_test(better, reference, spec)["passed"]
    assert not guard_test(better, reference, GuardSpec(eval_size=20, candidates=1))["passed"]
    assert GuardSpec(candidates=2).alpha == pytest.approx(0.05)
    with pytest.raises(ValueError):
        GuardSpec(confidence=1.5)


def test_evaluation_report_says_whether_the_guard_holds() -> None:
    reference = np.array([True] * 90 + [False] * 10)
    router = reference.copy()
    router[:5] = False
    report = evaluation_report(router, reference, guard=0.01, resamples=500)
    assert report["estimate"] == pytest.approx(-0.05)
    assert report["low"] <= report["estimate"] <= report["high"]
    assert not report["point_holds"] and not report["holds"]
    assert evaluation_report(reference, reference, guard=0.01, resamples=50)["holds"]


def test_fast_plan_table_equals_the_plain_simulator(pool_data) -> None:
    data, _ = pool_data
    probabilities = out_of_fold_probabilities(data, 3, 0)
    override = override_mask(data)
    assert override.sum() == 1  # the keyword override sends that prompt to the reference
    rows = np.arange(data.n)
    fast = fast_plan_table(data, probabilities, rows, override)
    plain = plan_table(data, probabilities, rows, enumerate_plans(data.models, REFERENCE), override)
    assert set(fast.plans) == set(plain.plans)
    order = {plan: j for j, plan in enumerate(plain.plans)}
    index = [order[p] for p in fast.plans]
    np.testing.assert_allclose(fast.correct, plain.correct[index])
    np.testing.assert_allclose(fast.cost, plain.cost[index])
    np.testing.assert_allclose(fast.disagree, plain.disagree[index])


def test_pool_plan_replayed_by_the_executor_matches_the_simulator(pool_data) -> None:
    """Start at any model, check, skip, accept agreement: the live Router + LadderExecutor walk the plan
    exactly as training simulates it (cost and correctness per prompt)."""
    data, prices = pool_data
    registry = pool_registry(data.models, REFERENCE, prices)
    answer_model = fit_answer_model(data)
    served = answer_probabilities(answer_model, data)
    small, mid, big = LADDER
    plans = [PoolPlan(small, second=mid, final=big, accept_first_at=0.6, accept_second_at=NEVER, accept_agreement=True),
             PoolPlan(mid, final=big, accept_first_at=0.7),
             PoolPlan(small, final=big, accept_first_at=0.5),
             PoolPlan(mid)]
    for plan in plans:
        policy = PoolPolicy(reference=REFERENCE, default=plan.as_json())
        router = Router(HeuristicClassifier(), policy, registry)
        escalation = Escalation(registry, [PoolAnswerCheck(answer_model, policy)], max_escalations=2)
        completions = asyncio.run(replay(data, router, escalation, registry, 32, 16))
        final, right, cost = simulate_plan(data, served, np.arange(data.n), plan, override_mask(data))
        assert [c.final_model for c in completions] == [data.models[k] for k in final]
        assert [bool(c.correct) for c in completions] == right.tolist()
        spent = np.array([c.cost_micro_usd for c in completions]) / 1e6
        np.testing.assert_allclose(spent, cost, atol=2e-6 * 3)
    # The first plan really checks and escalates: some prompts stop at each stage.
    first = simulate_plan(data, served, np.arange(data.n), plans[0], override_mask(data))[0]
    assert set(first.tolist()) == {0, 1, 2}


def test_registry_pool_allows_any_models_and_needs_a_reference() -> None:
    spec = {"kind": "replay", "prices": {"input": 1, "output": 1}}
    registry = ModelRegistry.model_validate({"pool": True, "counterfactual": "c", "models": [
        {"name": "a", "tier": "cheap", **spec}, {"name": "b", "tier": "cheap", **spec},
        {"name": "c", "tier": "expensive", **spec}]})
    assert registry.counterfactual_model.name == "c"
    with pytest.raises(ValueError):
        ModelRegistry.model_validate({"pool": True, "models": [{"name": "a", "tier": "cheap", **spec}]})
    with pytest.raises(ValueError):  # a ladder still needs one model per tier
        ModelRegistry.model_validate({"models": [{"name": "a", "tier": "cheap", **spec},
                                                 {"name": "b", "tier": "cheap", **spec}]})


@pytest.mark.timeout(600)
def test_train_and_evaluate_a_pool_with_no_further_flags(tmp_path: Path) -> None:
    data_file = write_jsonl_gz(tmp_path / "gamma.jsonl.gz", make_records(700, "gamma", seed=9))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    out = tmp_path / "artifact"
    assert train_cli.main(["--data", str(data_file), "--pool", POOL, "--reference", REFERENCE,
                           "--prices", str(prices), "--out", str(out)]) == 0
    policy = json.loads((out / "policy.json").read_text())
    card = json.loads((out / "model_card.json").read_text())
    assert policy["policy"] == "pool" and policy["guard"]["confidence"] == 0.9
    assert card["guard"]["eval_size"] == round(700 * 3 / 7)  # no split.json: the kept-back share
    assert "pool_answer" in policy["checks"]
    report_path = tmp_path / "eval.json"
    assert evaluate_cli.main(["--data", str(data_file), "--pool", POOL, "--reference", REFERENCE,
                              "--prices", str(prices), "--artifact", str(out), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["baselines"]) == set(LADDER)
    assert report["simulator_check"]["matches_replay"]
    assert report["artifact"]["sha256_before"] == report["artifact"]["sha256_after"]
    ci = report["router"]["accuracy_minus_expensive_ci95"]
    assert ci["low"] <= ci["estimate"] <= ci["high"] and "holds" in ci
    # Learnable data: the small model's well-formed answers are right; the guard lets the pool save.
    assert report["router"]["savings_vs_expensive"] > 0.2
    assert report["router"]["accuracy"] >= report["baselines"][REFERENCE]["accuracy"] - 0.01
