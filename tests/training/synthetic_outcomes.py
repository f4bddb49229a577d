"""Small synthetic outcomes files with a learnable structure, written by the tests themselves.

Easy prompts: the cheap model answers right in well-formed JSON. Medium: the cheap model hedges and
gives no answer, the mid model is right. Hard: only the expensive model is right. Hopeless: nobody.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

LADDER = ("small-model", "mid-model", "big-model")
LADDER_ARG = ",".join(LADDER)
PRICES = {"_note": "test prices", "small-model": {"input": 0.1, "output": 0.4},
          "mid-model": {"input": 0.5, "output": 0.8}, "big-model": {"input": 2.5, "output": 10.0},
          "other-model": {"input": 1.0, "output": 1.0}}

_TOPICS = ["apples", "trains", "rivers", "prime numbers", "triangles", "interest rates", "chess", "planets"]


def _answer(model_right: bool, style: str, value: int) -> tuple[str, str | None]:
    if style == "json":
        shown = value if model_right else value + 1
        return json.dumps({"reasoning": "Add the numbers step by step.", "answer": str(shown)}), str(shown)
    return ("Hmm, I am not sure. Let me re-evaluate... However it might be " + "something " * 20), None


def make_records(n: int, source: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        kind = rng.choices(["easy", "medium", "hard", "hopeless"], weights=[5, 2, 2, 1])[0]
        topic = rng.choice(_TOPICS)
        value = rng.randint(1, 99)
        if kind == "easy":
            prompt = f"Quick question about {topic}: what is {value} plus zero?"
            right = (True, True, True)
        elif kind == "medium":
            prompt = f"Consider {topic} carefully. " + "Several steps are needed here. " * 3 + f"Find {value}."
            right = (False, True, True)
        elif kind == "hard":
            prompt = (f"Prove a deep property of {topic}. " + "This requires long careful reasoning. " * 8
                      + f"Give the value {value}.")
            right = (False, False, True)
        else:
            prompt = f"Unsolvable riddle about {topic} number {value}: " + "nobody knows this. " * 5
            right = (False, False, False)
        outcomes = {}
        for model, ok in zip(LADDER, right, strict=True):
            style = "json" if ok or model != "small-model" or kind == "hopeless" else "hedge"
            text, parsed = _answer(ok, style, value)
            outcomes[model] = {"correct": ok, "answer": parsed, "input_tokens": len(prompt) // 4,
                               "output_tokens": len(text) // 4 + (40 if model == "small-model" else 10),
                               "response": text}
        records.append({"id": f"{source}/{i}", "source": source, "prompt": prompt, "outcomes": outcomes})
    return records


def write_jsonl_gz(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def make_mixed_records(n: int, source: str, seed: int) -> list[dict]:
    """``make_records`` with three prompt kinds (math notation, code, general text) and 10 % of each model's
    correctness flipped, so that per-kind calibration, budgets and margins all have something to choose."""
    rng = random.Random(seed + 100)
    records = make_records(n, source, seed)
    for record in records:
        draw = rng.random()
        if draw < 0.3:
            record["prompt"] = "Evaluate $x^{2}$ first. " + record["prompt"]
        elif draw < 0.5:
            record["prompt"] = "```python\nprint(1)\n```\n" + record["prompt"]
        for outcome in record["outcomes"].values():
            if rng.random() < 0.1:
                outcome["correct"] = not outcome["correct"]
    return records
