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


# A number as written in reasoning or an option: "-1,234.5", "3e-4".
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
_OPTION_LINE = re.compile(r"^\s*([A-J])[.)]\s*(.*)$", re.MULTILINE)
_FINAL_ANSWER = re.compile(r"answer is|\"answer\"\s*:|\\boxed\{", re.IGNORECASE)
_SAME, _NEAR = 0.005, 0.05  # relative differences: the same number (rounding), near it
_TAIL_CHARS = 300


def _numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in _NUMBER.findall(text)]


def _committed_number(prompt: str, parsed: str | None) -> float | None:
    """The number an answer commits to: the first number of the chosen option's text (multiple choice),
    else the answer itself when it is a plain number."""
    if parsed is None:
        return None
    if len(parsed) == 1 and parsed.isalpha():
        options = dict(_OPTION_LINE.findall(prompt.rsplit("Options:", 1)[-1]))
        found = _numbers(options.get(parsed.upper(), ""))
        return found[0] if found else None
    found = _numbers(parsed)
    return found[0] if len(found) == 1 and "/" not in parsed and "frac" not in parsed else None


CONSISTENCY_FEATURES = ("result_checked", "result_matches_answer", "result_near_answer",
                        "answer_in_reasoning_tail", "result_differs")


def consistency_features(prompt: str, response: str) -> list[float]:
    """Does the reasoning arrive at the number the final answer commits to? A response whose last
    computed number is not the option it picks ("closest to", a guess) is wrong far more often on
    MMLU-Pro's quantitative questions; the verifier learns how much per tier."""
    out = [0.0] * len(CONSISTENCY_FEATURES)
    target = _committed_number(prompt, parse_answer(response))
    if target is None:
        return out
    finals = list(_FINAL_ANSWER.finditer(response))
    reasoning = response[:finals[-1].start()] if finals else response
    computed = _numbers(reasoning)
    if not computed:
        return out

    def relative(x: float) -> float:
        return abs(x - target) / max(abs(target), 1e-9)

    out[0] = 1.0
    if relative(computed[-1]) < _SAME:
        out[1] = 1.0
    elif relative(computed[-1]) < _NEAR:
        out[2] = 1.0
    elif any(relative(x) < _SAME for x in _numbers(reasoning[-_TAIL_CHARS:])):
        out[3] = 1.0
    else:
        out[4] = 1.0
    return out


_WORD = re.compile(r"[a-z0-9]+")
SUPPORT_FEATURES = ("options_read", "chosen_option_support", "best_other_option_support", "chosen_best_supported")


def option_support_features(prompt: str, response: str) -> list[float]:
    """Multiple choice: how much of the chosen option's wording the reasoning uses, against the best of
    the other options. Reasoning that argues for one option's content and then picks another is
    wrong more often."""
    parsed = parse_answer(response)
    options = dict(_OPTION_LINE.findall(prompt.rsplit("Options:", 1)[-1])) if "Options:" in prompt else {}
    if parsed is None or parsed not in options:
        return [0.0] * len(SUPPORT_FEATURES)
    finals = list(_FINAL_ANSWER.finditer(response))
    used = set(_WORD.findall((response[:finals[-1].start()] if finals else response).lower()))

    def support(option_text: str) -> float:
        words = [w for w in _WORD.findall(option_text.lower()) if len(w) > 2 or w.isdigit()]
        return sum(w in used for w in words) / len(words) if words else 0.0

    chosen = support(options[parsed])
    best_other = max((support(text) for letter, text in options.items() if letter != parsed), default=0.0)
    return [1.0, chosen, best_other, float(chosen >= best_other)]


def verifier_features(
    prompt: str,
    label_probabilities: Sequence[float],
    response: str,
    input_tokens: int,
    output_tokens: int,
    previous_responses: Sequence[str],
    reader_logit: float = 0.0,
) -> np.ndarray:
    """Prompt cues + the prompt classifier's label probabilities + features of the answer + whether its
    reasoning reaches the number (or uses the wording of the option) it commits to + the answer reader's
    log-odds that it is right (``routing.answer_reader``; 0 without a reader)."""
    return np.asarray(
        prompt_features(prompt)
        + [float(p) for p in label_probabilities]
        + answer_features(response, input_tokens, output_tokens, previous_responses)
        + consistency_features(prompt, response)
        + option_support_features(prompt, response)
        + [float(reader_logit)],
        dtype=np.float64,
    )


FEATURE_NAMES = (PROMPT_FEATURES + ("p_simple", "p_medium", "p_complex") + ANSWER_FEATURES + CONSISTENCY_FEATURES
                 + SUPPORT_FEATURES + ("reader_logit",))
