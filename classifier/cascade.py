"""What happens after a model answers or fails: accept, escalate on a poor answer, or fall back on error.

This is the one escalation code path. The live provider agent calls it after every attempt, and the
offline harness replays it on recorded responses, so both charge for exactly the same calls.
Answer checks are pluggable: register a class in ``ANSWER_CHECKS`` (a learned verifier can join).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from core.messages import TIER_ORDER, Attempt, PromptMessage, Tier
from providers.registry import ModelRegistry, ModelSpec

ANSWER_CHECKS: dict[str, type["AnswerCheck"]] = {}

K = TypeVar("K", bound=type["AnswerCheck"])


def register_check(name: str) -> Callable[[K], K]:
    def decorate(cls: K) -> K:
        if name in ANSWER_CHECKS:
            raise ValueError(f"answer check {name!r} is already registered")
        cls.name = name
        ANSWER_CHECKS[name] = cls
        return cls

    return decorate


@dataclass(frozen=True)
class Answer:
    """A model's answer as the checks see it."""

    model: str
    text: str
    finish_reason: str | None
    output_tokens: int
    input_tokens: int = 0
    # Earlier answers to the same request (cheaper tiers first), for checks that compare answers.
    previous: tuple["Answer", ...] = ()
    # The prompt classifier's label probabilities from the routing decision, when known.
    label_probabilities: dict[str, float] | None = None
    # The routing decision's prompt kind (surface kind / topic), for per-kind answer checks.
    kind: str | None = None


class AnswerCheck(ABC):
    name: ClassVar[str] = "abstract"

    @abstractmethod
    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        """Why the answer is poor, or None to accept it."""


_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, (but )?i|i can(no|')t (help|assist|answer|provide|comply)|"
    r"i am (not able|unable)|i'?m (not able|unable)|as an ai\b)",
    re.IGNORECASE,
)


@register_check("refusal")
class RefusalCheck(AnswerCheck):
    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        return "refusal" if _REFUSAL.search(answer.text) else None


@register_check("too_short")
class TooShortCheck(AnswerCheck):
    def __init__(self, min_chars: int = 1) -> None:
        self.min_chars = min_chars

    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        stripped = answer.text.strip()
        if not stripped:
            return "empty answer"
        if len(stripped) < self.min_chars:
            return f"answer shorter than {self.min_chars} chars"
        return None


@register_check("length")
class LengthCheck(AnswerCheck):
    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        return "finish_reason=length (truncated)" if answer.finish_reason == "length" else None


DEFAULT_CHECKS = ("refusal", "too_short", "length")


class Escalation:
    """Decides the next model after an attempt, on the registry's ladder."""

    def __init__(
        self,
        registry: ModelRegistry,
        checks: Sequence[AnswerCheck] | None = None,
        max_escalations: int = 1,
    ) -> None:
        self.registry = registry
        self.checks = list(checks) if checks is not None else [ANSWER_CHECKS[n]() for n in DEFAULT_CHECKS]
        self.max_escalations = max_escalations

    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        for check in self.checks:
            reason = check.reject_reason(prompt, answer)
            if reason:
                return reason
        return None

    def _tried(self, attempts: Sequence[Attempt]) -> set[str]:
        return {a.model for a in attempts}

    def next_after_rejection(self, current: ModelSpec, attempts: Sequence[Attempt]) -> ModelSpec | None:
        """The next tier up, if escalations are left. ``attempts`` includes the rejected one."""
        escalations = sum(1 for a in attempts if a.status == "rejected")
        if escalations > self.max_escalations:
            return None
        tried = self._tried(attempts)
        for tier in TIER_ORDER[TIER_ORDER.index(current.tier) + 1 :]:
            spec = self.registry.by_tier(tier)
            if spec.name not in tried:
                return spec
        return None

    def next_after_error(self, current: ModelSpec, attempts: Sequence[Attempt]) -> ModelSpec | None:
        """Fall back to the next tier up not yet tried; from the top, to the best tier below it."""
        tried = self._tried(attempts)
        index = TIER_ORDER.index(current.tier)
        order: list[Tier] = list(TIER_ORDER[index + 1 :]) + list(reversed(TIER_ORDER[:index]))
        for tier in order:
            spec = self.registry.by_tier(tier)
            if spec.name not in tried:
                return spec
        return None
