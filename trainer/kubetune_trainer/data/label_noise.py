"""Suspected label errors: confident learning on out-of-fold probabilities of a cheap model.

A mislabeled row teaches the model the wrong answer and, in the validation rows, marks a
right answer wrong. Confident learning (Northcutt et al. 2021, the `cleanlab` package)
finds such rows from a model's predicted class probabilities: a row is suspect when the
model is confidently sure of another class, measured against each class's own typical
confidence. The probabilities must be out-of-fold (each row predicted by a model that
never saw it), or the model simply learns the wrong labels back.

The model is deliberately cheap and independent of the network being fine-tuned: TF-IDF
of word 1- and 2-grams (sublinear term frequencies, a bounded vocabulary) and a logistic
regression, fitted fold by fold (the vectoriser too, so no fold sees another's words). It
runs on CPU in seconds for tens of thousands of rows and needs nothing downloaded.

This module returns what it found for the rows it is given and decides nothing: the
rules engine (quality.py, which stays free of scikit-learn and cleanlab) calls it through
data.py on the training rows the other rules keep, and drops, flags or fails as
data.quality.labelNoise.mode says. It never raises for the user's data: when the rows
cannot support the check (one class, a class with a single row, no words at all) it
finds nothing and says why in `note`; with fewer rows in a class than folds, it lowers
the folds to the smallest class's count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cleanlab.filter import find_label_issues
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline

MAX_FEATURES = 50_000
"""Vocabulary bound of the TF-IDF model (the most frequent 1- and 2-grams)."""
MIN_FOLDS = 2


@dataclass(frozen=True)
class Suspects:
    """The rows whose given label the model doubts, and what it suggests instead."""

    matched: npt.NDArray[np.bool_]
    """Per row given: a suspected label error."""
    suggested: npt.NDArray[np.int64]
    """Per row: the class id the model finds most likely (-1 where the check did not run)."""
    probability: npt.NDArray[np.float64]
    """Per row: the model's probability of the suggested class (NaN where it did not run)."""
    note: str
    """How the check ran (the folds used) or why it did not."""


def find_suspects(
    texts: Sequence[str], labels: npt.NDArray[np.int64], *, folds: int, seed: int
) -> Suspects:
    """Suspected label errors among `texts` with class ids `labels` (any ids, not only 0..K-1).

    `folds` cross-validation folds (stratified, shuffled with `seed`) give every row its
    out-of-fold class probabilities; cleanlab's find_label_issues picks the suspects.
    """
    classes, dense = np.unique(labels, return_inverse=True)
    counts = np.bincount(dense, minlength=len(classes))
    reason = _why_not(classes, counts)
    if reason:
        return _nothing(len(labels), reason)
    used = min(folds, int(counts.min()))
    try:
        probabilities = _out_of_fold_probabilities(texts, dense, used, seed)
    except ValueError as error:  # e.g. no row has a word the vectoriser keeps
        return _nothing(len(labels), f"skipped: the texts give the model nothing ({error})")
    issues = find_label_issues(dense, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    best = probabilities.argmax(axis=1)
    return Suspects(
        matched=np.asarray(issues, dtype=np.bool_),
        suggested=classes[best].astype(np.int64),
        probability=probabilities[np.arange(len(best)), best].astype(np.float64),
        note=_folds_note(folds, used, counts),
    )


def _why_not(classes: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]) -> str:
    if len(classes) < 2:
        return "skipped: the training rows hold fewer than two classes"
    if counts.min() < MIN_FOLDS:
        return (
            f"skipped: a class has {int(counts.min())} training row; out-of-fold predictions "
            f"need at least {MIN_FOLDS} rows of every class"
        )
    return ""


def _folds_note(asked: int, used: int, counts: npt.NDArray[np.int64]) -> str:
    if used == asked:
        return f"{used} folds"
    return f"{used} folds, not {asked}: the smallest class has {int(counts.min())} rows"


def _out_of_fold_probabilities(
    texts: Sequence[str], labels: npt.NDArray[np.int64], folds: int, seed: int
) -> npt.NDArray[np.float64]:
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=MAX_FEATURES),
        LogisticRegression(max_iter=1000),
    )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(
        model, list(texts), labels, cv=splitter, method="predict_proba"
    )
    return np.asarray(probabilities, dtype=np.float64)


def _nothing(rows: int, note: str) -> Suspects:
    return Suspects(
        matched=np.zeros(rows, dtype=np.bool_),
        suggested=np.full(rows, -1, dtype=np.int64),
        probability=np.full(rows, np.nan),
        note=note,
    )
