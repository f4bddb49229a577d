"""Training on a small slice, the evaluate JSON contract, and evaluation leaving the artifact untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_outcomes import LADDER, LADDER_ARG

from classifier.onnx_classifier import OnnxClassifier
from routing.artifact import artifact_digest, load_router_from_artifact
from routing.factory import build_router, escalation_for
from training import evaluate, train
from training.data import Ladder, load_prices, replay_registry
from training.procedure_check import SAFETY_GRID

pytestmark = pytest.mark.slow

FAST = ["--max-train-prompts", "40", "--folds", "2", "--epochs", "1", "--max-length", "48", "--batch-size", "8"]


@pytest.fixture(scope="module")
def artifact(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "router"
    rc = train.main(["--data", str(synthetic_dir), "--ladder", LADDER_ARG, "--prices",
                     str(synthetic_dir / "prices.json"), "--out", str(out), *FAST])
    assert rc == 0
    return out


def test_training_writes_a_complete_artifact(artifact: Path) -> None:
    for name in ("classifier.json", "tokenizer.json", "policy.json", "verifier.json", "reader.npz",
                 "model_card.json", "MODEL_CARD.md"):
        assert (artifact / name).is_file(), name
    assert not artifact.with_name(artifact.name + ".partial").exists()
    card = json.loads((artifact / "model_card.json").read_text())
    assert card["ladder"] == dict(zip(("cheap", "mid", "expensive"), LADDER, strict=True))
    assert card["data"]["n"] == 120 and len(card["data"]["fingerprint"]) == 16
    assert card["data"]["per_source"] == {"alpha": 70, "beta": 50}
    assert 0 <= card["classifier"]["out_of_fold"]["macro_f1"] <= 1
    assert card["classifier"]["onnx"]["fp32_vs_torch_max_abs_diff"] < 1e-3
    # int8 is judged on the served member's own fold: prompts it never trained on, with their labels.
    onnx = card["classifier"]["onnx"]
    assert onnx["int8_gate"].startswith("accuracy and log loss") and 0 < onnx["check_prompts"] < 120
    assert {"int8_accuracy", "fp32_accuracy", "int8_log_loss", "fp32_log_loss"} <= onnx.keys()
    # One cross-fitted member is served: it scores new prompts as the out-of-fold ones were scored.
    assert json.loads((artifact / "classifier.json").read_text())["members"] == 1
    policy = json.loads((artifact / "policy.json").read_text())
    assert policy["policy"] == "cascade" and "verifier" in policy["checks"] and policy["sweep"]
    # The answer reader is served beside the verifier; its out-of-fold AUC is in the card.
    assert policy["verifier"]["reader_file"] == "reader.npz"
    assert card["calibration"]["answer_reader"]["out_of_fold_auc"]["cheap"] > 0.8
    # Calibration met its guard on its own (out-of-fold) data.
    cal = card["calibration"]
    assert cal["feasible"]
    assert cal["chosen_out_of_fold"]["accuracy"] >= cal["expensive_accuracy"] - 0.01
    # The synthetic data has an easy, learnable structure: the cascade must save money on it.
    assert cal["chosen_out_of_fold"]["savings_vs_expensive"] > 0.3
    # The procedure check tried every safety margin over its halvings and the final calibration used
    # the one it picked.
    check = cal["procedure_check"]
    assert [e["extra_safety"] for e in check["by_safety"]] == list(SAFETY_GRID)
    assert check["repeats"] == 3 and len(check["optimism_by_half"]) == 6
    assert check["chosen"]["extra_safety"] == check["chosen_extra_safety"]
    if check["chosen_extra_safety"] > 0:
        assert f"+ {check['chosen_extra_safety']:.3f}" in cal["objective"]


def test_router_loads_through_the_factory(artifact: Path, synthetic_dir: Path) -> None:
    registry = replay_registry(Ladder.parse(LADDER_ARG), load_prices(synthetic_dir / "prices.json"))
    router = build_router(registry, artifact)
    assert isinstance(router.classifier, OnnxClassifier)
    assert router.policy.name == "cascade"
    assert any(check.name == "verifier" for check in escalation_for(registry, artifact).checks)
    decisions = router.route([__import__("core.messages", fromlist=["PromptMessage"]).PromptMessage(prompt="hi")])
    assert decisions[0].model in LADDER and abs(sum(decisions[0].probabilities.values()) - 1) < 1e-5
    assert load_router_from_artifact(artifact, registry).policy.params() == router.policy.params()


def test_evaluate_json_contract_and_artifact_untouched(artifact: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    digest = artifact_digest(artifact)
    mtimes = {p: p.stat().st_mtime_ns for p in artifact.iterdir()}
    out_json, out_png = tmp_path / "eval.json", tmp_path / "curve.png"
    rc = evaluate.main(["--data", str(synthetic_dir / "alpha.jsonl.gz"), str(synthetic_dir / "beta.jsonl.gz"),
                        "--ladder", LADDER_ARG, "--prices", str(synthetic_dir / "prices.json"),
                        "--artifact", str(artifact), "--json", str(out_json), "--plot", str(out_png),
                        "--bootstrap", "200"])
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert report["n"] == 120
    for model in LADDER:
        assert set(report["baselines"][model]) >= {"accuracy", "cost_usd"}
    assert set(report["oracle"]) >= {"accuracy", "cost_usd"}
    router = report["router"]
    assert set(router) >= {"accuracy", "cost_usd", "savings_vs_expensive", "mix", "accuracy_minus_expensive_ci95"}
    assert abs(sum(router["mix"].values()) - 1) < 1e-9
    expensive = report["baselines"][LADDER[2]]
    assert router["savings_vs_expensive"] == pytest.approx(1 - router["cost_usd"] / expensive["cost_usd"])
    ci = router["accuracy_minus_expensive_ci95"]
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert ci["estimate"] == pytest.approx(router["accuracy"] - expensive["accuracy"])
    assert set(report["per_source"]) == {"alpha", "beta"}
    assert sum(s["n"] for s in report["per_source"].values()) == 120
    # The oracle is the floor on cost among perfect-knowledge routers and at least as accurate as any model.
    assert report["oracle"]["accuracy"] >= max(b["accuracy"] for b in report["baselines"].values())
    # The vectorised ladder rule used for calibration agrees exactly with the real executor replay.
    assert report["simulator_check"]["matches_replay"]
    # Evaluation never tunes: the artifact is byte-for-byte what training wrote.
    assert report["artifact"]["sha256_before"] == report["artifact"]["sha256_after"] == artifact_digest(artifact)
    assert digest == artifact_digest(artifact)
    assert mtimes == {p: p.stat().st_mtime_ns for p in artifact.iterdir()}
    assert out_png.stat().st_size > 10_000


def test_evaluate_rejects_a_different_ladder(artifact: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="trained for ladder"):
        evaluate.main(["--data", str(synthetic_dir), "--ladder", "small-model,mid-model,other-model",
                       "--prices", str(synthetic_dir / "prices.json"), "--artifact", str(artifact),
                       "--json", str(tmp_path / "x.json")])


def test_bad_input_is_reported_in_one_line(synthetic_dir: Path, tmp_path: Path) -> None:
    prices = str(synthetic_dir / "prices.json")
    with pytest.raises(SystemExit, match="three distinct model ids"):
        train.cli(["--data", str(synthetic_dir), "--ladder", "a,b", "--prices", prices, "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="no price for"):
        train.cli(["--data", str(synthetic_dir), "--ladder", "x,y,z", "--prices", prices, "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="artifact file missing"):
        evaluate.cli(["--data", str(synthetic_dir), "--ladder", LADDER_ARG, "--prices", prices,
                      "--artifact", str(tmp_path / "none"), "--json", str(tmp_path / "x.json")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "source": "s"}\n')
    with pytest.raises(SystemExit, match="not a valid outcomes record"):
        train.cli(["--data", str(bad), "--ladder", LADDER_ARG, "--prices", prices, "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "x.json").exists()


def test_recalibration_reuses_the_classifier_without_fine_tuning(artifact: Path, synthetic_dir: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "recalibrated"
    rc = train.main(["--data", str(synthetic_dir), "--ladder", LADDER_ARG, "--prices",
                     str(synthetic_dir / "prices.json"), "--out", str(out), "--reuse-classifier", str(artifact),
                     "--objective", "spend", "--target", "0.5", "--no-output-budgets"])
    assert rc == 0
    model_file = json.loads((artifact / "classifier.json").read_text())["model_file"]
    assert (out / model_file).read_bytes() == (artifact / model_file).read_bytes()
    card = json.loads((out / "model_card.json").read_text())
    assert card["classifier"]["reused_from"] == str(artifact)
    assert card["calibration"]["chosen_out_of_fold"]["cost_usd"] <= 0.5 * card["calibration"]["expensive_cost_usd"]
    policy = json.loads((out / "policy.json").read_text())
    assert all("max_output_tokens" not in s for s in [policy["params"], *policy["params"].get("by_kind", {}).values()])


def test_reuse_refuses_a_classifier_trained_on_other_data(artifact: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "other"
    with pytest.raises(SystemExit, match="trained on other data"):
        train.main(["--data", str(synthetic_dir / "alpha.jsonl.gz"), "--ladder", LADDER_ARG, "--prices",
                    str(synthetic_dir / "prices.json"), "--out", str(out), "--reuse-classifier", str(artifact)])
    assert not out.exists() and not out.with_name("other.partial").exists()


def test_evaluate_warns_loudly_on_training_data_and_reports_the_overlap(artifact: Path, synthetic_dir: Path,
                                                                        tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "in-sample.json"
    rc = evaluate.main(["--data", str(synthetic_dir / "alpha.jsonl.gz"), "--ladder", LADDER_ARG, "--prices",
                        str(synthetic_dir / "prices.json"), "--artifact", str(artifact), "--json", str(out_json),
                        "--bootstrap", "20"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "WARNING: IN-SAMPLE FIGURES. 70 of these 70 records (100.0%)" in err
    overlap = json.loads(out_json.read_text())["training_overlap"]
    assert (overlap["records"], overlap["of"], overlap["share"]) == (70, 70, 1.0)

    # The same prompts under ids the artifact never saw: no overlap, no warning.
    import gzip

    fresh = tmp_path / "fresh.jsonl.gz"
    with gzip.open(synthetic_dir / "alpha.jsonl.gz", "rt") as src, gzip.open(fresh, "wt") as dst:
        for line in src:
            record = json.loads(line)
            record["id"] = "unseen/" + record["id"]
            dst.write(json.dumps(record) + "\n")
    rc = evaluate.main(["--data", str(fresh), "--ladder", LADDER_ARG, "--prices", str(synthetic_dir / "prices.json"),
                        "--artifact", str(artifact), "--json", str(out_json), "--bootstrap", "20"])
    assert rc == 0
    assert "IN-SAMPLE" not in capsys.readouterr().err
    assert json.loads(out_json.read_text())["training_overlap"]["records"] == 0
