"""Experiments on the real stack: arms assigned per user in the classify stage, feedback through the API and the
feedback topic, the online report against a hand computation from the rows, shares changed while workers run."""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest

from core.messages import FeedbackMessage
from tests.e2e.test_pipeline_e2e import produce, read_dead_letters

pytestmark = pytest.mark.timeout(600)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = ("small", "medium", "big")
# Recorded chance that each model answers right, by the kind of prompt.
RIGHT = {"easy": (0.9, 0.95, 0.97), "steps": (0.35, 0.85, 0.95), "hard": (0.1, 0.4, 0.9)}
REFRESH_BOUND_S = 5.0 + 3.0  # ROUTER_EXPERIMENTS_REFRESH_S (default 5 s) plus a batch and the broker hops


def replayed_prompts(n: int, seed: int) -> list[tuple[str, dict[str, bool]]]:
    """Prompts with a recorded right/wrong answer per model (the seed heuristic sends each kind to a tier)."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    out = []
    for i in range(n):
        kind = rng.choice(list(RIGHT))
        prompt = {"easy": f"What is the capital of country number {i}? [{tag}]",
                  "steps": f"Calculate step by step how many apples are left in basket {i} after three rounds. [{tag}]",
                  "hard": f"Prove the theorem about prime gaps number {i} and explain each step. [{tag}]"}[kind]
        out.append((prompt, {m: rng.random() < p for m, p in zip(MODELS, RIGHT[kind], strict=True)}))
    return out


def run_module(pipeline, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=pipeline.env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def experiments_cli(pipeline, *args: str) -> str:
    return run_module(pipeline, "training.experiments", "--dsn", pipeline.dsn, *args)


async def submit(client: httpx.AsyncClient, pipeline, prompts: list[tuple[str, str]]) -> list[str]:
    """POST /prompts for each (user, prompt); returns the request ids."""
    gate = asyncio.Semaphore(16)

    async def one(user: str, prompt: str) -> str:
        async with gate:
            response = await client.post(f"{pipeline.api_url}/prompts", json={"prompt": prompt, "user": user},
                                         headers=pipeline.auth_headers)
            assert response.status_code == 202, response.text
            return response.json()["request_id"]

    return list(await asyncio.gather(*(one(u, p) for u, p in prompts)))


def wait_for_rows(pipeline, request_ids: list[str], timeout_s: float = 240) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        with psycopg.connect(pipeline.dsn, row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute("SELECT * FROM requests WHERE request_id = ANY(%s)", (request_ids,)).fetchall()
        if len(rows) == len(request_ids):
            return {row["request_id"]: row for row in rows}
        pipeline.check_alive()
        assert time.monotonic() < deadline, f"{len(rows)}/{len(request_ids)} recorded"
        time.sleep(0.5)


async def test_experiment_arms_feedback_and_online_report_match_the_rows(pipeline, tmp_path: Path) -> None:
    experiments_cli(pipeline, "--models-config", str(pipeline.settings.models_config), "create", "ab-e2e",
                    "--arm", "control:control:0.3:big", "--arm", "router:router:0.3")
    time.sleep(REFRESH_BOUND_S)  # the workers read it
    recorded = replayed_prompts(300, seed=19)
    users = [f"user-{uuid.uuid4().hex[:8]}" for _ in range(100)]
    sends = [(users[i % len(users)], prompt) for i, (prompt, _) in enumerate(recorded)]
    truth = {prompt: right for prompt, right in recorded}
    async with httpx.AsyncClient(timeout=60) as client:
        ids = await submit(client, pipeline, sends)
        rows = wait_for_rows(pipeline, ids)

        # Arms: one per user, every row of the experiment carries it with the router version that decided.
        arm_of_user: dict[str, set] = {}
        for row in rows.values():
            arm_of_user.setdefault(row["user_id"], set()).add(row["arm"])
            if row["arm"] is not None:
                assert row["experiment_id"] == "ab-e2e"
                assert row["router_version"] == ("control:big" if row["arm"] == "control" else "heuristic:threshold")
            else:
                assert row["experiment_id"] is None and row["router_version"] == "heuristic:threshold"
            if row["arm"] == "control":
                assert row["routed_model"] == "big" and row["final_model"] == "big"
        assert all(len(arms) == 1 for arms in arm_of_user.values())
        user_counts = {arm: sum(1 for arms in arm_of_user.values() if arm in arms) for arm in ("control", "router", None)}
        for arm, share in (("control", 0.3), ("router", 0.3), (None, 0.4)):
            assert abs(user_counts[arm] - 100 * share) <= 4 * math.sqrt(100 * share * (1 - share)), user_counts
        router_models = {row["final_model"] for row in rows.values() if row["arm"] == "router"}
        assert {"small", "big"} <= router_models  # the router arm really routes

        # The arm is in /generate's answer too.
        user = next(u for u, arms in arm_of_user.items() if arms == {"router"})
        response = await client.post(f"{pipeline.api_url}/generate", json={"prompt": f"Hello again [{uuid.uuid4().hex}]",
                                                                           "user": user},
                                     headers=pipeline.auth_headers)
        body = response.json()
        assert response.status_code == 200, body
        assert (body["experiment_id"], body["arm"], body["router_version"]) == ("ab-e2e", "router", "heuristic:threshold")

        # Feedback from the recorded correctness of the model that answered, through the API.
        gate = asyncio.Semaphore(16)

        async def grade(row: dict) -> None:
            async with gate:
                passed = truth[row["prompt"]][row["final_model"]]
                r = await client.post(f"{pipeline.api_url}/v1/feedback", headers=pipeline.auth_headers,
                                      json={"request_id": row["request_id"], "pass_fail": passed, "source": "grader"})
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "created" and r.json()["passed"] == passed

        await asyncio.gather(*(grade(row) for row in rows.values() if row["arm"] is not None))

    out = tmp_path / "report.json"
    text = run_module(pipeline, "training.online_report", "--dsn", pipeline.dsn, "--experiment", "ab-e2e",
                      "--source", "grader", "--json", str(out), "--bootstrap", "500")
    report = json.loads(out.read_text())
    assert "guard" in text and "savings" in text

    # The hand computation, straight from the rows.
    with psycopg.connect(pipeline.dsn) as conn:
        hand = {arm: (n, cost, graded, passed) for arm, n, cost, graded, passed in conn.execute(
            "SELECT r.arm, count(*), avg(r.cost_micro_usd) / 1e6, count(e.correct), count(*) FILTER (WHERE e.correct)"
            " FROM requests r LEFT JOIN model_eval e ON e.request_id = r.request_id AND e.feedback_source = 'grader'"
            " WHERE r.experiment_id = 'ab-e2e' GROUP BY r.arm").fetchall()}
        latencies = {arm: [x for (x,) in conn.execute(
            "SELECT latency_ms FROM requests WHERE experiment_id = 'ab-e2e' AND arm = %s", (arm,))]
            for arm in ("control", "router")}
    for arm in ("control", "router"):
        n, cost, graded, passed = hand[arm]
        got = report["arms"][arm]
        assert got["requests"] == n and got["graded"] == graded
        assert got["passed"] == passed
        assert got["pass_rate"] == pytest.approx(passed / graded, abs=1e-12)
        assert got["cost_per_request_usd"] == pytest.approx(float(cost), rel=1e-9)
        assert got["latency_p50_ms"] == pytest.approx(float(np.percentile(latencies[arm], 50)))
        assert got["latency_p95_ms"] == pytest.approx(float(np.percentile(latencies[arm], 95)))
        low, high = got["pass_rate_ci"]
        assert low <= got["pass_rate"] <= high
    savings = 1 - float(hand["router"][1]) / float(hand["control"][1])
    comparison = report["comparisons"]["router"]
    assert comparison["savings"] == pytest.approx(savings, rel=1e-9) and savings > 0.3
    assert comparison["pass_rate_diff"] == pytest.approx(hand["router"][3] / hand["router"][2]
                                                         - hand["control"][3] / hand["control"][2])
    low, high = comparison["pass_rate_diff_bounds"]
    assert comparison["guard"] == ("holds" if low >= -0.01 else "broken" if high < -0.01 else "undecided")
    assert comparison["graded_needed_per_arm"] is None or comparison["graded_needed_per_arm"] > 0
    experiments_cli(pipeline, "end", "ab-e2e")


async def test_changing_shares_takes_effect_within_the_refresh_bound_without_a_restart(pipeline) -> None:
    worker_pid = pipeline.worker.process.pid if hasattr(pipeline.worker, "process") else None
    experiments_cli(pipeline, "--models-config", str(pipeline.settings.models_config), "create", "ab-shares",
                    "--arm", "control:control:0.5:big", "--arm", "router:router:0.5")
    time.sleep(REFRESH_BOUND_S)
    async with httpx.AsyncClient(timeout=60) as client:
        before = wait_for_rows(pipeline, await submit(client, pipeline, [(f"u-{uuid.uuid4().hex[:8]}", f"Hi [{uuid.uuid4().hex}]")
                                                                          for _ in range(40)]))
        assert {row["arm"] for row in before.values()} == {"control", "router"}

        experiments_cli(pipeline, "update", "ab-shares", "--share", "control=1.0", "--share", "router=0")
        changed_at = time.monotonic()
        # Watch the change arrive: prompts of new users every 0.25 s until a run of 8 lands all in control.
        first_seen = None
        streak = 0
        while time.monotonic() - changed_at < REFRESH_BOUND_S + 10:
            rid = (await submit(client, pipeline, [(f"u-{uuid.uuid4().hex[:8]}", f"Hi [{uuid.uuid4().hex}]")]))[0]
            row = wait_for_rows(pipeline, [rid])[rid]
            streak = streak + 1 if row["arm"] == "control" else 0
            if streak == 1:
                first_seen = time.monotonic() - changed_at
            if streak >= 8:
                break
            await asyncio.sleep(0.25)
        assert streak >= 8 and first_seen is not None
        elapsed = time.monotonic() - changed_at
        assert elapsed <= REFRESH_BOUND_S + 8, elapsed
        after = wait_for_rows(pipeline, await submit(client, pipeline, [(f"u-{uuid.uuid4().hex[:8]}", f"Hi [{uuid.uuid4().hex}]")
                                                                         for _ in range(40)]))
        assert {row["arm"] for row in after.values()} == {"control"}

        experiments_cli(pipeline, "end", "ab-shares")
        time.sleep(REFRESH_BOUND_S)
        ended = wait_for_rows(pipeline, await submit(client, pipeline, [(f"u-{uuid.uuid4().hex[:8]}", f"Hi [{uuid.uuid4().hex}]")
                                                                         for _ in range(20)]))
        assert {(row["arm"], row["experiment_id"]) for row in ended.values()} == {(None, None)}
    pipeline.check_alive()  # the same worker processes throughout: no restart
    if worker_pid is not None:
        assert pipeline.worker.process.pid == worker_pid


def eval_rows(pipeline, request_id: str) -> list[dict]:
    with psycopg.connect(pipeline.dsn, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM model_eval WHERE request_id = %s ORDER BY feedback_source",
                            (request_id,)).fetchall()


async def insert_foreign_request(pipeline, tenant: str) -> str:
    """A request recorded for another tenant, written by the sink's own repository code."""
    from core.messages import Attempt, CompletionMessage, PromptMessage, RoutingDecision, Tier
    from sql.repository import upsert_completion

    request_id = f"foreign-{uuid.uuid4().hex}"
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9, "medium": 0.05,
                                                                             "complex": 0.05},
                               model="small", tier=Tier.cheap, reasons=["test"], policy="threshold",
                               classifier="heuristic")
    completion = CompletionMessage(
        request_id=request_id, prompt=PromptMessage(request_id=request_id, prompt="Hi", tenant=tenant),
        decision=decision, attempts=[Attempt(model="small", tier=Tier.cheap, status="ok", input_tokens=3,
                                             output_tokens=2)], status="ok", final_model="small", response="Hello")

    async with await psycopg.AsyncConnection.connect(pipeline.dsn) as conn, conn.transaction():
        await upsert_completion(conn, completion)
    return request_id


