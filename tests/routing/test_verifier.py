"""The learned verifier as an answer check on the shared ladder executor, with recorded replies."""

from __future__ import annotations

import asyncio
import json
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from classifier.topic import N_FEATURES
from core.messages import PromptMessage, RoutedMessage, RoutingDecision, Tier
from core.outcomes import OutcomeRecord
from core.registry import ModelRegistry, ModelSpec, Prices
from providers.costs import RegistryCostBook
from providers.executor import LadderExecutor
from providers.replay import OutcomeIndex, ReplayProvider
from routing.answer_checks import Answer
from routing.answer_features import (
    CONSISTENCY_FEATURES,
    FEATURE_NAMES,
    SUPPORT_FEATURES,
    consistency_features,
    option_support_features,
    parse_answer,
    verifier_features,
)
from routing.answer_reader import AnswerReader
from routing.artifact import ArtifactError, build_escalation
from routing.escalation import Escalation
from routing.verifier import LearnedVerifierCheck, LogisticHead, TierVerifier, VerifierModel, load_verifier


@pytest.mark.parametrize(("response", "parsed"), [
    ("Let's think. The answer is (E).\n", "E"),
    ('```json\n{"reasoning": "x", "answer": "\'UppEr\'"}\n```', "upper"),
    ('{"reasoning": "sum", "answer": 18}', "18"),
    ("so the result is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("I am not sure.", None),
])
def test_parse_answer(response: str, parsed: str | None) -> None:
    assert parse_answer(response) == parsed


def _registry() -> ModelRegistry:
    return ModelRegistry(models=[
        ModelSpec(name="small", kind="replay", tier=Tier.cheap, prices=Prices(input=0.1, output=0.4)),
        ModelSpec(name="mid", kind="replay", tier=Tier.mid, prices=Prices(input=0.5, output=0.8)),
        ModelSpec(name="big", kind="replay", tier=Tier.expensive, prices=Prices(input=2.5, output=10)),
    ])


def _verifier() -> VerifierModel:
    """p(right) rises with a parsed answer and with agreement with a cheaper answer; p(next right) flat."""
    n = len(FEATURE_NAMES)
    this = np.zeros(n)
    this[FEATURE_NAMES.index("has_answer")] = 4.0
    this[FEATURE_NAMES.index("agrees_with_previous")] = 4.0
    up = LogisticHead(np.zeros(n), 1.0)  # p_up = 0.73 everywhere
    # References equal to the next call's cost for the test record (20 in, 30 out): cost factor 1.
    cheap = TierVerifier(LogisticHead(this, -4.0), up, 0.0, 1.0, reference_next_cost_usd=(20 * 0.5 + 30 * 0.8) / 1e6)
    mid = TierVerifier(LogisticHead(this, -4.0), up, 0.0, 1.0, reference_next_cost_usd=(20 * 2.5 + 30 * 10) / 1e6)
    return VerifierModel(np.zeros(n), np.ones(n), {"cheap": cheap, "mid": mid})


def _record(cheap: str, mid: str, big: str) -> OutcomeRecord:
    def outcome(text: str, correct: bool) -> dict:
        return {"correct": correct, "input_tokens": 20, "output_tokens": 30, "response": text}

    return OutcomeRecord.model_validate({"id": "t/1", "source": "t", "prompt": "What is 6 x 7?", "outcomes": {
        "small": outcome(cheap, False), "mid": outcome(mid, True), "big": outcome(big, True)}})


def _run(record: OutcomeRecord, margins: dict[str, float], max_escalations: int = 2):
    registry = _registry()
    check = LearnedVerifierCheck(_verifier(), registry, margins)
    escalation = Escalation(registry, [check], max_escalations=max_escalations)
    index = OutcomeIndex([record])
    executor = LadderExecutor(registry, {s.name: ReplayProvider(s, index) for s in registry.models}, escalation,
                              RegistryCostBook(registry))
    prompt = PromptMessage(prompt=record.prompt, created_at=datetime(2024, 6, 1, tzinfo=UTC))
    decision = RoutingDecision(label="simple", confidence=0.9, probabilities={"simple": 0.9, "medium": 0.05,
                               "complex": 0.05}, model="small", tier=Tier.cheap, reasons=["test"],
                               policy="cascade", classifier="test")
    return asyncio.run(executor.run(RoutedMessage(prompt=prompt, decision=decision, target_model="small")))


def test_verifier_escalates_a_missing_answer_and_accepts_agreement() -> None:
    done = _run(_record("I am not sure, maybe 41?", '{"answer": "42"}', '{"answer": "42"}'), {"cheap": 0.0, "mid": 0.0})
    # Cheap gave no answer: p_this = 0.02 < p_up: escalate. Mid's answer has no cheaper answer to agree
    # with (p_this = 0.5 < 0.73): escalate again, and every call is charged.
    assert [a.model for a in done.attempts] == ["small", "mid", "big"]
    assert [a.status for a in done.attempts] == ["rejected", "rejected", "ok"]
    assert done.attempts[0].error.startswith("verifier:")
    assert done.cost_micro_usd == sum(a.cost_micro_usd for a in done.attempts) > 0
    assert done.final_model == "big"

    done = _run(_record('{"answer": "42"}', '{"answer": "42"}', '{"answer": "42"}'), {"cheap": 0.5, "mid": 0.0})
    assert [a.model for a in done.attempts] == ["small"]  # gain 0.73 - 0.5 < 0.5 x cost factor: accepted


def test_mid_answer_agreeing_with_cheap_is_accepted() -> None:
    # Cheap answered (p_this 0.5) but margin -1 forces escalation; mid agrees with it: p_this 0.98 > p_up.
    done = _run(_record('{"answer": "42"}', '{"answer": "42"}', '{"answer": "42"}'), {"cheap": -1.0, "mid": 0.0})
    assert [a.model for a in done.attempts] == ["small", "mid"] and done.final_model == "mid"


def test_max_escalations_caps_the_cascade() -> None:
    done = _run(_record("no idea", "no idea", '{"answer": "42"}'), {"cheap": 0.0, "mid": 0.0}, max_escalations=1)
    assert [a.model for a in done.attempts] == ["small", "mid"]


def test_features_have_the_declared_width() -> None:
    x = verifier_features("Options:\nA. x\nB. y", [0.2, 0.3, 0.5], "The answer is (A).", 10, 20, ["answer is (A)"])
    assert x.shape == (len(FEATURE_NAMES),)
    assert x[FEATURE_NAMES.index("agrees_with_previous")] == 1.0
    assert x[FEATURE_NAMES.index("multiple_choice")] == 1.0


_QUESTION = "A car goes 120 km in 1.5 h. Its speed in km/h?\n\nOptions:\nA. 60 km/h\nB. 80 km/h\nC. 1,200 km/h\nD. 82 km/h"


@pytest.mark.parametrize(("prompt", "response", "flag"), [
    (_QUESTION, "Speed = 120 / 1.5 = 80 km/h. The answer is (B).", "result_matches_answer"),
    (_QUESTION, "Speed = 120 / 1.5 = 80.5 km/h. The answer is (B).", "result_near_answer"),
    (_QUESTION, "We need 1,200 km/h here, checking 1200 again gives 7. The answer is (C).", "answer_in_reasoning_tail"),
    (_QUESTION, "Speed = 120 / 1.5 = 75 km/h, the closest option. The answer is (B).", "result_differs"),
    ("Janet has 3 + 4 apples.", '{"reasoning": "3 + 4 = 7", "answer": "7"}', "result_matches_answer"),
    ("x", '{"reasoning": "2 * 5 = 10", "answer": "11"}', "result_differs"),
    ("x", "Therefore the value is 9, so \\boxed{9}", "result_matches_answer"),
])
def test_consistency_features_compare_the_result_with_the_committed_answer(prompt: str, response: str,
                                                                            flag: str) -> None:
    values = dict(zip(CONSISTENCY_FEATURES, consistency_features(prompt, response), strict=True))
    assert values["result_checked"] == 1.0
    assert [name for name, v in values.items() if v and name != "result_checked"] == [flag]


@pytest.mark.parametrize(("prompt", "response"), [
    (_QUESTION, "It is fast. The answer is (B)."),  # no number reached
    ("Options:\nA. red\nB. blue", "Blue has 2 syllables? The answer is (B)."),  # the option is not a number
    ("x", "I cannot tell."),  # no answer at all
    ("x", '{"reasoning": "1/2 + 1/4", "answer": "\\frac{3}{4}"}'),  # not a plain number
])
def test_consistency_features_stay_off_without_a_number_to_check(prompt: str, response: str) -> None:
    assert consistency_features(prompt, response) == [0.0] * len(CONSISTENCY_FEATURES)


def test_option_support_compares_the_chosen_option_with_the_others() -> None:
    prompt = "Why can people tell Coke from Pepsi?\n\nOptions:\nA. Depth perception\nB. Difference threshold\nC. Signal detection"
    argued_for = dict(zip(SUPPORT_FEATURES, option_support_features(
        prompt, "A difference threshold is the smallest change one can detect. The answer is (B)."), strict=True))
    assert argued_for == {"options_read": 1.0, "chosen_option_support": 1.0, "best_other_option_support": 0.0,
                          "chosen_best_supported": 1.0}
    picked_another = dict(zip(SUPPORT_FEATURES, option_support_features(
        prompt, "A difference threshold is the smallest change one can detect. The answer is (C)."), strict=True))
    assert picked_another["chosen_option_support"] == 0.0 and picked_another["best_other_option_support"] == 1.0
    assert picked_another["chosen_best_supported"] == 0.0
    # Not multiple choice, or no option picked: all off.
    assert option_support_features("What is 2 + 2?", '{"answer": "4"}') == [0.0] * len(SUPPORT_FEATURES)
    assert option_support_features(prompt, "I do not know.") == [0.0] * len(SUPPORT_FEATURES)


def test_verifier_round_trips_through_json() -> None:
    model = _verifier()
    again = VerifierModel.from_json(model.to_json())
    x = np.ones((2, len(FEATURE_NAMES)))
    assert np.allclose(model.scores("cheap", x)[0], again.scores("cheap", x)[0])
    bad = model.to_json()
    bad["feature_names"] = ["other"]
    with pytest.raises(ValueError, match="trained on features"):
        VerifierModel.from_json(bad)


def test_the_answer_reader_decides_through_the_live_check(tmp_path: Path) -> None:
    """A reader that has learned "unsure" answers are wrong makes the live check escalate them, loaded
    from an artifact folder as the router loads it."""
    weights = np.zeros((N_FEATURES, 2))
    weights[zlib.crc32(b"unsure") % N_FEATURES, 0] = -40.0
    AnswerReader(weights, np.array([3.0, 3.0])).save(tmp_path)
    n = len(FEATURE_NAMES)
    this = np.zeros(n)
    this[FEATURE_NAMES.index("reader_logit")] = 1.0  # p(right) is the reader's
    flat = TierVerifier(LogisticHead(this, 0.0), LogisticHead(np.zeros(n), 0.0), 0.0, 1.0, 1.0)
    (tmp_path / "verifier.json").write_text(json.dumps(VerifierModel(np.zeros(n), np.ones(n),
                                                                     {"cheap": flat, "mid": flat}).to_json()))
    model = load_verifier(tmp_path, {"file": "verifier.json", "reader_file": AnswerReader.FILE})
    assert model.reader is not None
    assert model.reader_logit("cheap", "I am unsure") < 0 < model.reader_logit("cheap", "It is 42")

    registry = _registry()
    check = LearnedVerifierCheck(model, registry, {"cheap": -0.4, "mid": -0.4})
    prompt = PromptMessage(prompt="What is 6 x 7?")
    unsure = Answer("small", "I am unsure, 41 perhaps", "stop", 30, input_tokens=20)
    sure = Answer("small", "It is 42", "stop", 30, input_tokens=20)
    assert check.reject_reason(prompt, unsure) is not None  # p(right) ~ 0 vs p(up) 0.5
    assert check.reject_reason(prompt, sure) is None  # p(right) 0.95
    assert load_verifier(tmp_path, {"file": "verifier.json"}).reader is None  # an artifact without a reader


def test_an_artifact_with_an_older_verifier_is_refused_with_the_way_out(tmp_path: Path) -> None:
    old = _verifier().to_json()
    old["feature_names"] = old["feature_names"][:-1]  # trained before the answer reader's feature existed
    (tmp_path / "verifier.json").write_text(json.dumps(old))
    with pytest.raises(ArtifactError, match="reuse-classifier"):
        build_escalation(tmp_path, {"checks": ["verifier"], "verifier": {"file": "verifier.json"}}, _registry())
