"""Fitting the topic model (``classifier.topic``) on records that carry a category, and its
out-of-fold topics for calibration."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from classifier.topic import N_FEATURES, TopicModel, feature_rows
from training.data import kfold_by_source

MIN_TOPIC_SHARE = 0.9  # records that must carry a category for the topic model to be learned


def text_matrix(texts: Sequence[str]) -> sp.csr_matrix:
    """Hashed word and word-pair rows (``classifier.topic.feature_rows``) as a sparse matrix."""
    indices, values = feature_rows(texts)
    indptr = np.cumsum([0] + [len(i) for i in indices])
    return sp.csr_matrix((np.concatenate(values), np.concatenate(indices), indptr), shape=(len(texts), N_FEATURES))


def fit_topic_model(texts: Sequence[str], topics: Sequence[str], c: float = 10.0) -> TopicModel:
    model = LogisticRegression(C=c, max_iter=2000).fit(text_matrix(texts), np.asarray(topics))
    classes = [str(t) for t in model.classes_]
    coef = model.coef_ if len(classes) > 2 else np.vstack([-model.coef_[0], model.coef_[0]])
    bias = model.intercept_ if len(classes) > 2 else np.array([-model.intercept_[0], model.intercept_[0]])
    return TopicModel(classes, coef.T, bias)


def out_of_fold_topics(texts: Sequence[str], topics: Sequence[str], folds: int, seed: int) -> list[str]:
    """Each prompt's topic as predicted by a model that did not see it (stratified by topic)."""
    fold = kfold_by_source(list(topics), folds, seed)
    out = [""] * len(texts)
    for k in range(folds):
        train_rows, test_rows = np.where(fold != k)[0], np.where(fold == k)[0]
        model = fit_topic_model([texts[i] for i in train_rows], [topics[i] for i in train_rows])
        for i, topic in zip(test_rows, model.predict([texts[i] for i in test_rows]), strict=True):
            out[i] = topic
    return out


def record_topics(records: Sequence[object]) -> list[str] | None:
    """The records' categories when (nearly) all have one and there are at least two; else None."""
    topics = [getattr(r, "category", None) for r in records]
    present = [t for t in topics if t]
    if len(present) < MIN_TOPIC_SHARE * len(records) or len(set(present)) < 2:
        return None
    return [t or "unknown" for t in topics]