def test_bad_feedback_gets_a_clear_4xx_and_writes_nothing(pipeline) -> None:
    accepted = httpx.post(f"{pipeline.api_url}/prompts", json={"prompt": f"Grade me [{uuid.uuid4().hex}]"},
                          headers=pipeline.auth_headers, timeout=10).json()
    rid = accepted["request_id"]
    wait_for_rows(pipeline, [rid])
    foreign = asyncio.run(insert_foreign_request(pipeline, "someone-else"))
    url = f"{pipeline.api_url}/v1/feedback"

    def post(body: dict) -> httpx.Response:
        return httpx.post(url, json=body, headers=pipeline.auth_headers, timeout=10)

    r = post({"request_id": f"nope-{uuid.uuid4().hex}", "pass_fail": True})
    assert r.status_code == 404 and "no request" in r.json()["detail"] and "nothing was written" in r.json()["detail"]
    r = post({"request_id": foreign, "pass_fail": False})
    assert r.status_code == 404 and "no request" in r.json()["detail"]
    assert eval_rows(pipeline, foreign) == []
    for score in (0, 6, -1):
        r = post({"request_id": rid, "score": score})
        assert r.status_code == 422 and "score" in r.json()["message"]
    r = post({"request_id": rid})
    assert r.status_code == 422 and "pass_fail and/or score" in r.json()["detail"]
    r = post({"request_id": rid, "pass_fail": True, "source": "bad source!"})
    assert r.status_code == 422
    r = post({"request_id": rid, "pass_fail": True, "surprise": 1})
    assert r.status_code == 422
    assert eval_rows(pipeline, rid) == []

    # Good feedback: idempotent per (request, source); a score alone passes at 4 or more.
    assert post({"request_id": rid, "pass_fail": True, "notes": "fine"}).json()["status"] == "created"
    again = post({"request_id": rid, "pass_fail": False, "notes": "on second thought"}).json()
    assert again["status"] == "updated" and again["passed"] is False
    assert post({"request_id": rid, "score": 4, "source": "rubric"}).json()["passed"] is True
    rows = eval_rows(pipeline, rid)
    assert [(r["feedback_source"], r["pass_fail"], r["human_score"], r["correct"], r["notes"]) for r in rows] == [
        ("rubric", None, 4, True, None), ("user", False, None, False, "on second thought")]
    assert all(r["model"] == "small" and r["tenant"] == "default" for r in rows)


