"""The answer reader: how likely a cheaper model's answer is right, read from the words of its response.

The verifier's hand-made features (parsed answer present, length, hedging, agreement) miss most of
what a response's reasoning says about it. The reader is a linear model per tier on hashed word and
word-pair counts of the response text (the same hashing as the topic model), learned in training
from which recorded answers were right. Its logit is one more verifier feature, so the verifier's
heads and the calibrated margins weigh it with everything else. Numpy only at serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from classifier.topic import N_FEATURES, linear_scores

READER_TIERS = ("cheap", "mid")  # the answers the verifier judges; the expensive one is final


class AnswerReader:
    FILE = "reader.npz"

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)  # (n_features, tiers)
        self.bias = np.asarray(bias, dtype=np.float64)
        if self.weights.shape != (N_FEATURES, len(READER_TIERS)) or self.bias.shape != (len(READER_TIERS),):
            raise ValueError(f"answer reader shapes {self.weights.shape} / {self.bias.shape} do not match "
                             f"{N_FEATURES} features and tiers {READER_TIERS}")

    def logits(self, tier: str, responses: Sequence[str]) -> np.ndarray:
        """Log-odds that each response (from a model of ``tier``) is right."""
        return linear_scores(responses, self.weights, self.bias)[:, READER_TIERS.index(tier)]

    def save(self, directory: Path) -> None:
        # float16 halves the file; logits move by < 1e-3, and serving and evaluation both read this copy.
        np.savez_compressed(directory / self.FILE, weights=self.weights.astype(np.float16), bias=self.bias)

    @classmethod
    def load(cls, path: Path) -> AnswerReader:
        saved = np.load(path)
        return cls(saved["weights"].astype(np.float32), saved["bias"])
