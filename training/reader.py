"""Fitting the answer reader (``routing.answer_reader``) and its out-of-fold logits for the verifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from classifier.topic import N_FEATURES
from routing.answer_reader import READER_TIERS, AnswerReader
from training.data import LadderData, kfold_by_source
from training.topic import text_matrix
from training.verifier_fit import fit_logistic_head

READER_C = 1.0  # L2 strength on L2-normalised rows; the verifier's heads recalibrate the logit anyway


def reader_responses(data: LadderData) -> list[list[str]]:
    """Per reader tier, the recorded responses of that tier's model."""
    return [[r.outcomes[model].response for r in data.records] for model in data.ladder.models[:len(READER_TIERS)]]


def fit_reader(data: LadderData, rows: np.ndarray | None = None,
               responses: Sequence[Sequence[str]] | None = None) -> AnswerReader:
    rows = np.arange(data.n) if rows is None else rows
    responses = reader_responses(data) if responses is None else responses
    weights, bias = np.zeros((N_FEATURES, len(READER_TIERS))), np.zeros(len(READER_TIERS))
    for k in range(len(READER_TIERS)):
        head = fit_logistic_head(text_matrix([responses[k][i] for i in rows]), data.correct[rows, k].astype(int),
                                 READER_C, max_iter=2000)
        weights[:, k], bias[k] = head.coef, head.intercept
    return AnswerReader(weights, bias)


def out_of_fold_reader_logits(data: LadderData, folds: int, seed: int,
                              progress: Callable[..., object] | None = None) -> np.ndarray:
    """(n, 2) log-odds of the cheap and mid answers being right, each from a reader that did not see that
    prompt; the verifier is fitted on these, as the served verifier meets the served reader's logits
    on prompts it never saw."""
    responses = reader_responses(data)
    fold = kfold_by_source(data.sources, folds, seed)
    logits = np.zeros((data.n, len(READER_TIERS)))
    steps = range(folds) if progress is None else progress(range(folds), desc="answer reader", unit="fold")
    for k in steps:
        train_rows, test_rows = np.where(fold != k)[0], np.where(fold == k)[0]
        reader = fit_reader(data, train_rows, responses)
        for t, tier in enumerate(READER_TIERS):
            logits[test_rows, t] = reader.logits(tier, [responses[t][i] for i in test_rows])
    return logits


def served_reader_logits(reader: AnswerReader | None, data: LadderData) -> np.ndarray | None:
    """The served reader's logits on these records (evaluation), or None without a reader."""
    if reader is None:
        return None
    responses = reader_responses(data)
    return np.column_stack([reader.logits(tier, responses[t]) for t, tier in enumerate(READER_TIERS)])
