"""Answer checks: after a model answers, is the answer poor enough to pay for the next tier?

Each check is an ``AnswerCheck`` with a name in ``ANSWER_CHECKS`` (add a new check there); the
artifact's ``policy.json`` lists the checks by name. The learned verifier
(``routing.verifier.LearnedVerifierCheck``) is one of them.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from core.messages import EscalationReasonKind, PromptMessage


@dataclass(frozen=True)
class Answer:
    """A model's answer as the checks see it."""

    model: str
    text: str
    finish_reason: str | None
    output_tokens: int
    input_tokens: int = 0
    # Earlier answers to the same request (cheaper tiers first), for checks that compare answers.
    previous: tuple[Answer, ...] = ()
    # The prompt classifier's label probabilities from the routing decision, when known.
    label_probabilities: dict[str, float] | None = None
    # The routing decision's prompt kind (surface kind / topic), for per-kind answer checks.
    kind: str | None = None


class AnswerCheck(ABC):
    name: ClassVar[str] = "abstract"
    # How an escalation this check causes is recorded (``Attempt.next_reason_kind``).
    reason_kind: ClassVar[EscalationReasonKind]

    @abstractmethod
    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        """Why the answer is poor, or None to accept it."""


_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, (but )?i|i can(no|')t (help|assist|answer|provide|comply)|"
    r"i am (not able|unable)|i'?m (not able|unable)|as an ai\b)",
    re.IGNORECASE,
)


class RefusalCheck(AnswerCheck):
    name = "refusal"
    reason_kind = "refusal"

    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        return "refusal" if _REFUSAL.search(answer.text) else None


class TooShortCheck(AnswerCheck):
    name = "too_short"
    reason_kind = "short"

    def __init__(self, min_chars: int = 1) -> None:
        self.min_chars = min_chars

    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        stripped = answer.text.strip()
        if not stripped:
            return "empty answer"
        if len(stripped) < self.min_chars:
            return f"answer shorter than {self.min_chars} chars"
        return None


class LengthCheck(AnswerCheck):
    name = "length"
    reason_kind = "length"

    def reject_reason(self, prompt: PromptMessage, answer: Answer) -> str | None:
        return "finish_reason=length (truncated)" if answer.finish_reason == "length" else None


ANSWER_CHECKS: dict[str, type[AnswerCheck]] = {
    check.name: check for check in (RefusalCheck, TooShortCheck, LengthCheck)
}

DEFAULT_CHECKS = ("refusal", "too_short", "length")


@dataclass(frozen=True)
class Rejection:
    """Why an answer was refused: the check's reason kind and its words."""

    kind: EscalationReasonKind
    reason: str

