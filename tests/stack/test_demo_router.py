"""The replay demo routes with a router it trains from the data at start (cached for the next run), names it on
the savings line with the accuracy delta, and says what is missing when it cannot train one."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from core.savings import SavingsTotals, format_delta_ci95, paired_delta_ci95
from core.settings import PROJECT_ROOT, get_settings
from stack.demo import name_router, replay_sample, router_note
from stack.demo_router import DemoRouterTraining
from stack.runner import plan_router
from stack.services import create_database, drop_database, free_port
from stream_processors.runtime import load_registry

REPO_ROOT = Path(__file__).resolve().parents[2]
LADDER = ("phi-3.5-mini-instruct", "llama-3-70b-instruct", "gpt-4o-2024-05-13")
SKILL = {"simple": (0.9, 0.95, 0.97), "hard": (0.2, 0.6, 0.85)}  # p(right) per ladder model


def write_small_outcomes(folder: Path, n: int, seed: int = 3) -> None:
    """``n`` math prompts, half easy and half hard, each answered by the three ladder models; a wrong answer is
    short and hedged, a right one works it through (so an answer model has something to learn)."""
    rng = random.Random(seed)
    (folder / "outcomes").mkdir(parents=True)
    with gzip.open(folder / "outcomes" / "gsm8k.jsonl.gz", "wt") as handle:
        for i in range(n):
            kind = "simple" if i % 2 else "hard"
            outcomes = {}
            for k, model in enumerate(LADDER):
                right = rng.random() < SKILL[kind][k]
                answer = str(2 * i) if right else str(2 * i + 1)
                response = (f'{{"reasoning": "{i} + {i} = {2 * i}, adding the two numbers step by step.", '
                            f'"answer": "{answer}"}}' if right else
                            f'{{"reasoning": "I am not sure, maybe.", "answer": "{answer}"}}')
                outcomes[model] = {"correct": right, "answer": answer, "input_tokens": 30 + i % 50,
                                   "output_tokens": 40 + 30 * k + (0 if right else 5), "response": response}
            prompt = (f"Question {i}: what is {i} + {i}?" if kind == "simple" else
                      f"Question {i}: a train leaves at {i} km/h and another at {i + 7} km/h; after how many hours "
                      f"are they {3 * i} km apart? Explain each step.")
            handle.write(json.dumps({"id": f"gsm8k/{i}", "source": "gsm8k", "prompt": prompt,
                                     "outcomes": outcomes}) + "\n")


def demo_registry():
    settings = get_settings().model_copy(update={"models_config": PROJECT_ROOT / "config" / "models.demo.yaml"})
    return load_registry(settings)


@pytest.mark.timeout(300)
def test_demo_router_is_trained_without_the_replayed_prompts_and_cached(tmp_path: Path) -> None:
    write_small_outcomes(tmp_path / "data", 400)
    registry = demo_registry()
    held_out = [r.id for r in replay_sample(tmp_path / "data", registry, 40)]
    console = Console(record=True, width=300)

    def train():
        return DemoRouterTraining(registry, tmp_path / "data", ("gsm8k",), held_out, tmp_path / "cache", console,
                                  tmp_path / "logs").start().wait(timeout_s=240)

    router = train()
    assert router.artifact is not None and router.version and router.version.startswith("artifact:")
    assert not router.cached and router.note is None
    assert router.trained_prompts == 360
    assert f"trained pool router {router.version}" in router.label and "trained on 360 prompts" in router.label
    card = json.loads((router.artifact / "model_card.json").read_text())
    assert card["data"]["n"] == 360 and card["data"]["excluded_ids"]["count"] == 40
    assert card["pool"] == list(LADDER) and card["reference"] == LADDER[2]
    assert "answer features" in (tmp_path / "logs" / "demo-router-training.log").read_text()  # its progress

    again = train()  # the same data, ladder and sample: the cached artifact, at once
    assert again.cached and again.artifact == router.artifact and again.version == router.version
    assert "cached, from an earlier run" in console.export_text()

    # The savings line of requests this artifact decided names the trained router.
    totals = SavingsTotals(requests=40, spend_micro_usd=600, comparable_requests=40, comparable_spend_micro_usd=600,
                           baseline_micro_usd=1000, graded=40, correct=35, baseline_correct=36)
    line = totals.line(name_router("heuristic", router.version, router), LADDER[2]) + router_note(router)
    assert re.search(r"router trained pool router artifact:[0-9a-f]{12} \(.*trained on 360 prompts; the 40 "
                     r"replayed here held out\): 40\.0% saved vs always gpt-4o-2024-05-13 .*accuracy -2\.5 pt", line)
    assert "no trained router" not in line


def test_without_data_the_demo_says_what_is_missing_and_names_the_heuristic(tmp_path: Path) -> None:
    console = Console(record=True, width=300)
    args = argparse.Namespace(replay=False, stub=False, router="trained", sample=200, data_root=tmp_path)
    settings = get_settings().model_copy(update={"classifier_artifact": None})
    router, training = plan_router(args, settings, None, console)
    assert training is None and router is not None and router.artifact is None
    assert "set ROUTER_DATA_DIR or pass --data-dir" in console.export_text()
    line = SavingsTotals(requests=3, spend_micro_usd=10, comparable_requests=3, comparable_spend_micro_usd=10,
                         baseline_micro_usd=40).line(name_router("heuristic", "heuristic:threshold", router), "gpt-4o")
    line += router_note(router)
    assert line.startswith("router seed heuristic (untrained): 75.0% saved")
    assert line.endswith("[no trained router: no outcomes data to train it on: set ROUTER_DATA_DIR or pass "
                         "--data-dir]")


def test_too_little_data_falls_back_to_the_heuristic_and_says_so(tmp_path: Path) -> None:
    write_small_outcomes(tmp_path / "data", 30)
    console = Console(record=True, width=300)
    args = argparse.Namespace(replay=True, stub=False, router="trained", sample=10, data_root=tmp_path)
    settings = get_settings().model_copy(update={"classifier_artifact": None,
                                                 "models_config": PROJECT_ROOT / "config" / "models.demo.yaml"})
    router, training = plan_router(args, settings, tmp_path / "data", console)
    assert training is None and router.artifact is None
    assert router.note == "only 20 recorded prompts beside the 10 replayed to train on (it needs 200)"


def test_accuracy_delta_interval() -> None:
    # 100 graded pairs, 10 discordant (6 router-only right, 4 expensive-only right): delta +2 pt.
    low, high = paired_delta_ci95(100, 0.02, 10)
    assert low < 0.02 < high and high - low == pytest.approx(2 * 1.959964 * ((0.1 - 0.0004) * 100 / 99 / 100) ** 0.5)
    assert paired_delta_ci95(1, 0.0, 0) is None and paired_delta_ci95(0, None, 0) is None
    assert format_delta_ci95((-0.012, 0.022)) == "; accuracy delta 95% CI -1.2 to +2.2 pt"


def test_fine_tuning_without_torch_says_how_to_install_it() -> None:
    # The pool trainer (the demo's) needs scikit-learn only; fine-tuning still names the extra it needs.
    code = "import sys\nsys.modules['torch'] = None\nimport training.prompt_model\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert result.returncode == 1
    assert "missing: torch" in result.stderr and "pip install -e '.[train]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(420)
def test_replay_demo_prints_the_trained_routers_savings_line(pg_admin_dsn: str, tmp_path: Path) -> None:
    write_small_outcomes(tmp_path / "data", 300)
    db_name = f"router_demo_router_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_admin_dsn, db_name)
    env = {**os.environ, "PG_DSN": dsn, "ROUTER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "ROUTER_API_PORT": str(free_port()), "COLUMNS": "400", "PYTHONUNBUFFERED": "1",
           "ROUTER_REPLAY_LATENCY_SCALE": "0"}
    for name in ("ROUTER_PG_DSN", "ROUTER_STUB_URL", "ROUTER_MODELS_CONFIG", "ROUTER_CLASSIFIER_ARTIFACT"):
        env.pop(name, None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stack", "--replay", "--sample", "20", "--data-dir", str(tmp_path / "data"),
             "--exit-after-demo", "--no-dashboard", "--data-root", str(tmp_path / "stack")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert re.search(r"router trained pool router artifact:[0-9a-f]{12} \(answer model \+ guarded plans, trained "
                         r"on 280 prompts; the 20 replayed here held out\): -?\d+\.\d% saved vs always "
                         r"gpt-4o-2024-05-13 .*accuracy [+-]\d+\.\d pt vs always gpt-4o-2024-05-13 on 20 graded "
                         r"requests.*; accuracy delta 95% CI [+-]\d+\.\d to [+-]\d+\.\d pt", output), output
        assert "no trained router" not in output
    finally:
        drop_database(pg_admin_dsn, db_name)
