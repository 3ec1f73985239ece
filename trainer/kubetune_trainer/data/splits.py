"""Splitting rows: the held-out validation split and the cross-validation folds.

Both are stratified by class, so a rare class appears on each side, and both are seeded,
so a restarted pod or a second fold run sees the same rows. A class too small to split
fails with the rows per class and what to change, not with scikit-learn's ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from kubetune_trainer.data.rows import DataError, Rows, listing


def split_off_validation(
    train: Rows, labels: Sequence[str], fraction: float, seed: int
) -> tuple[Rows, Rows]:
    """The training rows, and the stratified validation rows held out of them."""
    names = np.asarray(labels)[train.label_ids]
    kept, held_out = stratified_split(names, fraction, seed)
    return train.take(kept), train.take(held_out)


def _class_sizes(labels: npt.NDArray[Any]) -> tuple[list[str], list[int]]:
    values, counts = np.unique(labels, return_counts=True)
    return [str(value) for value in values], [int(count) for count in counts]


def _per_class(classes: list[str], counts: list[int]) -> str:
    return listing([f"{name}: {count}" for name, count in zip(classes, counts, strict=True)])


def stratified_split(
    labels: npt.NDArray[Any], fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices (kept, held out), holding out `fraction` of the rows of every class.

    Both are sorted, so each split keeps the rows in their file order.
    """
    classes, counts = _class_sizes(labels)
    held_out = math.ceil(fraction * len(labels))
    if min(counts) < 2:
        raise DataError(
            "data.validationSplit: a stratified validation split needs at least 2 rows of "
            f"every class (rows per class: {_per_class(classes, counts)}); add rows, or give "
            "data.validation"
        )
    if held_out < len(classes) or len(labels) - held_out < len(classes):
        raise DataError(
            f"data.validationSplit: {fraction} of {len(labels)} rows holds out {held_out}, but "
            f"each side needs a row of each of the {len(classes)} classes; change "
            "data.validationSplit, add rows, or give data.validation"
        )
    kept, held = train_test_split(
        np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
    )
    return np.sort(kept).astype(np.int64), np.sort(held).astype(np.int64)


def kfold_splits(
    labels: npt.NDArray[Any], folds: int, stratified: bool, seed: int
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """(training, validation) row indices of each of `folds` folds, shuffled with `seed`."""
    classes, counts = _class_sizes(labels)
    if stratified and min(counts) < folds:
        raise DataError(
            f"evaluation.crossValidation.folds: {folds} stratified folds need at least {folds} "
            f"rows of every class (rows per class: {_per_class(classes, counts)}); lower folds, "
            "add rows, or set stratified: false"
        )
    if len(labels) < folds:
        raise DataError(
            f"evaluation.crossValidation.folds: {folds} folds need at least {folds} rows; "
            f"there are {len(labels)}"
        )
    splitter = (StratifiedKFold if stratified else KFold)(
        n_splits=folds, shuffle=True, random_state=seed
    )
    return [
        (train.astype(np.int64), held.astype(np.int64))
        for train, held in splitter.split(np.zeros(len(labels)), labels)
    ]
