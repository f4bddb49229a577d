"""The improvement loop on logged traffic: replayed requests logged by the sink's repository code, exported in the
outcomes format, trained on with training.train unchanged, evaluated, and the new artifact shadow-replayed on
the log without calling a model."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from synthetic_outcomes import LADDER, LADDER_ARG, make_records

from classifier.registry import CLASSIFIERS
from core.messages import PromptMessage, RoutedMessage
from core.outcomes import OutcomeRecord, load_outcomes
from providers.costs import RegistryCostBook
from providers.executor import LadderExecutor
from providers.replay import OutcomeIndex, ReplayProvider
from routing.escalation import Escalation
from routing.experiments import Arm, ArmRouter, Experiment, ExperimentBook
from routing.factory import build_router
from routing.registry import build_policy
from routing.router import Router
from sql.repository import upsert_completions
from stream_processors.runtime import Runtime
from training import evaluate, export, replay_logs, train
from training.data import Ladder, load_prices, replay_registry
from training.logs import load_logged

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # fine-tuning on a shared CPU

FAST = ["--max-train-prompts", "40", "--folds", "2", "--epochs", "1", "--max-length", "48", "--batch-size", "8",
        "--no-procedure-check", "--verifier-folds", "3"]
START = datetime(2026, 3, 1, tzinfo=UTC)


def log_traffic(dsn: str, records: list[OutcomeRecord], registry) -> int:
    """The demo's traffic through the live routing and ladder code, written by the sink's repository: each prompt
    once by the default router, then by a collection experiment whose control arms (one per model, assigned per
    request) gather every model's graded answer."""
    default = Router(CLASSIFIERS["heuristic"](), build_policy("threshold"), registry)
    collect = Experiment(experiment_id="collect", salt="s", unit="request", arms=[
        Arm(name=f"always-{spec.name}", kind="control", share=1 / 3 - 1e-9, model=spec.name)
        for spec in registry.ladder])
    arms = ArmRouter(default, registry, ExperimentBook(lambda: [collect]))
    index = OutcomeIndex(records)
    executor = LadderExecutor(registry, {s.name: ReplayProvider(s, index) for s in registry.models}, Escalation(registry),
                              RegistryCostBook(registry))
    prompts: list[PromptMessage] = []
    for i, record in enumerate(records):
        at = START + timedelta(seconds=i)
        prompts.append(PromptMessage(request_id=f"{record.id}#router", prompt=record.prompt, created_at=at,
                                     user="u-router", metadata={"source": record.source}))
    for i, record in enumerate(records):
        missing = {f"always-{spec.name}" for spec in registry.ladder}
        j = 0
        while missing:  # the experiment spreads one prompt's requests over the arms
            prompt = PromptMessage(request_id=f"{record.id}#{j}", prompt=record.prompt, metadata={"source": record.source},
                                   created_at=START + timedelta(hours=1, seconds=i))
            arm = collect.assign(prompt)
            if arm is not None and arm.name in missing:
                missing.discard(arm.name)
                prompts.append(prompt)
            j += 1

    async def run_all() -> int:
        decisions = [arms.default.route([p])[0] for p in prompts[:len(records)]] + arms.route(prompts[len(records):])
        completions = [await executor.run(RoutedMessage(prompt=p, decision=d, target_model=d.model))
                       for p, d in zip(prompts, decisions, strict=True)]
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return await upsert_completions(conn, completions)

    return asyncio.run(run_all())


