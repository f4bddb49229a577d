"""Prompt classifier speed on this machine: p50/p95 latency at batch 1 (prompts of <= 128 tokens)
and throughput batched, through the serving path (onnxruntime + tokenizers, no torch); with outcomes
data, also the learned answer check (verifier and answer reader) on recorded cheap-tier answers.

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
from core.messages import PromptMessage
from routing.answer_checks import Answer
from routing.artifact import build_escalation
from routing.verifier import LearnedVerifierCheck

SYNTHETIC = [
    "What is the capital of Australia?",
    "Write a Python function that merges two sorted lists and explain its complexity.",
    "Janet has 16 eggs and eats 3 for breakfast. How many are left if she bakes muffins with 4?",
    "Which of the following best describes penetration pricing? Options: A. ... B. ... C. ...",
]


def answer_check_timing(artifact: Path, records: list, n: int) -> dict | None:
    """p50/p95 ms of the artifact's learned answer check on recorded answers of its cheap model."""
    from core.registry import Prices
    from training.data import Ladder, replay_registry

    policy_doc = json.loads((artifact / "policy.json").read_text())
    if "verifier" not in policy_doc.get("checks", []):
        return None
    card = json.loads((artifact / "model_card.json").read_text())
    ladder = Ladder(**card["ladder"])
    prices = {m: Prices(**p) for m, p in card["prices_usd_per_1m"].items()}
    escalation = build_escalation(artifact, policy_doc, replay_registry(ladder, prices))
    check = next(c for c in escalation.checks if isinstance(c, LearnedVerifierCheck))
    answered = [r for r in records if ladder.cheap in r.outcomes][:n]
    latencies = []
    for record in tqdm(answered, desc="answer check", unit="answer"):
        outcome = record.outcomes[ladder.cheap]
        answer = Answer(ladder.cheap, outcome.response, "stop", outcome.output_tokens,
                        input_tokens=outcome.input_tokens)
        started = time.perf_counter()
        check.reject_reason(PromptMessage(prompt=record.prompt), answer)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"answers": len(latencies), "reader": check.model.reader is not None,
            "p50_ms": statistics.median(latencies), "p95_ms": sorted(latencies)[int(0.95 * (len(latencies) - 1))]}


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
    records = []
    if args.data:
        from core.outcomes import load_outcomes

        records = load_outcomes(args.data)
        prompts = [r.prompt for r in records]
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
    if records:
        result["answer_check"] = answer_check_timing(args.artifact, records, args.n)
    result["note"] = ("short: prompts of <= 128 tokens; all: any prompt, truncated to max_length; "
                      "answer_check: the verifier (with its answer reader) on one recorded cheap answer; "
                      "one run on a shared 2-core machine")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
