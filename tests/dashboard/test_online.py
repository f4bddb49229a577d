"""The experiments view and training.online_report on known rows: figures equal a hand computation."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from core.messages import Attempt, CompletionMessage, FeedbackMessage, PromptMessage, RoutingDecision, Tier
from sql.repository import insert_experiment, record_feedback, upsert_completions
from tests.dashboard.test_app import metrics, run_view  # noqa: F401 - the fixture
from training.online_report import build_report, graded_needed, newcombe, report_from_db, wilson

# (arm, model, cost micro-USD, latency ms, passed)
ROWS = ([("control", "big", 1000, 900.0, i % 10 != 0) for i in range(40)]
        + [("router", "small", 200, 300.0, i % 10 not in (0, 1)) for i in range(40)]
        + [(None, "small", 200, 300.0, True) for _ in range(10)])


def seed(dsn: str) -> None:
    now = datetime.now(UTC) - timedelta(hours=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM experiments")
        insert_experiment(conn, {"experiment_id": "dash-exp", "tenant": None, "salt": "s", "unit": "user",
                                 "description": None,
                                 "arms": [{"name": "control", "kind": "control", "share": 0.5, "model": "big"},
                                          {"name": "router", "kind": "router", "share": 0.4}]})
    completions, grades = [], []
    for i, (arm, model, cost, latency, passed) in enumerate(ROWS):
        tier = Tier.expensive if model == "big" else Tier.cheap
        decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9, "medium": 0.05,
                                                                                 "complex": 0.05},
                                   model=model, tier=tier, reasons=["t"], policy="threshold", classifier="heuristic",
                                   experiment_id="dash-exp" if arm else None, arm=arm,
                                   router_version=f"control:{model}" if arm == "control" else "heuristic:threshold")
        rid = f"dash-{i}"
        completions.append(CompletionMessage(
            request_id=rid, prompt=PromptMessage(request_id=rid, prompt=f"p{i}", user=f"u{i}", created_at=now),
            decision=decision, status="ok", final_model=model, response="r", cost_micro_usd=cost,
            attempts=[Attempt(model=model, tier=tier, status="ok", latency_ms=latency, cost_micro_usd=cost)]))
        grades.append(FeedbackMessage(request_id=rid, pass_fail=passed, source="grader"))

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await upsert_completions(conn, completions)
            async with conn.transaction():
                for grade in grades:
                    await record_feedback(conn, grade, 4)

    asyncio.run(write())


def test_report_equals_the_hand_computation(clean_db: str) -> None:
    seed(clean_db)
    with psycopg.connect(clean_db) as conn:
        report = report_from_db(conn, "dash-exp", ["grader"], resamples=300)
    control, router = report["arms"]["control"], report["arms"]["router"]
    assert (control["requests"], control["graded"], control["passed"]) == (40, 40, 36)
    assert (router["requests"], router["graded"], router["passed"]) == (40, 40, 32)
    assert control["cost_per_request_usd"] == pytest.approx(0.001) and router["cost_per_request_usd"] == pytest.approx(0.0002)
    assert control["latency_p50_ms"] == 900.0 and router["latency_p95_ms"] == 300.0
    cmp = report["comparisons"]["router"]
    assert cmp["savings"] == pytest.approx(0.8) and cmp["pass_rate_diff"] == pytest.approx(-0.1)
    assert cmp["guard"] == "broken" or cmp["guard"] == "undecided"
    z = 1.6448536269514722
    assert cmp["pass_rate_diff_bounds"] == pytest.approx(newcombe(32, 40, 36, 40, z))
    assert cmp["guard"] == ("broken" if cmp["pass_rate_diff_bounds"][1] < -0.01 else "undecided")
    assert cmp["graded_needed_per_arm"] is None  # 10 pt below control: more grades cannot show the guard holds
    assert report["arms"]["control"]["router_versions"] == ["control:big"]
    assert None not in report["arms"]  # unassigned traffic is not an arm


def test_statistics_against_known_values() -> None:
    low, high = wilson(36, 40, 1.959963984540054)
    assert (round(low, 4), round(high, 4)) == (0.7695, 0.9604)  # Wilson 95% for 36/40
    # Equal, high pass rates: the guard needs a known number of grades per arm.
    need = graded_needed(95, 100, 95, 100, 1.6448536269514722, 0.01)
    p = 96 / 102
    assert need == math.ceil(1.6448536269514722**2 * 2 * p * (1 - p) / 0.01**2)
    report = build_report([], [{"name": "control", "kind": "control"}, {"name": "router", "kind": "router"}],
                          experiment_id="e")
    assert report["comparisons"]["router"]["guard"] == "undecided"


def test_experiments_view_shows_the_report(clean_db: str, run_view) -> None:  # noqa: F811
    seed(clean_db)
    at = run_view("experiments")
    shown = metrics(at)
    assert shown["Savings per request"] == "80.0%"
    assert shown["Pass rate difference"] == "-10.0 pt"
    frame = at.dataframe[0].value
    assert set(frame["arm"]) == {"control", "router"}
    assert list(frame.set_index("arm").loc[["control", "router"], "graded"]) == [40, 40]
    assert any("Quality guard for router" in e.value for e in [*at.error, *at.warning, *at.success])
