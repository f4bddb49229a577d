"""The fine-tuned prompt classifier served from ONNX with onnxruntime and the ``tokenizers`` library.

No torch and no transformers at serving time: the artifact holds ``model.onnx`` (int8 where accuracy
held), ``tokenizer.json`` and ``classifier.json`` (labels, max length, padding side, pad id).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from classifier.base import Classifier
from core.messages import LABELS, Prediction


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class OnnxClassifier(Classifier):
    """The fine-tuned prompt classifier, exported to ONNX and served with onnxruntime + tokenizers."""

    name = "onnx"

    def __init__(self, model_path: Path, tokenizer_path: Path, config: dict[str, Any],
                 batch_size: int = 32, threads: int | None = None) -> None:
        self.labels: list[str] = list(config["labels"])
        unknown = set(self.labels) - set(LABELS)
        if unknown:
            raise ValueError(f"classifier labels {sorted(unknown)} are not router labels {LABELS}")
        self.max_length = int(config["max_length"])
        self.padding_side = config.get("padding_side", "right")
        self.pad_id = int(config["pad_token_id"])
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()  # padded here, per batch, on the configured side
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    @classmethod
    def from_dir(cls, directory: Path, **kwargs: Any) -> OnnxClassifier:
        config = json.loads((directory / "classifier.json").read_text())
        return cls(directory / config["model_file"], directory / "tokenizer.json", config, **kwargs)

    def _pad(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            cols = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            ids[row, cols] = enc.ids
            mask[row, cols] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds

    def probabilities(self, prompts: Sequence[str]) -> np.ndarray:
        """Label probabilities, one row per prompt, columns in ``self.labels`` order."""
        out = np.zeros((len(prompts), len(self.labels)))
        if not len(prompts):
            return out
        encodings = self.tokenizer.encode_batch(list(prompts))
        # Batches of similar length waste less compute on padding; rows go back in input order.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            (logits,) = self.session.run(["logits"], self._pad([encodings[i] for i in batch]))
            out[batch] = softmax(logits.astype(np.float64))
        return out

    def predict(self, prompts: Sequence[str]) -> list[Prediction]:
        out = []
        for row in self.probabilities(prompts):
            probs = {label: float(p) for label, p in zip(self.labels, row, strict=True)}
            best = int(np.argmax(row))
            out.append(Prediction(label=self.labels[best], confidence=float(min(1.0, row[best])),
                                  probabilities=probs))
        return out
