"""Train the prompt classifier, the answer reader and verifier, calibrate the routing policy, write an artifact.

    python -m training.train --data FILE_OR_DIR... --ladder CHEAP,MID,EXPENSIVE --prices FILE --out ARTIFACT_DIR
    python -m training.train --data FILE_OR_DIR... --pool M1,M2,... --reference REF --prices FILE --out DIR

Everything is fitted on the given data only. Knobs are picked on out-of-fold predictions
(``--folds``): the prompt classifier, the answer reader and the verifier that score a prompt never saw it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from tqdm.auto import tqdm

from classifier.topic import TopicModel
from core.messages import LABELS
from routing.answer_checks import DEFAULT_CHECKS
from routing.answer_reader import READER_TIERS, AnswerReader
from training.calibrate import KIND_SHRINKAGE, MIN_KIND_PROMPTS, CalibrationResult, Objective, calibrate
from training.data import Ladder, kfold_by_source, load_ladder_data, load_prices, replay_registry, run_cli
from training.procedure_check import SAFETY_GRID, procedure_check, safety_from_check
from training.reader import fit_reader, out_of_fold_reader_logits
from training.topic import fit_topic_models, record_topics
from training.verifier_fit import answer_matrices, fit_verifier, out_of_fold_verifier_scores

if TYPE_CHECKING:
    from training.prompt_model import FineTuneConfig

log = logging.getLogger("training.train")

OOF_FILE = "training_oof.npz"
SWEEP_POINTS = 200  # frontier points kept for the evaluation curve
ONNX_CHECK_PROMPTS = 1000  # enough that int8's accuracy and log loss are measured to a fraction of a point


def thin(points: list[Any], keep: int) -> list[Any]:
    """At most ``keep`` points, evenly spread along the list, first and last included."""
    if len(points) <= keep:
        return list(points)
    return [points[i] for i in sorted(set(np.linspace(0, len(points) - 1, keep).round().astype(int)))]


def build_parser() -> argparse.ArgumentParser:
    # Fine-tuning needs torch (the train extra); the pool trainer, which the local demo runs with scikit-learn
    # alone, returns from main before anything imports it.
    from training.prompt_model import DEFAULT_BASE  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="outcomes files or folders")
    p.add_argument("--ladder", required=True, help="CHEAP,MID,EXPENSIVE model ids as in the outcomes")
    p.add_argument("--prices", type=Path, required=True, help="USD per 1M tokens per model (JSON)")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    p.add_argument("--base", default=DEFAULT_BASE,
                   help=f"prompt classifier base: {DEFAULT_BASE!r} or a local HF folder (Phi-3: LoRA)")
    p.add_argument("--policy", choices=("cascade", "threshold"), default="cascade")
    p.add_argument("--objective", choices=("guard", "spend", "expensive-share"), default="guard")
    p.add_argument("--guard", type=float, default=0.01, help="allowed accuracy loss vs the expensive model")
    p.add_argument("--safety", type=float, default=0.0, help="extra fixed accuracy margin kept on training data")
    p.add_argument("--safety-z", type=float, default=1.0,
                   help="standard errors of the paired accuracy difference kept as margin (guard objective)")
    p.add_argument("--target", type=float, help="for spend / expensive-share objectives")
    p.add_argument("--max-escalations", type=int, nargs="+", default=[1, 2], help="options to calibrate over")
    p.add_argument("--folds", type=int, default=2, help="cross-fitting folds: K members score the prompts they did not see (the out-of-fold "
                        "probabilities calibration uses)")
    p.add_argument("--serve-members", type=int, default=1,
                   help="cross-fitted members exported for serving (their mean): 1 scores new prompts exactly like "
                        "the out-of-fold prompts calibration saw, at a K-th of the ensemble's cost")
    p.add_argument("--verifier-folds", type=int, default=10,
                   help="cross-fitting folds for the verifier's out-of-fold scores: many, so each fold's verifier "
                        "is close to the served one fitted on everything and the calibrated margins transfer")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--freeze-layers", type=int, default=3)
    p.add_argument("--max-train-prompts", type=int, default=2000, help="cap per fine-tuning run (CPU time)")
    p.add_argument("--no-quantize", action="store_true", help="serve fp32 ONNX even where int8 holds up")
    p.add_argument("--no-per-kind", action="store_true",
                   help="one setting for every prompt instead of one per prompt kind (code, math, ...)")
    p.add_argument("--no-output-budgets", action="store_true",
                   help="never cut a model's answer short (no calibrated max_output_tokens per tier)")
    p.add_argument("--min-kind-prompts", type=int, default=MIN_KIND_PROMPTS,
                   help="prompts a kind needs to get its own settings; rarer kinds share the default")
    p.add_argument("--kind-shrinkage", type=float, default=KIND_SHRINKAGE, metavar="N0",
                   help="shrink each kind's figures toward its parent's as if N0 of the parent's prompts were "
                        "added to it (0: each kind judged on its own prompts only)")
    p.add_argument("--split-check", action="store_true",
                   help="search the knobs on one half of the training prompts and judge the objective on the other, "
                        "choosing only along the first half's frontier (conservative: each half is small)")
    p.add_argument("--no-procedure-check", action="store_true",
                   help="skip replaying the calibration procedure on held-in halves (the model card's honest estimate)")
    p.add_argument("--procedure-repeats", type=int, default=3,
                   help="halvings the procedure check averages over (each calibrates twice)")
    p.add_argument("--no-topics", action="store_true",
                   help="do not learn a topic model even when the records carry a category")
    p.add_argument("--no-answer-reader", action="store_true",
                   help="judge cheaper answers by the verifier's hand-made features only, without the answer reader "
                        "(a linear model on the words of the response)")
    p.add_argument("--reuse-classifier", type=Path, metavar="ARTIFACT_DIR",
                   help="take the fine-tuned prompt classifier and its out-of-fold probabilities from an artifact "
                        "trained on the same data, and only refit the verifier and recalibrate (new prices, "
                        "another objective)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


def classifier_metrics(label_ids: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    predicted = probabilities.argmax(axis=1)
    return {"accuracy": float(accuracy_score(label_ids, predicted)),
            "macro_f1": float(f1_score(label_ids, predicted, average="macro", labels=list(range(len(LABELS))),
                                       zero_division=0)),
            "label_share": {label: float((label_ids == i).mean()) for i, label in enumerate(LABELS)},
            "majority_baseline_accuracy": float(np.bincount(label_ids, minlength=len(LABELS)).max() / len(label_ids))}


def main(argv: list[str] | None = None, base_model: Any | None = None, tokenizer: Any | None = None) -> int:
    if "--pool" in (sys.argv[1:] if argv is None else argv):  # any set of models: training.pool
        from training.pool import main as train_pool  # noqa: PLC0415

        return train_pool(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.procedure_repeats < 1:
        parser.error("--procedure-repeats must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    started = time.time()
    ladder = Ladder.parse(args.ladder)
    prices = load_prices(args.prices)
    registry = replay_registry(ladder, prices)
    data = load_ladder_data(args.data, ladder, prices)
    if data.n < 4 * args.folds:
        raise SystemExit(f"only {data.n} prompts with outcomes for {ladder.models}: too few to train on")
    log.info("%d prompts for ladder %s (%d skipped without all three outcomes); %d no model gets right",
             data.n, ladder, data.skipped_incomplete, int(data.unsolvable.sum()))
    texts = [r.prompt for r in data.records]
    label_ids = data.label_ids()
    from training.prompt_model import FineTuneConfig  # noqa: PLC0415 - see build_parser

    ft = FineTuneConfig(base=args.base, max_length=args.max_length, epochs=args.epochs, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, freeze_layers=args.freeze_layers,
                        max_train_prompts=args.max_train_prompts, seed=args.seed, threads=args.threads)

    out_dir: Path = args.out
    staging = out_dir.with_name(out_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        write_artifact(args, argv, started, ladder, prices, registry, data, texts, label_ids, ft, staging,
                       base_model, tokenizer)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed run leaves no half-written artifact behind
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)  # the artifact appears whole or not at all
    card = json.loads((out_dir / "model_card.json").read_text())
    cal = card["calibration"]
    chosen = cal["chosen_out_of_fold"]
    log.info("artifact written to %s in %.0f s (out-of-fold savings %.1f%% at accuracy %.3f vs expensive %.3f)",
             out_dir, time.time() - started, 100 * chosen["savings_vs_expensive"], chosen["accuracy"],
             cal["expensive_accuracy"])
    return 0


def write_artifact(args: argparse.Namespace, argv: list[str] | None, started: float, ladder: Ladder,
                   prices: dict[str, Any], registry: Any, data: Any, texts: list[str], label_ids: np.ndarray,
                   ft: FineTuneConfig, staging: Path, base_model: Any, tokenizer: Any) -> None:
    # 1. The prompt classifier and its out-of-fold probabilities.
    if args.reuse_classifier is not None:
        oof, onnx_report, reused_card = reuse_classifier(args.reuse_classifier, data, staging)
    else:
        oof, onnx_report = fine_tune_classifier(args, ft, data, texts, label_ids, staging, base_model, tokenizer)
        reused_card = None
    # 2. What the verifier reads: the topic model and the answer reader (out-of-fold for calibration, one
    # fitted on everything served), then the verifier's out-of-fold scores.
    oof_topics, topic_report = fit_topics(args, data, texts, staging)
    verifier_folds = max(2, min(args.verifier_folds, data.n // 10))  # a handful of prompts per fold at least
    reader_logits, reader_report = fit_answer_reader(args, data, verifier_folds, staging)
    matrices_oof = answer_matrices(data, oof, reader_logits)
    scores = out_of_fold_verifier_scores(data, matrices_oof, registry, verifier_folds, args.seed) \
        if args.policy == "cascade" else None
    # 3. Calibration on out-of-fold predictions, with the safety margin the procedure check picks.
    objective = Objective(args.objective, args.guard, args.safety, args.safety_z, args.target)
    options = {"per_kind": not args.no_per_kind, "output_budgets": not args.no_output_budgets,
               "min_kind_prompts": args.min_kind_prompts, "kind_shrinkage": args.kind_shrinkage}
    procedure = run_procedure_check(args, data, registry, oof, matrices_oof, scores, objective, oof_topics, options)
    result = calibrate(data, registry, oof, matrices_oof, scores, args.policy, objective,
                       tuple(args.max_escalations), progress=tqdm, topics=oof_topics,
                       split_check=args.split_check, seed=args.seed, **options)
    log.info("chosen: %s", json.dumps(result.chosen.as_json()))
    # 4. The served policy and verifier, and the model card.
    write_policy(args, result, objective, data, matrices_oof, reader_report is not None, staging)
    card = model_card(args, argv, started, ladder, prices, data, label_ids, oof, onnx_report, reused_card, result,
                      objective, verifier_folds, topic_report, reader_report, procedure)
    (staging / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (staging / "MODEL_CARD.md").write_text(model_card_markdown(card))


def fit_topics(args: argparse.Namespace, data: Any, texts: list[str], staging: Path
               ) -> tuple[list[str] | None, dict[str, Any] | None]:
    """The topic model, when the records carry a category (MMLU-Pro's subjects): out-of-fold topics for
    calibration, one model on everything saved for serving. (None, None) without categories."""
    true_topics = record_topics(data.records) if args.policy == "cascade" and not args.no_topics else None
    if true_topics is None:
        return None, None
    oof_topics, topic_model = fit_topic_models(texts, true_topics, args.verifier_folds, args.seed)
    topic_model.save(staging)
    topic_report = {"topics": sorted(set(true_topics)), "folds": args.verifier_folds,
                    "out_of_fold_accuracy": float(np.mean([a == b for a, b in zip(oof_topics, true_topics, strict=True)]))}
    log.info("topic model: %d topics, out-of-fold accuracy %.3f", len(topic_report["topics"]),
             topic_report["out_of_fold_accuracy"])
    return oof_topics, topic_report


def fit_answer_reader(args: argparse.Namespace, data: Any, folds: int, staging: Path
                      ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """The answer reader: out-of-fold log-odds for the verifier's training, one on everything saved for serving.
    (None, None) when the policy does not use it."""
    if args.policy != "cascade" or args.no_answer_reader:
        return None, None
    reader_logits = out_of_fold_reader_logits(data, folds, args.seed, progress=tqdm)
    fit_reader(data).save(staging)
    reader_report = {"file": AnswerReader.FILE, "folds": folds, "out_of_fold_auc": {
        tier: _auc(data.correct[:, t], reader_logits[:, t]) for t, tier in enumerate(READER_TIERS)}}
    log.info("answer reader: out-of-fold AUC %s", reader_report["out_of_fold_auc"])
    return reader_logits, reader_report


def run_procedure_check(args: argparse.Namespace, data: Any, registry: Any, oof: np.ndarray, matrices: Any,
                        scores: Any, objective: Objective, topics: list[str] | None, options: dict[str, Any]
                        ) -> dict[str, Any] | None:
    """The procedure check's report (None when skipped); under the guard objective it adds the extra safety
    margin it picks to ``objective``.

    The chosen point is the best of millions of settings on the prompts it was picked on. Replaying
    the procedure on held-in halves measures what it gives on prompts it did not see; under the
    guard objective it also picks the extra safety margin: the smallest whose choices keep the
    guard on the unseen halves."""
    if args.policy != "cascade" or args.no_procedure_check:
        return None
    guard = args.objective == "guard"
    procedure = procedure_check(data, registry, oof, matrices, scores, args.policy, objective,
                                tuple(args.max_escalations), topics=topics, seed=args.seed,
                                repeats=args.procedure_repeats, safeties=SAFETY_GRID if guard else (0.0,),
                                **options)
    for entry in procedure["by_safety"]:
        log.info("procedure check, %.2f pt more safety: savings %.1f%% at %+.2f pt (SE %.2f) on unseen halves",
                 100 * entry["extra_safety"], 100 * entry["savings_vs_expensive"],
                 100 * entry["accuracy_minus_expensive"], 100 * entry["diff_se"])
    if guard:
        extra, kept = safety_from_check(procedure, objective)
        procedure["chosen_extra_safety"] = extra
        procedure["chosen"] = next(e for e in procedure["by_safety"] if e["extra_safety"] == extra)
        if not kept:
            procedure["note"] = "no safety margin tried kept the guard on unseen halves; took the largest"
        objective.safety += extra
        log.info("safety margin from the procedure check: +%.2f pt%s", 100 * extra,
                 "" if kept else " (none kept the guard; the largest tried)")
    return procedure


def write_policy(args: argparse.Namespace, result: CalibrationResult, objective: Objective, data: Any,
                 matrices: Any, with_reader: bool, staging: Path) -> None:
    """``policy.json`` (the chosen setting, the answer checks and the frontier sweep) and, for the cascade,
    ``verifier.json``: the verifier fitted on every training prompt."""
    chosen = result.chosen
    checks = list(DEFAULT_CHECKS)
    policy_doc: dict[str, Any] = {"policy": chosen.policy, "params": chosen.policy_params,
                                  "max_escalations": chosen.max_escalations, "checks": checks,
                                  "objective": objective.describe(),
                                  "sweep": [c.as_json() for c in thin(result.frontier, SWEEP_POINTS)]}
    if args.policy == "cascade":
        verifier = fit_verifier(data, matrices)
        (staging / "verifier.json").write_text(json.dumps(verifier.to_json(), indent=1) + "\n")
        policy_doc["checks"] = checks + ["verifier"]
        policy_doc["verifier"] = {"file": "verifier.json", "margins": chosen.margins}
        if with_reader:
            policy_doc["verifier"]["reader_file"] = AnswerReader.FILE
        if chosen.margins_by_kind:
            policy_doc["verifier"]["margins_by_kind"] = chosen.margins_by_kind
    (staging / "policy.json").write_text(json.dumps(policy_doc, indent=2) + "\n")


def model_card(args: argparse.Namespace, argv: list[str] | None, started: float, ladder: Ladder,
               prices: dict[str, Any], data: Any, label_ids: np.ndarray, oof: np.ndarray, onnx_report: dict[str, Any],
               reused_card: dict[str, Any] | None, result: CalibrationResult, objective: Objective,
               verifier_folds: int, topic_report: dict[str, Any] | None, reader_report: dict[str, Any] | None,
               procedure: dict[str, Any] | None) -> dict[str, Any]:
    """What the artifact was trained on, how, and what calibration measured (``model_card.json``)."""
    chosen = result.chosen
    expensive_cost = result.expensive_cost_usd
    return {
        "ladder": {"cheap": ladder.cheap, "mid": ladder.mid, "expensive": ladder.expensive},
        "prices_usd_per_1m": {m: prices[m].model_dump() for m in ladder.models},
        "data": {"files": [str(p) for p in args.data], "n": data.n, "fingerprint": data.fingerprint(),
                 "ids_sha256_of_sorted": data.fingerprint(), "skipped_incomplete": data.skipped_incomplete,
                 "per_source": {s: data.sources.count(s) for s in sorted(set(data.sources))},
                 "label_share": {lab: data.labels.count(lab) / data.n for lab in LABELS},
                 "unsolvable_share": float(data.unsolvable.mean())},
        "classifier": reused_card or {
            "base": args.base, "max_length": args.max_length, "epochs": args.epochs,
            "max_train_prompts": args.max_train_prompts, "freeze_layers": args.freeze_layers,
            "out_of_fold": classifier_metrics(label_ids, oof), "onnx": onnx_report},
        "calibration": {
            "objective": objective.describe(), "folds": args.folds, "verifier_folds": verifier_folds,
            "grid_size": result.grid_size,
            "feasible": result.feasible, "notes": result.notes, "prompts_per_kind": result.groups,
            "per_kind": not args.no_per_kind, "output_budgets": not args.no_output_budgets,
            "kind_shrinkage": args.kind_shrinkage,
            "topic_model": topic_report,
            "answer_reader": reader_report,
            "procedure_check": procedure,
            "split_check": args.split_check,
            "figures_on": ("the half of the training prompts the search did not use" if args.split_check
                           else "all training prompts (out-of-fold predictions)"),
            "expensive_accuracy": result.expensive_accuracy, "expensive_cost_usd": expensive_cost,
            "chosen_out_of_fold": {**chosen.as_json(), "savings_vs_expensive": 1 - chosen.cost_usd / expensive_cost},
        },
        "baselines_training_data": {m: {"accuracy": float(data.correct[:, k].mean()),
                                        "cost_usd": float(data.cost_usd[:, k].sum())}
                                    for k, m in enumerate(ladder.models)},
        "split": _split_info(args.data),
        "command": "python -m training.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_seconds": round(time.time() - started, 1),
        "python": platform.python_version(),
    }


def fine_tune_classifier(args: argparse.Namespace, ft: FineTuneConfig, data: Any, texts: list[str],
                         label_ids: np.ndarray, staging: Path, base_model: Any, tokenizer: Any
                         ) -> tuple[np.ndarray, dict[str, Any]]:
    """Cross-fitting: K members, each scoring the prompts it did not see (out-of-fold probabilities).

    The served classifier is the mean of the K members, so a new prompt is scored like the
    out-of-fold prompts the policy was calibrated on (a model refitted on everything would be more
    confident than what calibration saw, and the thresholds would not transfer)."""
    from training.prompt_model import export_onnx, fine_tune, load_base, predict_proba  # noqa: PLC0415

    fold = kfold_by_source(data.sources, args.folds, args.seed)
    oof = np.zeros((data.n, len(LABELS)))
    members = []
    for k in range(args.folds):
        train_rows, test_rows = np.where(fold != k)[0], np.where(fold == k)[0]
        pm = fine_tune(load_base(ft, base_model, tokenizer), [texts[i] for i in train_rows], label_ids[train_rows],
                       desc=f"fine-tune fold {k + 1}/{args.folds}")
        oof[test_rows] = predict_proba(pm, [texts[i] for i in test_rows], desc=f"score fold {k + 1}/{args.folds}")
        members.append(pm)
    served = members[: max(1, min(args.serve_members, len(members)))]
    rng = np.random.default_rng(args.seed)
    if len(served) == 1 and len(members) > 1:
        # The served member never trained on its own fold: those prompts judge int8 against the true labels.
        unseen = np.where(fold == 0)[0]
        check_rows = rng.choice(unseen, size=min(ONNX_CHECK_PROMPTS, len(unseen)), replace=False)
        check_labels, torch_probabilities = label_ids[check_rows], oof[check_rows]  # its own scores of them
    else:
        check_rows = rng.choice(data.n, size=min(200, data.n), replace=False)
        check_labels, torch_probabilities = None, None
    onnx_report = export_onnx(served, staging, [texts[i] for i in check_rows], quantize=not args.no_quantize,
                              check_labels=check_labels, torch_probabilities=torch_probabilities)
    # The out-of-fold probabilities the policy is calibrated on, kept so a later run can recalibrate
    # (new prices, another objective) without fine-tuning again: --reuse-classifier.
    np.savez_compressed(staging / OOF_FILE, probabilities=oof, ids=np.asarray([r.id for r in data.records]),
                        fingerprint=np.asarray(data.fingerprint()))
    return oof, onnx_report


def reuse_classifier(source: Path, data: Any, staging: Path) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Copy the prompt classifier of an artifact trained on exactly this data, with its out-of-fold probabilities."""
    oof_path = source / OOF_FILE
    if not oof_path.is_file():
        raise SystemExit(f"--reuse-classifier: {source} has no {OOF_FILE} (it predates recalibration support)")
    saved = np.load(oof_path)
    if str(saved["fingerprint"]) != data.fingerprint() or list(saved["ids"]) != [r.id for r in data.records]:
        raise SystemExit(f"--reuse-classifier: {source} was trained on other data (fingerprint "
                         f"{saved['fingerprint']}, this data {data.fingerprint()}); its probabilities would not be "
                         f"out-of-fold here")
    card = json.loads((source / "model_card.json").read_text())
    keep = {"policy.json", "verifier.json", "model_card.json", "MODEL_CARD.md", TopicModel.FILE, AnswerReader.FILE}
    for path in source.iterdir():
        if path.is_file() and path.name not in keep:
            shutil.copy2(path, staging / path.name)
    return (np.asarray(saved["probabilities"]), card["classifier"]["onnx"],
            {**card["classifier"], "reused_from": str(source)})


def _auc(right: np.ndarray, score: np.ndarray) -> float | None:
    right = np.asarray(right, dtype=bool)
    return float(roc_auc_score(right, score)) if right.any() and not right.all() else None


def _split_info(paths: list[str]) -> dict[str, Any] | None:
    """The ``split.json`` that ``python -m training.split`` wrote beside the data, if the data came from one."""
    for raw in paths:
        path = Path(raw)
        for candidate in (path.parent / "split.json", path.parent.parent / "split.json", path / "split.json"):
            if candidate.is_file():
                try:
                    return {"file": str(candidate), **json.loads(candidate.read_text())}
                except json.JSONDecodeError:
                    return None
    return None


def model_card_markdown(card: dict[str, Any]) -> str:
    cal = card["calibration"]
    chosen = cal["chosen_out_of_fold"]
    clf = card["classifier"]["out_of_fold"]
    lines = [
        "# Difficulty router artifact", "",
        f"Ladder: {card['ladder']['cheap']} -> {card['ladder']['mid']} -> {card['ladder']['expensive']}", "",
        f"Training data: {card['data']['n']} prompts, fingerprint `{card['data']['fingerprint']}`, "
        f"per source {card['data']['per_source']}; {100 * card['data']['unsolvable_share']:.1f}% no model gets right.",
        "",
        f"Prompt classifier ({card['classifier']['base']}, served as {card['classifier']['onnx']['served_model']}): "
        f"out-of-fold accuracy {clf['accuracy']:.3f}, macro-F1 {clf['macro_f1']:.3f} "
        f"(majority class {clf['majority_baseline_accuracy']:.3f}).", "",
        f"Policy: {chosen['policy']} {chosen['policy_params']}, verifier margins {chosen['margins']}, "
        f"max escalations {chosen['max_escalations']}. Objective: {cal['objective']}.", "",
        f"Out-of-fold on training data: accuracy {chosen['accuracy']:.3f} vs expensive "
        f"{cal['expensive_accuracy']:.3f}, savings {100 * chosen['savings_vs_expensive']:.1f}%.", "",
        *([f"Procedure check (calibrated on one half of the training prompts, replayed on the other, both ways, "
           f"over {cal['procedure_check']['repeats']} halvings), chosen safety margin: savings "
           f"{100 * final_check['savings_vs_expensive']:.1f}% at {100 * final_check['accuracy_minus_expensive']:+.2f} pt.",
           ""]
          if (final_check := (cal.get("procedure_check") or {}).get("chosen")
              or (cal.get("procedure_check") or {}).get("by_safety", [None])[0]) else []),
        f"Command: `{card['command']}`", "",
    ]
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    """``main`` with bad input reported in one line."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
