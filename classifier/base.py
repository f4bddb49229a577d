"""The prompt classifier interface; ``classifier.registry.CLASSIFIERS`` maps names to classes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from core.messages import Prediction


class Classifier(ABC):
    """Labels prompts simple, medium or complex, in batches."""

    name: ClassVar[str] = "abstract"

    @abstractmethod
    def predict(self, prompts: Sequence[str]) -> list[Prediction]:
        """One prediction per prompt, in order."""
