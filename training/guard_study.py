"""Does the guard's promise hold? The whole pool train-and-calibrate procedure, repeated on random
outer splits of the training data, each judged on its held-apart side.

    python -m training.guard_study --data FILES --pool M1,M2,... --reference REF --prices P \\
        [--splits 20] [--test-fraction 0.2] [--folds 5] [--json OUT.json]

Each split holds apart ``--test-fraction`` of the prompts (stratified by source, its own seed); the
procedure of ``training.pool`` (out-of-fold answer model, plan search, Learn-then-Test with the guard
sized for the held-apart side's size) runs on the rest; the chosen policy, with the answer model
fitted on the rest, is simulated on the held-apart side. The guard breaks on a split when the
held-apart accuracy is more than ``--guard`` below the reference's. The promise is that this
happens on at most 1 - confidence of the splits.

Small settings keep it fast: ``--folds`` for the answer model's out-of-fold scores, and the topic
model's subjects predicted once, out of fold over all the given prompts (a subject label is the only
thing shared across a split; the answer model and the policy never see the held-apart prompts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from routing.prompt_kind import DEFAULT_KIND
from training.data import load_prices, run_cli
from training.guard import GuardSpec
from training.pool import (
    answer_probabilities,
    calibrate_pool,
    candidate_outcome,
    fit_answer_model,
    load_pool_data,
    out_of_fold_probabilities,
    override_mask,
    parse_pool,
    prompt_kinds,
    split_rows,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.guard_study", description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--prices", type=Path, required=True)
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--guard", type=float, default=0.01)
    p.add_argument("--guard-confidence", type=float, default=0.9)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--no-topics", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, dest="json_out")
    return p


def resolve_group(kind: str, own: set[str]) -> str:
    if kind in own:
        return kind
    surface = kind.split("/", 1)[0]
    return surface if surface in own else DEFAULT_KIND


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    prices = load_prices(args.prices)
    models = parse_pool(args.pool, args.reference)
    data = load_pool_data(args.data, models, args.reference, prices)
    data.agree  # noqa: B018 - computed once, shared by every split's subset below
    topics = None
    if not args.no_topics:
        from training.topic import out_of_fold_topics, record_topics  # noqa: PLC0415

        true_topics = record_topics(data.records)
        if true_topics is not None:
            topics = out_of_fold_topics([r.prompt for r in data.records], true_topics, 10, args.seed)
    kinds = prompt_kinds(data, topics)
    override = override_mask(data)
    results: list[dict[str, Any]] = []
    for split in tqdm(range(args.splits), desc="outer splits", unit="split"):
        test_rows, train_rows = split_rows(data, args.test_fraction, args.seed + 1000 + split)
        train, test = data.subset(train_rows), data.subset(test_rows)
        train._agree, test._agree = data.agree[train_rows], data.agree[test_rows]
        spec = GuardSpec(guard=args.guard, confidence=args.guard_confidence, eval_size=len(test_rows))
        oof = out_of_fold_probabilities(train, args.folds, args.seed + split)
        cal, group_map = calibrate_pool(train, oof, [kinds[i] for i in train_rows], spec, seed=args.seed + split,
                                        progress=False)
        served = answer_probabilities(fit_answer_model(train), test)
        own = set(cal.chosen.plans)
        groups = [resolve_group(kinds[i], own) for i in test_rows]
        right, cost = candidate_outcome(test, served, np.arange(test.n), groups, cal.chosen, override[test_rows])
        ref_right = test.correct[:, test.ref]
        diff = float(right.mean() - ref_right.mean())
        savings = 1 - float(cost.sum()) / float(test.cost_usd[:, test.ref].sum())
        results.append({"split": split, "n_train": int(len(train_rows)), "n_test": int(len(test_rows)),
                        "difference": diff, "savings_vs_reference": savings, "broke": diff < -args.guard - 1e-12,
                        "calibration_part": cal.chosen_figures})
        tqdm.write(f"split {split}: held-apart {100 * diff:+.2f} pt, savings {100 * savings:.1f}%"
                   f"{'  GUARD BROKEN' if diff < -args.guard - 1e-12 else ''}")
    broke = sum(r["broke"] for r in results)
    summary = {"pool": models, "reference": args.reference, "n": data.n, "splits": args.splits,
               "test_fraction": args.test_fraction, "guard": args.guard, "confidence": args.guard_confidence,
               "folds": args.folds, "topics": topics is not None,
               "broke": broke, "break_rate": broke / len(results), "target_break_rate": 1 - args.guard_confidence,
               "mean_savings": float(np.mean([r["savings_vs_reference"] for r in results])),
               "mean_difference": float(np.mean([r["difference"] for r in results])),
               "seconds": round(time.time() - started, 1), "per_split": results,
               "command": "python -m training.guard_study " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.splits} splits: guard broken on {broke} ({100 * summary['break_rate']:.0f}%, target <= "
          f"{100 * summary['target_break_rate']:.0f}%); mean held-apart savings {100 * summary['mean_savings']:.1f}% "
          f"at {100 * summary['mean_difference']:+.2f} pt; {summary['seconds']:.0f} s")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
