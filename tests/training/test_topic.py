"""The topic model: learned from categorised records, served with numpy, refining the prompt kind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from classifier.topic import TopicModel
from core.messages import Prediction, PromptMessage, Tier
from core.registry import Prices
from routing.cascade_policy import CascadePolicy
from routing.prompt_kind import DEFAULT_KIND, routing_kind, settings_for_kind
from training.calibrate import kind_groups
from training.data import Ladder, replay_registry
from training.topic import fit_topic_model, out_of_fold_topics, record_topics

REPO = Path(__file__).resolve().parents[2]
OPTIONS = "\nOptions:\nA. one\nB. two\nC. three"
WORDS = {
    "chemistry": ["molecule", "bond", "acid", "reaction", "ion", "electron", "solvent"],
    "history": ["empire", "treaty", "war", "king", "revolution", "century", "dynasty"],
}


def _prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, topics = [], []
    for i in range(n):
        topic = "chemistry" if i % 2 else "history"
        words = rng.choice(WORDS[topic], size=6)
        texts.append("Which statement about the " + " ".join(words) + " is true?" + OPTIONS)
        topics.append(topic)
    return texts, topics


def test_topic_model_learns_saves_and_serves_without_sklearn(tmp_path: Path) -> None:
    texts, topics = _prompts(80, seed=1)
    model = fit_topic_model(texts, topics)
    model.save(tmp_path)
    loaded = TopicModel.load(tmp_path)
    assert loaded is not None and loaded.topics == ["chemistry", "history"]
    test_texts, test_topics = _prompts(20, seed=2)
    assert loaded.predict(test_texts) == test_topics
    assert TopicModel.load(tmp_path / "missing") is None
    # Out-of-fold topics: every prompt scored by a model that did not see it, still right here.
    assert out_of_fold_topics(texts, topics, folds=4, seed=0) == topics
    # Serving needs numpy only.
    code = ("import sys; from classifier.topic import TopicModel; "
            f"m = TopicModel.load(__import__('pathlib').Path({str(tmp_path)!r})); m.predict(['an acid bond']); "
            "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_topics_refine_the_kind_and_settings_fall_back_in_order() -> None:
    prompt = "Which acid forms this bond?" + OPTIONS
    assert routing_kind(prompt, "chemistry") == "multiple_choice/chemistry"
    assert routing_kind(prompt, None) == "multiple_choice"
    by_kind = {"multiple_choice/chemistry": "own", "multiple_choice": "surface"}
    assert settings_for_kind(by_kind, "multiple_choice/chemistry", "default") == "own"
    assert settings_for_kind(by_kind, "multiple_choice/history", "default") == "surface"
    assert settings_for_kind(by_kind, "code/history", "default") == "default"

    registry = replay_registry(Ladder("small", "mid", "big"), {m: Prices(input=1, output=1) for m in ("small", "mid", "big")})
    policy = CascadePolicy(by_kind={"multiple_choice/chemistry": {"skip_cheap_if_simple_below": 1.01},
                                    "multiple_choice": {"expensive_if_complex_at_least": 0.0}})
    prediction = Prediction(label="simple", confidence=0.5, probabilities={"simple": 0.5, "medium": 0.3, "complex": 0.2},
                            topic="chemistry")
    decision = policy.decide(PromptMessage(prompt=prompt), prediction, registry, "test")
    assert (decision.tier, decision.prompt_kind, decision.topic) == (Tier.mid, "multiple_choice/chemistry", "chemistry")
    history = policy.decide(PromptMessage(prompt=prompt), prediction.model_copy(update={"topic": "history"}),
                            registry, "test")
    assert (history.tier, history.prompt_kind) == (Tier.expensive, "multiple_choice/history")


def test_calibration_groups_use_topics_then_surface_kind_then_default() -> None:
    class Record:
        def __init__(self, prompt: str, category: str | None) -> None:
            self.prompt, self.category = prompt, category

    records = ([Record("q" + OPTIONS, "chemistry")] * 5 + [Record("q" + OPTIONS, "history")] * 2
               + [Record("How are you?", "chemistry")] * 1)
    topics = record_topics(records)
    assert topics == ["chemistry"] * 5 + ["history"] * 2 + ["chemistry"]
    groups = kind_groups(records, min_prompts=3, topics=topics)
    assert {k: list(v) for k, v in groups.items()} == {
        "multiple_choice/chemistry": [0, 1, 2, 3, 4],  # enough of its own
        DEFAULT_KIND: [5, 6, 7],  # history (2) and the general prompt (1): too few, even by surface kind
    }
    assert record_topics([Record("x", None)] * 3) is None  # no categories: no topic model


def test_topic_fits_hash_once_and_run_side_by_side_without_changing_a_fit() -> None:
    from training.data import kfold_by_source
    from training.topic import fit_topic_models

    texts, topics = _prompts(60, seed=3)
    texts = [t + (" war acid" if i % 7 == 0 else "") for i, t in enumerate(texts)]  # some wrong-looking prompts
    # Each fold fitted on its own texts, one at a time: the reference the shared matrix must reproduce.
    fold = kfold_by_source(topics, 3, 5)
    expected = [""] * len(texts)
    for k in range(3):
        model = fit_topic_model([t for t, f in zip(texts, fold, strict=True) if f != k],
                                [t for t, f in zip(topics, fold, strict=True) if f != k])
        for i, topic in zip(np.where(fold == k)[0], model.predict([texts[i] for i in np.where(fold == k)[0]]),
                            strict=True):
            expected[i] = topic
    alone = fit_topic_model(texts, topics)
    for jobs in (1, 2):
        oof, full = fit_topic_models(texts, topics, folds=3, seed=5, n_jobs=jobs)
        assert oof == expected
        assert full.topics == alone.topics
        assert full.weights.shape == alone.weights.shape
        if jobs == 1:  # the same computation in the same process: the same bits
            assert np.array_equal(full.weights, alone.weights) and np.array_equal(full.bias, alone.bias)
        else:  # a worker's BLAS may sum in another order
            assert np.allclose(full.weights, alone.weights, rtol=1e-5, atol=1e-6)
            assert np.allclose(full.bias, alone.bias, rtol=1e-5, atol=1e-6)
        assert full.predict(texts) == alone.predict(texts)
    assert out_of_fold_topics(texts, topics, folds=3, seed=5, n_jobs=2) == expected