def test_export_train_evaluate_and_shadow_replay_on_logged_traffic(clean_db: str, synthetic_dir: Path,
                                                                   tmp_path: Path, capsys) -> None:
    # One record per prompt text: a log knows prompts by their text.
    records = list({r["prompt"]: OutcomeRecord.model_validate(r) for r in reversed(make_records(120, "traffic", seed=5))}
                   .values())
    prices_file = synthetic_dir / "prices.json"
    registry = replay_registry(Ladder.parse(LADDER_ARG), load_prices(prices_file))
    assert log_traffic(clean_db, records, registry) == 4 * len(records)

    # A prompt the log holds one answer to: a candidate that needs another model's answer cannot price it.
    lonely = OutcomeRecord.model_validate({**make_records(1, "lonely", seed=9)[0], "id": "lonely/0"})
    lonely.outcomes = {LADDER[2]: lonely.outcomes[LADDER[2]]}
    lonely.prompt = "Prove a deep property of chess. " + "This requires long careful reasoning. " * 8 + "Value 7."
    log_traffic_one = LadderExecutor(registry, {s.name: ReplayProvider(s, OutcomeIndex([lonely])) for s in registry.models},
                                     Escalation(registry), RegistryCostBook(registry))
    prompt = PromptMessage(request_id="lonely", prompt=lonely.prompt, created_at=START + timedelta(hours=2))
    decision = Router(CLASSIFIERS["heuristic"](), build_policy("threshold"), registry).route([prompt])[0]
    decision = decision.model_copy(update={"model": LADDER[2], "tier": registry.get(LADDER[2]).tier})
    completion = asyncio.run(log_traffic_one.run(RoutedMessage(prompt=prompt, decision=decision, target_model=LADDER[2])))

    async def write_one() -> None:
        async with await psycopg.AsyncConnection.connect(clean_db) as conn:
            await upsert_completions(conn, [completion])

    asyncio.run(write_one())

    # 1. Export: one record per prompt, each ladder model's graded answer as logged.
    exported = tmp_path / "traffic.jsonl.gz"
    assert export.main(["--dsn", clean_db, "--out", str(exported), "--ladder", LADDER_ARG]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == len(records) + 1 and summary["records_with_the_whole_ladder"] == len(records)
    loaded = {r.prompt: r for r in load_outcomes([exported])}
    for record in records:
        got = loaded[record.prompt]
        assert set(got.outcomes) == set(LADDER)
        for model in LADDER:
            want = record.outcomes[model]
            assert (got.outcomes[model].correct, got.outcomes[model].input_tokens, got.outcomes[model].output_tokens,
                    got.outcomes[model].response) == (want.correct, want.input_tokens, want.output_tokens, want.response)

    # 2. Train on the exported file, unchanged; 3. evaluate the new artifact on it.
    artifact = tmp_path / "candidate"
    assert train.main(["--data", str(exported), "--ladder", LADDER_ARG, "--prices", str(prices_file), "--out",
                       str(artifact), *FAST]) == 0
    card = json.loads((artifact / "model_card.json").read_text())
    assert card["data"]["n"] == len(records)
    out_json = tmp_path / "eval.json"
    assert evaluate.main(["--data", str(exported), "--ladder", LADDER_ARG, "--prices", str(prices_file),
                          "--artifact", str(artifact), "--json", str(out_json), "--bootstrap", "100"]) == 0
    evaluation = json.loads(out_json.read_text())

    # 4. Shadow replay of the candidate on the log: no model is called, the log answers.
    with psycopg.connect(clean_db) as conn:
        logged = load_logged(conn, since=START)
    report = replay_logs.run(logged, registry, artifact, RegistryCostBook(registry))
    assert report["requests"] == 4 * len(records) + 1
    unpriced = [rid for ids in report["unpriceable"].values() for rid in ids]
    assert report["priced"] + len(unpriced) == report["requests"]
    assert set(unpriced) <= {"lonely"}
    if unpriced:
        assert list(report["unpriceable"]) == [f"no logged answer from {LADDER[0]}"] or \
            list(report["unpriceable"])[0].startswith("no logged answer from")
    # Every logged request of a prompt replays like that prompt's record in the offline harness.
    candidate_on_records = sum(p["candidate_cost"] for p in report["per_request"] if p["request_id"] != "lonely") / 1e6
    assert candidate_on_records == pytest.approx(4 * evaluation["router"]["cost_usd"], rel=1e-9)
    scored = [p for p in report["per_request"] if p["request_id"] != "lonely"]
    accuracy = sum(bool(p["candidate_correct"]) for p in scored) / len(scored)
    assert accuracy == pytest.approx(evaluation["router"]["accuracy"])
    assert report["logged_spend_usd"] > 0 and report["router_version"].startswith("artifact:")
    text = replay_logs.render(report)
    assert "priced" in text and "pass rate" in text

    # 5. Deploy the candidate as an experiment arm: the classify stage's ArmRouter routes that arm with it, and
    # the provider agents run its requests with the candidate's answer checks.
    default = Router(CLASSIFIERS["heuristic"](), build_policy("threshold"), registry)
    trial = Experiment(experiment_id="candidate-trial", salt="s", arms=[
        Arm(name="candidate", kind="artifact", share=0.5, artifact=str(artifact)), Arm(name="router", kind="router", share=0.5)])
    arm_router = ArmRouter(default, registry, ExperimentBook(lambda: [trial]),
                           load_candidate=lambda path: build_router(registry, Path(path)))
    decisions = arm_router.route([PromptMessage(prompt=records[0].prompt, user=f"user-{i}") for i in range(40)])
    by_arm = {d.arm: d for d in decisions}
    assert set(by_arm) == {"candidate", "router"}
    assert by_arm["candidate"].router_version == report["router_version"]
    assert by_arm["candidate"].artifact == str(artifact) and by_arm["router"].artifact is None
    runtime = Runtime(registry, default, {}, LadderExecutor(registry, {}, Escalation(registry), RegistryCostBook(registry)))
    assert runtime.executor_for(by_arm["router"]) is runtime.executor
    candidate_executor = runtime.executor_for(by_arm["candidate"])
    assert any(check.name == "verifier" for check in candidate_executor.escalation.checks)
    assert runtime.executor_for(by_arm["candidate"]) is candidate_executor  # built once
