"""Features of a prompt and of a model's answer to it, for the learned answer verifier.

Pure Python + numpy (no torch), so the live provider agents compute exactly what training computed.
An answer is judged from what any deployment sees: the prompt text, the response text, its token
counts, and the answers of cheaper models already called for the same request.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np

# MMLU-style "The answer is (E)" and ZeroEval-style JSON {"reasoning": ..., "answer": ...}.
_CHOICE_ANSWER = re.compile(r"answer is:?\s*\(?([A-J])\)?", re.IGNORECASE)
_JSON_ANSWER = re.compile(r'"answer"\s*:\s*("(?:[^"\\]|\\.)*"|[^,}\n]+)')
_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_JSON_BLOCK = re.compile(r"\{.*\}", re.DOTALL)
_HEDGES = re.compile(
    r"\b(however|but wait|wait|actually|mistake|re-?evaluate|let me|let's re|assum\w+|approximately|not sure|"
    r"unclear|cannot be determined|recheck|re-?check|correction|it seems|might|perhaps|possibly|"
    r"none of the (options|above)|not (listed|among))\b",
    re.IGNORECASE,
)
_OPTIONS = re.compile(r"^\s*Options:\s*$|^\s*[A-J][.)]\s", re.MULTILINE)
_CODE = re.compile(r"\[PYTHON\]|```|\bdef \w+\(|\breturn\b")
_LATEX = re.compile(r"\$|\\frac|\\sqrt|\\cdot|\^\{")
_DIGITS = re.compile(r"\d+(\.\d+)?")


def normalise_answer(raw: str) -> str | None:
    text = raw.strip().strip("'\"`").strip().rstrip(".").replace("$", "").replace(" ", "").lower()
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("dfrac", "frac")
    return text or None


def parse_answer(response: str) -> str | None:
    """The final answer a response commits to, normalised for comparison; None when it gives none."""
    choices = _CHOICE_ANSWER.findall(response)
    if choices:
        return choices[-1].upper()
    found = _JSON_ANSWER.findall(response)
    if found:
        raw = found[-1].strip()
        if raw.startswith('"'):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raw = raw.strip('"')
        return normalise_answer(str(raw))
    boxed = _BOXED.findall(response)
    if boxed:
        return normalise_answer(boxed[-1])
    return None


def json_well_formed(response: str) -> bool:
    match = _JSON_BLOCK.search(response)
    if match is None:
        return False
    try:
        json.loads(match.group(0))
    except json.JSONDecodeError:
        return False
    return True


PROMPT_FEATURES = ("log_prompt_chars", "multiple_choice", "code", "latex", "digits")


def prompt_features(prompt: str) -> list[float]:
    return [
        math.log1p(len(prompt)) / 10,
        float(bool(_OPTIONS.search(prompt))),
        float(bool(_CODE.search(prompt))),
        float(bool(_LATEX.search(prompt))),
        min(len(_DIGITS.findall(prompt)), 50) / 50,
    ]


ANSWER_FEATURES = (
    "has_answer", "json_ok", "log_output_tokens", "log_input_tokens", "hedges", "lines", "answer_chars",
    "previous_count", "agrees_with_previous", "agrees_with_all_previous", "previous_had_answer",
)


def answer_features(
    response: str,
    input_tokens: int,
    output_tokens: int,
    previous_responses: Sequence[str],
) -> list[float]:
    parsed = parse_answer(response)
    previous = [parse_answer(p) for p in previous_responses]
    agreeing = [p is not None and p == parsed for p in previous]
    return [
        float(parsed is not None),
        float(json_well_formed(response)),
        math.log1p(output_tokens) / 5,
        math.log1p(input_tokens) / 5,
        min(len(_HEDGES.findall(response)), 10) / 10,
        min(response.count("\n"), 100) / 100,
        min(len(parsed or ""), 40) / 40,
        float(len(previous)),
        float(any(agreeing)),
        float(bool(agreeing) and all(agreeing)),
        float(any(p is not None for p in previous)),
    ]


def verifier_features(
    prompt: str,
    label_probabilities: Sequence[float],
    response: str,
    input_tokens: int,
    output_tokens: int,
    previous_responses: Sequence[str],
    reader_logit: float = 0.0,
) -> np.ndarray:
    """Prompt cues + the prompt classifier's label probabilities + features of the answer + the answer
    reader's log-odds that it is right (``classifier.answer_reader``; 0 without a reader)."""
    return np.asarray(
        prompt_features(prompt)
        + [float(p) for p in label_probabilities]
        + answer_features(response, input_tokens, output_tokens, previous_responses)
        + [float(reader_logit)],
        dtype=np.float64,
    )


FEATURE_NAMES = PROMPT_FEATURES + ("p_simple", "p_medium", "p_complex") + ANSWER_FEATURES + ("reader_logit",)
