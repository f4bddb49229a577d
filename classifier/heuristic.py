"""The seed's weak-label heuristic: length, code and reasoning cues. Used when no trained artifact exists."""

from __future__ import annotations

import re
from collections.abc import Sequence

from classifier.base import Classifier
from core.messages import LABELS, Label, Prediction

SHORT_CHARS = 120
LONG_CHARS = 400

_COMPLEX_WORDS = re.compile(
    r"\b(prove|proof|design (an? |the )?architecture|architecture|optimi[sz]e|production[- ]code|"
    r"production|legal|lawsuit|contract law|medical|diagnos\w*|theorem)\b",
    re.IGNORECASE,
)
_CODE_WORDS = re.compile(
    r"(```|\bdef |\bclass |\bfunction\b|\breturn\b|\bimport\b|\bapi\b|\bendpoint\b|\bsql\b|\bregex\b|"
    r"\bpython\b|\bjavascript\b|\bjson\b|[{};]\s*$|=>|\(\)\s*[{:])",
    re.IGNORECASE | re.MULTILINE,
)
_MULTI_STEP_WORDS = re.compile(
    r"\b(step[- ]by[- ]step|steps|first\b.*\bthen|explain why|calculate|compute|solve|equation|"
    r"integral|derivative|probability|how many|how much|percent|ratio)\b",
    re.IGNORECASE | re.DOTALL,
)


def _distribution(label: Label, confidence: float) -> dict[str, float]:
    rest = (1.0 - confidence) / (len(LABELS) - 1)
    return {name: (confidence if name == label else rest) for name in LABELS}


class HeuristicClassifier(Classifier):
    """Rules from the seed. Confidence reflects how many cues agree, not a calibrated probability."""

    name = "heuristic"

    def predict(self, prompts: Sequence[str]) -> list[Prediction]:
        return [self._predict_one(prompt) for prompt in prompts]

    def _predict_one(self, prompt: str) -> Prediction:
        length = len(prompt)
        complex_cue = bool(_COMPLEX_WORDS.search(prompt))
        code_cue = bool(_CODE_WORDS.search(prompt))
        multi_step_cue = bool(_MULTI_STEP_WORDS.search(prompt))

        if complex_cue and length > LONG_CHARS:
            label, confidence = "complex", 0.9
        elif complex_cue:
            label, confidence = "complex", 0.8
        elif length > LONG_CHARS:
            label, confidence = "complex", 0.7
        elif code_cue or multi_step_cue:
            label, confidence = "medium", 0.8 if length >= SHORT_CHARS else 0.7
        elif length >= SHORT_CHARS:
            label, confidence = "medium", 0.65
        else:
            label, confidence = "simple", 0.85
        return Prediction(label=label, confidence=confidence, probabilities=_distribution(label, confidence))
