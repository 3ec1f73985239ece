"""Class names and class ids: what the label column means.

A label column holds text ("positive"), numbers (0, 1) or a mix with stray spaces, and the
classes come from model.labels when declared, else from the training rows. This module
turns the column into class ids (the position of each label in the class names), reads
integer labels as class ids where model.labels declares names they cannot be, and names
the labels, counts and rows that fit no class. Class names taken from the rows must be
safe to print (no control or bidirectional-override characters): they reach logs, the
status and the reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from kubetune_trainer.config import TrainingConfig, unprintable_character
from kubetune_trainer.data.columns import as_text
from kubetune_trainer.data.quality import Mask
from kubetune_trainer.data.rows import SHOWN, DataError, Rows, listing, row_count

_INTEGER_TEXT = r"^-?[0-9]+$"
_CLASS_ID_TEXT = r"^[0-9]{1,9}$"


def label_values(rows: Rows, column: str) -> pa.ChunkedArray:
    """The label column as text without surrounding spaces; null where a row has no label."""
    values = pc.utf8_trim_whitespace(as_text(rows, column, "data.labelColumn"))
    labelled: pa.ChunkedArray = pc.if_else(
        pc.equal(values, ""), pa.scalar(None, pa.string()), values
    )
    return labelled


def _all_match(values: pa.ChunkedArray | pa.Array, pattern: str) -> bool:
    return bool(pc.all(pc.match_substring_regex(values, pattern)).as_py())


def labels_of(rows: Rows, column: str) -> list[str]:
    """The class names when model.labels is left out: the distinct labels, sorted.

    Integer labels sort as numbers, so that "10" comes after "9". Rows without a label
    (the missingValues rule has them) name no class.
    """
    values = label_values(rows, column)
    distinct = pc.unique(values).drop_null()
    names: list[str] = distinct.to_pylist()
    _check_printable(rows, values, names)
    _refuse_one_class(rows, names)
    return sorted(names, key=int) if _all_match(distinct, _INTEGER_TEXT) else sorted(names)


def check_two_classes(rows: Rows, labels: Sequence[str]) -> None:
    """Refuse training rows of fewer than two classes, as labels_of does before model.labels
    is known to be left out: declaring more classes leaves nothing to tell apart either."""
    _refuse_one_class(rows, [labels[i] for i in np.unique(rows.label_ids)])


def _refuse_one_class(rows: Rows, present: Sequence[str]) -> None:
    if len(present) < 2:
        found = f"the label {present[0]!r}" if present else "no label"
        raise DataError(
            f"data.labelColumn: every row of {rows.origin} has {found}; "
            "a classifier needs rows of at least two classes"
        )


def classes_without_rows(
    labels: Sequence[str], counts: npt.NDArray[np.int64], field: str
) -> list[str]:
    """A warning naming the classes no training row has (`field` declared them): the model
    is never shown them, so it never predicts them."""
    missing = [name for name, count in zip(labels, counts, strict=True) if count == 0]
    if not missing:
        return []
    them = "it" if len(missing) == 1 else "them"
    return [
        f"{field}: no training row has the class {listing([repr(m) for m in missing])}; "
        f"the model will never predict {them}"
    ]


def _check_printable(rows: Rows, values: pa.ChunkedArray, names: list[str]) -> None:
    """Refuse class names with control or bidirectional-override characters: a class name
    is printed in logs, the status and the reports, where it could forge or reorder text."""
    unprintable = [name for name in names if unprintable_character(name) is not None]
    if not unprintable:
        return
    matched = pc.is_in(values, value_set=pa.array(unprintable, pa.string()))
    found = unprintable_character(unprintable[0])
    raise DataError(
        f"data.labelColumn: {rows.origin} has {row_count(pc.sum(matched).as_py())} whose "
        f"label holds {found}: {listing([repr(name) for name in unprintable], SHOWN)}, in "
        f"{rows.row_numbers(matched)}; a class name must not contain control or "
        "bidirectional-override characters: fix those rows, or declare the classes in "
        "model.labels (other labels are then data.quality.unknownLabels)"
    )


def encode_labels(rows: Rows, labels: Sequence[str], column: str, *, declared: bool) -> Rows:
    """Attach each row's class id: the position of its label in `labels`.

    With declared labels (model.labels), a column of integers that names none of them is
    read as class ids when every value is a valid id. The per-file rules (`screening.screen`)
    have dropped or refused the rows without a label or with an unknown one by now.
    """
    values = label_values(rows, column)
    unknown = unknown_mask(values, labels, declared=declared)
    if unknown.any():
        raise DataError(unknown_labels_message(rows, values, unknown, labels, declared=declared))
    ids = pc.index_in(values, value_set=pa.array(labels, pa.string()))
    if pc.any(pc.is_null(ids)).as_py():  # every label is a class id (unknown_mask)
        ids = pc.cast(values, pa.int64())
    return replace(rows, label_ids=ids.to_numpy().astype(np.int64))


def unknown_mask(values: pa.ChunkedArray, labels: Sequence[str], *, declared: bool) -> Mask:
    """Rows whose label is not a class (rows without a label are not judged here)."""
    unknown = pc.and_(pc.is_valid(values), pc.is_null(pc.index_in(values, pa.array(labels))))
    if declared and _reads_as_class_ids(values, unknown, len(labels)):
        return np.zeros(len(values), dtype=np.bool_)
    return np.asarray(unknown.to_numpy(zero_copy_only=False), dtype=np.bool_)


def _reads_as_class_ids(values: pa.ChunkedArray, unknown: pa.ChunkedArray, classes: int) -> bool:
    labelled = values.drop_null()
    if not len(labelled) or not pc.all(unknown.filter(pc.is_valid(values))).as_py():
        return False
    if not _all_match(labelled, _CLASS_ID_TEXT):
        return False
    return bool(pc.max(pc.cast(labelled, pa.int64())).as_py() < classes)


def unknown_labels_message(
    rows: Rows,
    values: pa.ChunkedArray,
    unknown: Mask,
    labels: Sequence[str],
    *,
    declared: bool,
) -> str:
    """The DataError message for rows whose label is no class: the labels, counts and rows."""
    matched = pa.chunked_array([unknown])
    tally = pc.value_counts(values.filter(matched))
    found = zip(tally.field("values").to_pylist(), tally.field("counts").to_pylist(), strict=True)
    ranked = sorted(found, key=lambda pair: (-pair[1], pair[0]))
    shown = listing([f"{value!r} ({row_count(count)})" for value, count in ranked], SHOWN)
    count = sum(count for _, count in ranked)
    if declared:
        known, fix = "model.labels", "fix those rows or add the labels to model.labels"
    else:
        known, fix = "the training rows", "fix those rows or add training rows with those labels"
    return (
        f"data.labelColumn: {rows.origin} has {row_count(count)} with labels that are not in "
        f"{known} ({listing(list(labels))}): {shown}, in {rows.row_numbers(matched)}; {fix}, "
        "or set data.quality.unknownLabels.mode to drop to leave them out"
    )


def class_names(rows: Rows, config: TrainingConfig) -> npt.NDArray[np.object_]:
    """Class name per class id: model.labels, else the labels the training rows carry."""
    if config.model.labels is not None:
        return np.asarray(config.model.labels, dtype=object)
    ids, first = np.unique(rows.label_ids, return_index=True)
    names = np.full(int(ids.max(initial=0)) + 1, None, dtype=object)
    values = label_values(rows, config.data.label_column)
    names[ids] = values.take(pa.array(first)).to_pylist()
    return names


def check_metric_computable(
    config: TrainingConfig, labels: Sequence[str], validation: Rows
) -> None:
    """Refuse rocAuc (naming evaluation.metric) where it is never defined: more than two
    classes, or validation rows of one class (cross-validation's folds are its own)."""
    if config.primary_metric() != "rocAuc" or config.evaluation.cross_validation is not None:
        return
    if len(labels) != 2:
        raise DataError(
            f"evaluation.metric: rocAuc is binary and there are {len(labels)} classes; "
            "pick another metric"
        )
    present = np.unique(validation.label_ids).tolist()
    if len(present) == 1:
        (only,) = present
        raise DataError(
            f"evaluation.metric: rocAuc needs validation rows of both classes, and every "
            f"validation row is {labels[only]}; pick another metric or add "
            f"{labels[1 - only]} rows"
        )
