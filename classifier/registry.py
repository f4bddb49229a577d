"""Name -> class for the prompt classifiers (RouteLLM-style registry); add a new classifier here."""

from __future__ import annotations

from classifier.base import Classifier
from classifier.heuristic import HeuristicClassifier
from classifier.onnx_classifier import OnnxClassifier

CLASSIFIERS: dict[str, type[Classifier]] = {cls.name: cls for cls in (HeuristicClassifier, OnnxClassifier)}
