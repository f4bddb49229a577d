"""Write a deterministic held-out split of outcomes files: ``train/`` and ``test/`` folders of .jsonl.gz.

    python -m training.split --data /work/shared/data/outcomes --out /tmp/router-split --test-fraction 0.2

Stratified by source and seeded, so the same command always yields the same split; ``split.json``
records the seed, the fraction and fingerprints of both sides.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

from core.outcomes import load_outcomes
from training.data import data_fingerprint, stratified_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.split", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="outcomes files or folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=20240513)
    args = parser.parse_args(argv)

    records = load_outcomes(args.data)
    train, test = stratified_split(records, args.test_fraction, args.seed)
    summary = {"seed": args.seed, "test_fraction": args.test_fraction}
    for side, rows in (("train", train), ("test", test)):
        by_source: dict[str, list[str]] = defaultdict(list)
        folder = args.out / side
        folder.mkdir(parents=True, exist_ok=True)
        for i in rows:
            by_source[records[i].source].append(records[i].model_dump_json())
        for source, lines in by_source.items():
            tmp = folder / f".{source}.jsonl.gz.tmp"
            with gzip.open(tmp, "wt", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
            tmp.replace(folder / f"{source}.jsonl.gz")  # no half-written file under the final name
        summary[side] = {"n": len(rows), "fingerprint": data_fingerprint([records[i] for i in rows]),
                         "per_source": {s: len(v) for s, v in sorted(by_source.items())}}
    (args.out / "split.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