async def test_feedback_from_the_topic_is_written_once_and_other_tenants_are_dead_lettered(pipeline) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        rid = (await submit(client, pipeline, [("kafka-user", f"Topic feedback [{uuid.uuid4().hex}]")]))[0]
    wait_for_rows(pipeline, [rid])
    foreign = await insert_foreign_request(pipeline, "someone-else")
    topic = pipeline.env["ROUTER_TOPIC_FEEDBACK"]
    good = FeedbackMessage(request_id=rid, pass_fail=True, source="kafka-grader")
    await produce(pipeline.settings.kafka_bootstrap, topic, [
        (rid.encode(), good.to_bytes()), (rid.encode(), good.to_bytes()),  # redelivered: still one row
        (foreign.encode(), FeedbackMessage(request_id=foreign, pass_fail=True, source="kafka-grader").to_bytes()),
        (b"x", b"{not json"),
    ])
    deadline = time.monotonic() + 60
    while not eval_rows(pipeline, rid) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    rows = eval_rows(pipeline, rid)
    assert [(r["feedback_source"], r["correct"]) for r in rows] == [("kafka-grader", True)]
    letters = await read_dead_letters(pipeline.settings.kafka_bootstrap, pipeline.env["ROUTER_TOPIC_DEAD_LETTER"],
                                      lambda ls: sum(1 for x in ls if x.stage == "feedback") >= 2)
    reasons = [x.error for x in letters if x.stage == "feedback"]
    assert any("no request" in e and foreign in e for e in reasons), reasons
    assert any("not a valid FeedbackMessage" in e for e in reasons), reasons
    assert eval_rows(pipeline, foreign) == []
