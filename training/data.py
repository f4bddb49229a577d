"""Outcomes data for one ladder: labels from correctness, per-request costs, prices, registry, splits."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.heuristic import HeuristicClassifier
from core.messages import LABELS, Tier
from core.outcomes import OutcomeRecord, load_outcomes
from core.registry import ModelRegistry, ModelSpec, Prices, load_prices_usd

# Replay models answer any prompt length the recorded model answered.
REPLAY_CONTEXT_WINDOW = 1_000_000


@dataclass(frozen=True)
class Ladder:
    cheap: str
    mid: str
    expensive: str

    @property
    def models(self) -> list[str]:
        return [self.cheap, self.mid, self.expensive]

    def __str__(self) -> str:
        return ",".join(self.models)

    @classmethod
    def parse(cls, text: str) -> Ladder:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(parts) != 3 or len(set(parts)) != 3:
            raise ValueError(f"--ladder needs three distinct model ids CHEAP,MID,EXPENSIVE, got {text!r}")
        return cls(*parts)


def load_prices(path: Path | str) -> dict[str, Prices]:
    """USD per 1M tokens per model, from a file like reference_prices.json (keys starting '_' ignored)."""
    return load_prices_usd(path)


def replay_registry(ladder: Ladder, prices: dict[str, Prices]) -> ModelRegistry:
    missing = [m for m in ladder.models if m not in prices]
    if missing:
        raise ValueError(f"prices file has no price for {missing}")
    return ModelRegistry(models=[
        ModelSpec(name=name, kind="replay", tier=tier, context_window=REPLAY_CONTEXT_WINDOW,
                  max_output_tokens=REPLAY_CONTEXT_WINDOW, prices=prices[name])
        for name, tier in zip(ladder.models, (Tier.cheap, Tier.mid, Tier.expensive), strict=True)
    ])


def request_cost_usd(prices: Prices, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * prices.input + output_tokens * prices.output) / 1e6


def label_from_correct(cheap: bool, mid: bool) -> str:
    """simple: the cheap model is right; medium: cheap wrong, mid right; complex: otherwise."""
    if cheap:
        return "simple"
    if mid:
        return "medium"
    return "complex"


@dataclass
class LadderData:
    """Records that have outcomes for all three ladder models, with arrays aligned to them."""

    ladder: Ladder
    records: list[OutcomeRecord]
    correct: np.ndarray  # (n, 3) bool, ladder order
    cost_usd: np.ndarray  # (n, 3) float, per request at list prices
    labels: list[str]
    skipped_incomplete: int

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def unsolvable(self) -> np.ndarray:
        """Prompts that no ladder model gets right (labelled complex, but no model can earn them)."""
        return ~self.correct.any(axis=1)

    @property
    def sources(self) -> list[str]:
        return [r.source for r in self.records]

    def label_ids(self) -> np.ndarray:
        return np.asarray([LABELS.index(label) for label in self.labels])

    def subset(self, rows: Sequence[int]) -> LadderData:
        rows = list(rows)
        return LadderData(self.ladder, [self.records[i] for i in rows], self.correct[rows], self.cost_usd[rows],
                          [self.labels[i] for i in rows], 0)

    def fingerprint(self) -> str:
        return data_fingerprint(self.records)


def build_ladder_data(records: Sequence[OutcomeRecord], ladder: Ladder, prices: dict[str, Prices]) -> LadderData:
    kept = [r for r in records if all(m in r.outcomes for m in ladder.models)]
    if not kept:
        raise ValueError(f"no record has outcomes for all of {ladder.models}")
    correct = np.asarray([[r.outcomes[m].correct for m in ladder.models] for r in kept], dtype=bool)
    cost = np.asarray([[request_cost_usd(prices[m], r.outcomes[m].input_tokens, r.outcomes[m].output_tokens)
                        for m in ladder.models] for r in kept])
    labels = [label_from_correct(bool(c[0]), bool(c[1])) for c in correct]
    return LadderData(ladder, kept, correct, cost, labels, len(records) - len(kept))


def load_ladder_data(paths: Sequence[Path | str], ladder: Ladder, prices: dict[str, Prices]) -> LadderData:
    return build_ladder_data(load_outcomes(paths), ladder, prices)


def heuristic_labels(prompts: Sequence[str]) -> list[str]:
    """Weak labels from the seed heuristic, for prompts that have no outcomes."""
    return [p.label for p in HeuristicClassifier().predict(prompts)]


def data_fingerprint(records: Sequence[OutcomeRecord]) -> str:
    digest = hashlib.sha256()
    for record_id in sorted(r.id for r in records):
        digest.update(record_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def stratified_split(records: Sequence[OutcomeRecord], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split of record indices, stratified by source (same share of every source held out)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test fraction must be between 0 and 1")
    by_source: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_source[record.source].append(index)
    train: list[int] = []
    test: list[int] = []
    for source in sorted(by_source):
        rows = sorted(by_source[source], key=lambda i: records[i].id)
        random.Random(f"{seed}:{source}").shuffle(rows)
        cut = round(len(rows) * test_fraction)
        test.extend(rows[:cut])
        train.extend(rows[cut:])
    return sorted(train), sorted(test)


def kfold_by_source(sources: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold number per row, stratified by source."""
    fold = np.zeros(len(sources), dtype=int)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        by_source[s].append(i)
    for source in sorted(by_source):
        rows = by_source[source][:]
        random.Random(f"{seed}:fold:{source}").shuffle(rows)
        for k, i in enumerate(rows):
            fold[i] = k % folds
    return fold


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command's ``main``, reporting bad input (missing files, malformed data, unknown models, a
    missing artifact) in one line instead of a traceback."""
    from core.outcomes import OutcomesFormatError  # noqa: PLC0415
    from routing.artifact import ArtifactError  # noqa: PLC0415 - keeps this module free of model imports

    try:
        return main(argv)
    except (FileNotFoundError, OutcomesFormatError, ArtifactError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
