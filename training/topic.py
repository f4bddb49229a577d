"""Fitting the topic model (``classifier.topic``) on records that carry a category, and its
out-of-fold topics for calibration."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from classifier.topic import N_FEATURES, TopicModel, feature_rows
from training.data import kfold_by_source

MIN_TOPIC_SHARE = 0.9  # records that must carry a category for the topic model to be learned
# The fits are independent and mostly single-threaded (sparse products and L-BFGS), so they run side by side
# on the two cores training is sized for; a fit in a worker differs from one run alone in the last bits at most
# (BLAS thread counts), its predictions not at all.
TOPIC_FIT_JOBS = 2


def text_matrix(texts: Sequence[str]) -> sp.csr_matrix:
    """Hashed word and word-pair rows (``classifier.topic.feature_rows``) as a sparse matrix."""
    indices, values = feature_rows(texts)
    indptr = np.cumsum([0] + [len(i) for i in indices])
    return sp.csr_matrix((np.concatenate(values), np.concatenate(indices), indptr), shape=(len(texts), N_FEATURES))


def _fit_matrix(matrix: sp.csr_matrix, topics: np.ndarray, c: float) -> TopicModel:
    model = LogisticRegression(C=c, max_iter=2000).fit(matrix, topics)
    classes = [str(t) for t in model.classes_]
    coef = model.coef_ if len(classes) > 2 else np.vstack([-model.coef_[0], model.coef_[0]])
    bias = model.intercept_ if len(classes) > 2 else np.array([-model.intercept_[0], model.intercept_[0]])
    return TopicModel(classes, coef.T, bias)


def fit_topic_model(texts: Sequence[str], topics: Sequence[str], c: float = 10.0) -> TopicModel:
    return _fit_matrix(text_matrix(texts), np.asarray(topics), c)


def fit_topic_models(texts: Sequence[str], topics: Sequence[str], folds: int, seed: int, c: float = 10.0,
                     n_jobs: int = TOPIC_FIT_JOBS) -> tuple[list[str], TopicModel]:
    """Out-of-fold topics (``out_of_fold_topics``) and the model fitted on every prompt, for serving."""
    out, full = _topic_fits(texts, topics, folds, seed, c, n_jobs, with_full_model=True)
    assert full is not None
    return out, full


def out_of_fold_topics(texts: Sequence[str], topics: Sequence[str], folds: int, seed: int,
                       n_jobs: int = TOPIC_FIT_JOBS) -> list[str]:
    """Each prompt's topic as predicted by a model that did not see it (stratified by topic)."""
    return _topic_fits(texts, topics, folds, seed, 10.0, n_jobs, with_full_model=False)[0]


def _topic_fits(texts: Sequence[str], topics: Sequence[str], folds: int, seed: int, c: float, n_jobs: int,
                with_full_model: bool) -> tuple[list[str], TopicModel | None]:
    """The texts are hashed once and each fit takes its rows of that matrix (the very rows ``text_matrix``
    builds from the fold's texts); the fits run ``n_jobs`` at a time."""
    fold = kfold_by_source(list(topics), folds, seed)
    matrix, labels = text_matrix(texts), np.asarray(topics)
    row_sets = [np.where(fold != k)[0] for k in range(folds)]
    if with_full_model:
        row_sets.append(np.arange(len(texts)))
    jobs = max(1, min(n_jobs, os.cpu_count() or 1, len(row_sets)))
    if jobs == 1:
        models = [_fit_matrix(matrix[rows], labels[rows], c) for rows in row_sets]
    else:
        # Forked workers (no start-up imports, no resource tracker left behind), all gone when the block ends.
        with ProcessPoolExecutor(jobs, mp_context=get_context("fork")) as pool:
            models = list(pool.map(_fit_matrix, [matrix[rows] for rows in row_sets],
                                   [labels[rows] for rows in row_sets], [c] * len(row_sets)))
    out = [""] * len(texts)
    for k in range(folds):
        test_rows = np.where(fold == k)[0]
        # Predicted from the texts, as served (``TopicModel.predict``).
        for i, topic in zip(test_rows, models[k].predict([texts[i] for i in test_rows]), strict=True):
            out[i] = topic
    return out, (models[-1] if with_full_model else None)


def record_topics(records: Sequence[object]) -> list[str] | None:
    """The records' categories when (nearly) all have one and there are at least two; else None."""
    topics = [getattr(r, "category", None) for r in records]
    present = [t for t in topics if t]
    if len(present) < MIN_TOPIC_SHARE * len(records) or len(set(present)) < 2:
        return None
    return [t or "unknown" for t in topics]
