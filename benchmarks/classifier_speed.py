"""Prompt classifier speed on this machine: p50/p95 latency at batch 1 (prompts of <= 128 tokens)
and throughput batched, through the serving path (onnxruntime + tokenizers, no torch).

    python -m benchmarks.classifier_speed --artifact ARTIFACT_DIR [--data FILE_OR_DIR...] [--json OUT.json]

Prompts come from the outcomes files when given (else a fixed synthetic set); each figure is one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from classifier.onnx_classifier import OnnxClassifier

SYNTHETIC = [
    "What is the capital of Australia?",
    "Write a Python function that merges two sorted lists and explain its complexity.",
    "Janet has 16 eggs and eats 3 for breakfast. How many are left if she bakes muffins with 4?",
    "Which of the following best describes penetration pricing? Options: A. ... B. ... C. ...",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.classifier_speed", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--data", nargs="*", default=[])
    p.add_argument("--n", type=int, default=300, help="prompts for the batch-1 latency run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, dest="json_out")
    args = p.parse_args(argv)

    clf = OnnxClassifier.from_dir(args.artifact, batch_size=args.batch_size, threads=args.threads)
    if args.data:
        from core.outcomes import load_outcomes  # noqa: PLC0415

        prompts = [r.prompt for r in load_outcomes(args.data)]
    else:
        prompts = SYNTHETIC * 100
    short = [t for t in prompts if len(clf.tokenizer.encode(t).ids) <= 128][: args.n]
    clf.predict(short[:8])  # warm-up
    latencies = []
    for prompt in tqdm(short, desc="batch 1", unit="prompt"):
        started = time.perf_counter()
        clf.predict([prompt])
        latencies.append((time.perf_counter() - started) * 1000)
    result = {
        "model_file": json.loads((args.artifact / "classifier.json").read_text())["model_file"],
        "members": json.loads((args.artifact / "classifier.json").read_text()).get("members", 1),
        "threads": args.threads, "cpu_count": os.cpu_count(),
        "batch1_prompts": len(latencies), "batch1_p50_ms": statistics.median(latencies),
        "batch1_p95_ms": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
        "batch_size": args.batch_size,
    }
    for name, batched in (("short", (short * 4)[: max(len(short) * 4, 1)]),
                          ("all", prompts[: max(args.n * 4, 1000)])):
        started = time.perf_counter()
        for start in tqdm(range(0, len(batched), args.batch_size), desc=f"batch {args.batch_size} ({name})",
                          unit="batch"):
            clf.predict(batched[start : start + args.batch_size])
        result[f"batched_{name}_prompts"] = len(batched)
        result[f"batched_{name}_prompts_per_s"] = len(batched) / (time.perf_counter() - started)
    result["note"] = ("short: prompts of <= 128 tokens; all: any prompt, truncated to max_length; "
                      "one run on a shared 2-core machine")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
