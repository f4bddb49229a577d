"""What the recorded outcomes allow a router on one ladder: the figures docs/classifier.md quotes in
"What limits the savings", computed from the outcomes files and a prices file.

    python -m benchmarks.ladder_stats --data FILE_OR_DIR... --ladder CHEAP,MID,EXPENSIVE --prices FILE

Per source (and per category where the records have one): each model's accuracy and cost per request;
the share of the expensive model's spend on answers it gets wrong and its output length on right and
wrong answers; how often the cheap and mid answers agree and how right they are then; and what a
perfect verifier on the cheap -> mid -> expensive cascade would save.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from routing.answer_features import parse_answer
from training.data import Ladder, LadderData, load_ladder_data, load_prices, run_cli


def _stats(data: LadderData, rows: np.ndarray, total_expensive: float) -> dict[str, float]:
    c, cost = data.correct[rows], data.cost_usd[rows]
    cheap_m, mid_m, top_m = data.ladder.models
    records = [data.records[i] for i in rows]
    out_top = np.array([r.outcomes[top_m].output_tokens for r in records])
    agree = np.array([(a := parse_answer(r.outcomes[cheap_m].response)) is not None
                      and a == parse_answer(r.outcomes[mid_m].response) for r in records])
    # Perfect verifier: cheap, then mid, then expensive, stopping at the first right answer.
    perfect = cost[:, 0] + np.where(c[:, 0], 0, cost[:, 1] + np.where(c[:, 1], 0, cost[:, 2]))
    # The same, starting at mid (phi never called).
    perfect_from_mid = cost[:, 1] + np.where(c[:, 1], 0, cost[:, 2])
    top_right = c[:, 2]
    return {
        "n": int(len(rows)),
        **{f"accuracy[{k}]": float(c[:, k].mean()) for k in range(3)},
        **{f"cost_per_request_musd[{k}]": float(cost[:, k].mean() * 1e6) for k in range(3)},
        "share_of_all_expensive_spend": float(cost[:, 2].sum() / total_expensive),
        "expensive_spend_on_wrong_answers": float(cost[~top_right, 2].sum() / max(cost[:, 2].sum(), 1e-12)),
        "expensive_median_output_tokens_right": float(np.median(out_top[top_right])) if top_right.any() else 0.0,
        "expensive_median_output_tokens_wrong": float(np.median(out_top[~top_right])) if (~top_right).any() else 0.0,
        "cheap_mid_agree_share": float(agree.mean()),
        "mid_right_when_agree": float(c[agree, 1].mean()) if agree.any() else 0.0,
        "expensive_right_when_agree": float(c[agree, 2].mean()) if agree.any() else 0.0,
        "cheap_plus_mid_cost_vs_expensive": float((cost[:, 0] + cost[:, 1]).sum() / cost[:, 2].sum()),
        "perfect_verifier_cascade_savings": float(1 - perfect.sum() / cost[:, 2].sum()),
        "perfect_verifier_from_mid_savings": float(1 - perfect_from_mid.sum() / cost[:, 2].sum()),
        # Call cheap and mid, keep mid's answer when they agree, else call the expensive model.
        "accept_agreement_savings": float(1 - (cost[:, 0] + cost[:, 1] + ~agree * cost[:, 2]).sum()
                                          / cost[:, 2].sum()),
        "accept_agreement_accuracy_minus_expensive": float(np.where(agree, c[:, 1], c[:, 2]).mean()
                                                           - c[:, 2].mean()),
        "unsolved_share": float((~c.any(axis=1)).mean()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ladder_stats", description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--ladder", required=True)
    p.add_argument("--prices", required=True)
    args = p.parse_args(argv)
    data = load_ladder_data(args.data, Ladder.parse(args.ladder), load_prices(args.prices))
    total = float(data.cost_usd[:, 2].sum())
    groups: dict[str, np.ndarray] = {"all": np.arange(data.n)}
    for label, values in (("source", data.sources), ("category", [r.category for r in data.records])):
        for value in sorted({v for v in values if v}):
            groups[f"{label}={value}"] = np.array([i for i, v in enumerate(values) if v == value])
    print("models:", " / ".join(data.ladder.models), "(indices 0 / 1 / 2)")
    for name, rows in groups.items():
        stats = _stats(data, rows, total)
        print(f"\n[{name}]")
        for key, value in stats.items():
            print(f"  {key:42s} {value:.3f}" if isinstance(value, float) else f"  {key:42s} {value}")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
