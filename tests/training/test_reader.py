"""The answer reader: learned from which recorded answers were right, served with numpy, a verifier feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from synthetic_outcomes import LADDER_ARG

from classifier.topic import N_FEATURES
from routing.answer_features import FEATURE_NAMES
from routing.answer_reader import READER_TIERS, AnswerReader
from training.data import Ladder, load_ladder_data, load_prices
from training.reader import fit_reader, out_of_fold_reader_logits, served_reader_logits
from training.verifier_fit import answer_matrices


@pytest.fixture(scope="module")
def data(synthetic_dir: Path):
    return load_ladder_data([synthetic_dir], Ladder.parse(LADDER_ARG), load_prices(synthetic_dir / "prices.json"))


def test_reader_learns_right_answers_from_their_words(data) -> None:
    # The synthetic cheap model hedges ("not sure", "re-evaluate") on medium and hard prompts, and is
    # wrong there; its other wrong answers (hopeless prompts) read like its right ones.
    logits = out_of_fold_reader_logits(data, folds=5, seed=0)
    assert logits.shape == (data.n, len(READER_TIERS))
    hedged = np.asarray(["not sure" in r.outcomes[data.ladder.cheap].response for r in data.records])
    right = data.correct[:, 0]
    assert hedged.any() and right.any()
    assert logits[hedged, 0].max() < logits[right, 0].min()  # out of fold: from readers that never saw them
    assert roc_auc_score(right, logits[:, 0]) > 0.8
    hedge = "Hmm, I am not sure. Let me re-evaluate... However it might be something"
    reader = fit_reader(data)
    confident, hedging = reader.logits("cheap", ['{"reasoning": "Add the numbers step by step.", "answer": "7"}',
                                                 hedge])
    assert confident > 0 > hedging


def test_reader_saves_float16_and_serves_the_same_logits(data, tmp_path: Path) -> None:
    reader = fit_reader(data)
    reader.save(tmp_path)
    again = AnswerReader.load(tmp_path / AnswerReader.FILE)
    texts = [r.outcomes[data.ladder.cheap].response for r in data.records[:10]]
    assert np.allclose(reader.logits("cheap", texts), again.logits("cheap", texts), atol=1e-2)
    served = served_reader_logits(again, data)
    assert served.shape == (data.n, 2)
    assert np.allclose(served[:10, 0], again.logits("cheap", texts))
    assert served_reader_logits(None, data) is None
    with pytest.raises(ValueError, match="answer reader shapes"):
        AnswerReader(np.zeros((N_FEATURES, 3)), np.zeros(3))


def test_reader_logits_are_the_last_verifier_feature(data) -> None:
    probs = np.full((data.n, 3), 1 / 3)
    logits = np.column_stack([np.arange(data.n, dtype=float), -np.arange(data.n, dtype=float)])
    m = answer_matrices(data, probs, logits)
    column = FEATURE_NAMES.index("reader_logit")
    assert np.array_equal(m.cheap[:, column], logits[:, 0])
    assert np.array_equal(m.mid_after_cheap[:, column], logits[:, 1])
    assert np.array_equal(m.mid_alone[:, column], logits[:, 1])
    assert np.all(answer_matrices(data, probs).cheap[:, column] == 0.0)  # no reader: a neutral 0
