"""The classifier interface and its name-to-class registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

from core.messages import Prediction

CLASSIFIERS: dict[str, type["Classifier"]] = {}

C = TypeVar("C", bound=type["Classifier"])


def register_classifier(name: str) -> Callable[[C], C]:
    def decorate(cls: C) -> C:
        if name in CLASSIFIERS:
            raise ValueError(f"classifier {name!r} is already registered")
        cls.name = name
        CLASSIFIERS[name] = cls
        return cls

    return decorate


class Classifier(ABC):
    """Labels prompts simple, medium or complex, in batches."""

    name: ClassVar[str] = "abstract"

    @abstractmethod
    def predict(self, prompts: Sequence[str]) -> list[Prediction]:
        """One prediction per prompt, in order."""
