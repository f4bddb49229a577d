"""The topic of a prompt (e.g. an exam subject), for routing: cheaper models are as good as the
expensive one on some topics and far behind on others.

A linear model on hashed word and word-pair counts, learned in training from records that carry a
``category`` (the outcomes data has one for MMLU-Pro). Serving needs numpy only: the same hashing
function builds the features in training and in the live classify agent.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_WORD = re.compile(r"[a-z][a-z0-9]+")
N_FEATURES = 1 << 16


def hashed_features(text: str, n_features: int = N_FEATURES) -> dict[int, float]:
    """Sublinear counts of words and adjacent word pairs, hashed into ``n_features`` buckets."""
    words = _WORD.findall(text.lower())
    counts: dict[int, float] = {}
    for token in [*words, *(a + " " + b for a, b in zip(words, words[1:], strict=False))]:
        index = zlib.crc32(token.encode()) % n_features
        counts[index] = counts.get(index, 0.0) + 1.0
    return {i: 1.0 + np.log(c) for i, c in counts.items()}


def feature_rows(texts: Sequence[str], n_features: int = N_FEATURES) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per text: bucket indices and L2-normalised values."""
    indices, values = [], []
    for text in texts:
        feats = hashed_features(text, n_features)
        idx = np.fromiter(feats.keys(), dtype=np.int64, count=len(feats))
        val = np.fromiter(feats.values(), dtype=np.float64, count=len(feats))
        norm = np.sqrt((val ** 2).sum())
        indices.append(idx)
        values.append(val / norm if norm else val)
    return indices, values


def linear_scores(texts: Sequence[str], weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(texts, outputs) scores of a linear model on the hashed features: the topic model's and the
    answer reader's serving path."""
    indices, values = feature_rows(texts)
    if not indices:
        return np.zeros((0, weights.shape[1]))
    return np.stack([val @ weights[idx] + bias for idx, val in zip(indices, values, strict=True)])


class TopicModel:
    FILE = "topic.npz"

    def __init__(self, topics: Sequence[str], weights: np.ndarray, bias: np.ndarray) -> None:
        self.topics = list(topics)
        self.weights = np.asarray(weights, dtype=np.float32)  # (n_features, n_topics)
        self.bias = np.asarray(bias, dtype=np.float64)
        if self.weights.shape != (N_FEATURES, len(self.topics)) or self.bias.shape != (len(self.topics),):
            raise ValueError(f"topic model shapes {self.weights.shape} / {self.bias.shape} do not match "
                             f"{N_FEATURES} features and {len(self.topics)} topics")

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.topics[int(best)] for best in np.argmax(linear_scores(texts, self.weights, self.bias), axis=1)]

    def save(self, directory: Path) -> None:
        np.savez_compressed(directory / self.FILE, weights=self.weights.astype(np.float16), bias=self.bias,
                            topics=np.asarray(json.dumps(self.topics)))

    @classmethod
    def load(cls, directory: Path) -> TopicModel | None:
        path = directory / cls.FILE
        if not path.is_file():
            return None
        saved = np.load(path)
        return cls(json.loads(str(saved["topics"])), saved["weights"].astype(np.float32), saved["bias"])
