"""The kind of a prompt, read from its surface: code, math notation, multiple choice, or general text.

Cheaper models fail in different ways on different kinds of prompt (a code-tracing question goes up
the ladder far more often than a word problem), so the cascade policy keeps its start tier, verifier
margins and output budgets per kind. The kind needs no model: the live classify agent, the offline
harness and calibration all call this one function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from routing.answer_features import _CODE, _DIGITS, _OPTIONS

T = TypeVar("T")

DEFAULT_KIND = "default"  # settings for kinds too rare in training to calibrate on their own

# LaTeX commands, super/subscripts, or an inline $...$ formula with an operator in it (a dollar
# amount alone, "$5", is not math notation).
_MATH_NOTATION = re.compile(r"\\[a-zA-Z]+|\^\{|_\{|\$[^$\n]*[\\^_=][^$\n]*\$")
_QUANTITATIVE_NUMBERS = 4


def prompt_kind(prompt: str) -> str:
    if _CODE.search(prompt):
        return "code"
    if _OPTIONS.search(prompt):
        quantitative = _MATH_NOTATION.search(prompt) or len(_DIGITS.findall(prompt)) >= _QUANTITATIVE_NUMBERS
        return "multiple_choice_quantitative" if quantitative else "multiple_choice"
    if _MATH_NOTATION.search(prompt):
        return "math"
    return "general"


def routing_kind(prompt: str, topic: str | None) -> str:
    """The surface kind refined by the topic, when the router knows one: ``multiple_choice/chemistry``."""
    surface = prompt_kind(prompt)
    return f"{surface}/{topic}" if topic else surface


def settings_for_kind(by_kind: Mapping[str, T], kind: str, default: T) -> T:
    """A kind's own settings, else its surface kind's, else the default: the one lookup order shared
    by the policy, the verifier and calibration."""
    if kind in by_kind:
        return by_kind[kind]
    return by_kind.get(kind.split("/", 1)[0], default)
