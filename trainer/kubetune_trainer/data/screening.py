"""The per-file rules: rows that cannot be encoded go before the labels are.

Some of the data-quality rules run on each file as soon as it is read, before the rest of
the pipeline: data.quality.missingValues (a row without a label, text pair, weight, or
chosen or rejected response), data.quality.unknownLabels (a label that is no class) and,
for training.objective dpo, data.quality.identicalPreferences (a row whose chosen response
is its rejected one). The label encoding and the
stratified validation split need every row to have a class, so these rules cannot wait for
the quality engine; their results still open its report and count in its dropped share.
Their modes are drop or fail, since a row that cannot be encoded cannot be kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data.cleaning import quality_failure
from kubetune_trainer.data.columns import as_text
from kubetune_trainer.data.labels import label_values, unknown_labels_message, unknown_mask
from kubetune_trainer.data.quality import (
    Mask,
    QualityError,
    QualityReport,
    RuleMode,
    RuleResult,
    SplitInput,
    rule_result,
)
from kubetune_trainer.data.rows import DataError, Rows, row_count


@dataclass(frozen=True)
class _Screened:
    """What one per-file rule matched in one file."""

    matched: Mask
    failure: str
    """The message of a failure (fail mode): the field, the file, counts and rows."""
    details: dict[str, npt.NDArray[Any]] = dataclasses.field(default_factory=dict)


def screen(
    rows: Rows, split: str, config: TrainingConfig, labels: Sequence[str] | None
) -> tuple[Rows, list[RuleResult]]:
    """The rows of one file that the per-file rules keep, and their results.

    data.quality.missingValues (rows without a label, text pair or weight), then, with
    `labels`, data.quality.unknownLabels (rows whose label is not a class). Both run before
    the labels are encoded and the validation split is made, since those need every row to
    have a class; their modes are drop or fail (a row that cannot be encoded cannot be kept).
    """
    spec = config.data.quality
    results: list[RuleResult] = []
    rows_in = rows.table.num_rows
    as_text(rows, config.data.text_column, "data.textColumn")  # the examples show the text
    missing = _missing_values(rows, config)
    rows = _settle(rows, split, "missingValues", spec.missing_values.mode, missing, config, results)
    if labels is not None and config.model.task == "sequence-classification":
        unknown = _unknown_values(rows, config, labels)
        mode = spec.unknown_labels.mode
        rows = _settle(rows, split, "unknownLabels", mode, unknown, config, results)
    if config.training.learns_preferences:
        identical = _identical_preferences(rows, config)
        mode = spec.identical_preferences.mode
        rows = _settle(rows, split, "identicalPreferences", mode, identical, config, results)
    report = QualityReport({split: rows_in}, {split: rows.table.num_rows}, results)
    try:
        report.refuse_excess_drops(split, spec.max_dropped_fraction, rows.origin)
    except QualityError as error:
        raise DataError(quality_failure(error)) from None
    if not rows.table.num_rows:
        message = report.to_status()["message"]
        raise DataError(f"data.quality: no row of {rows.origin} is left ({message})")
    return rows, results


def settle(
    rows: Rows,
    split: str,
    rule: str,
    mode: RuleMode,
    matched: Mask,
    failure: str,
    config: TrainingConfig,
    results: list[RuleResult],
) -> Rows:
    """A per-file rule run outside `screen` (as a file is read): fail with `failure` in
    fail mode, else record what `rule` matched in `results` and drop those rows."""
    return _settle(rows, split, rule, mode, _Screened(matched, failure), config, results)


def _settle(
    rows: Rows,
    split: str,
    rule: str,
    mode: RuleMode,
    found: _Screened,
    config: TrainingConfig,
    results: list[RuleResult],
) -> Rows:
    """Fail with the rule's message, or record what it matched and drop those rows."""
    if mode == "fail" and found.matched.any():
        raise DataError(found.failure)
    data = config.data
    label = data.label_column if config.model.task == "sequence-classification" else None
    result = rule_result(
        rule,
        split,
        mode,
        found.matched,
        SplitInput(rows.table, rows.positions, origin=rows.origin, files=rows.files),
        text_column=data.text_column,
        label_column=label,
        limit=data.quality.examples_per_rule,
        details=found.details,
    )
    results.append(result)
    if mode != "drop" or not result.matched:
        return rows
    return rows.take(np.flatnonzero(~found.matched))


def _needed_values(rows: Rows, config: TrainingConfig) -> list[tuple[str, str, str]]:
    """(field, column, what) of every value a row must have besides its text."""
    data = config.data
    classifying = config.model.task == "sequence-classification"
    needed = [("data.labelColumn", data.label_column, "label")] if classifying else []
    if data.text_pair_column is not None:
        needed.append(("data.textPairColumn", data.text_pair_column, "text"))
    if config.training.learns_preferences:
        needed.append(("data.chosenColumn", data.chosen_column, "chosen response"))
        needed.append(("data.rejectedColumn", data.rejected_column, "rejected response"))
    weights = data.weight_column
    if classifying and weights is not None and weights in rows.table.column_names:
        needed.append(("data.weightColumn", weights, "weight"))
    return needed


def _missing_values(rows: Rows, config: TrainingConfig) -> _Screened:
    """Rows with a null, empty or blank cell in a column the data section needs."""
    matched = np.zeros(rows.table.num_rows, dtype=np.bool_)
    missing = np.zeros(rows.table.num_rows, dtype=np.dtypes.StringDType())
    problems = []
    for field, column, what in _needed_values(rows, config):
        blank = _blank(rows, column, field)
        if blank.any():
            shown = rows.row_numbers(pa.chunked_array([blank]))
            count = row_count(int(blank.sum()))
            problems.append(
                f"{field}: {rows.origin} has {count} with no {what} in column {column!r} ({shown})"
            )
            separator = np.where(missing == "", "", ", ").astype(missing.dtype)
            named = np.strings.add(np.strings.add(missing, separator), column)
            missing = np.where(blank, named, missing)
            matched |= blank
    failure = "; ".join(problems) + (
        "; data.quality.missingValues.mode is fail: fill them in, or set it to drop to leave "
        "those rows out"
    )
    return _Screened(matched, failure, {"missing": missing})


def _blank(rows: Rows, column: str, field: str) -> Mask:
    """Rows whose cell in `column` is null, empty or only whitespace."""
    values = as_text(rows, column, field)
    blank = pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_trim_whitespace(values), ""))
    return np.asarray(pc.fill_null(blank, True).to_numpy(zero_copy_only=False), dtype=np.bool_)


def _identical_preferences(rows: Rows, config: TrainingConfig) -> _Screened:
    """Rows whose chosen and rejected responses are the same text (spaces around ignored)."""
    data = config.data
    chosen = pc.utf8_trim_whitespace(as_text(rows, data.chosen_column, "data.chosenColumn"))
    rejected = pc.utf8_trim_whitespace(as_text(rows, data.rejected_column, "data.rejectedColumn"))
    same = pc.fill_null(pc.equal(chosen, rejected), False)
    matched = np.asarray(same.to_numpy(zero_copy_only=False), dtype=np.bool_)
    count = row_count(int(matched.sum()))
    failure = (
        f"data.quality.identicalPreferences: {rows.origin} has {count} whose "
        f"{data.chosen_column!r} response equals its {data.rejected_column!r} one "
        f"({rows.row_numbers(same)}); such a row prefers nothing. "
        "data.quality.identicalPreferences.mode is fail: fix them, or set it to drop to "
        "leave those rows out"
    )
    return _Screened(matched, failure)


def _unknown_values(rows: Rows, config: TrainingConfig, labels: Sequence[str]) -> _Screened:
    declared = config.model.labels is not None
    values = label_values(rows, config.data.label_column)
    unknown = unknown_mask(values, labels, declared=declared)
    failure = (
        unknown_labels_message(rows, values, unknown, labels, declared=declared)
        if unknown.any()
        else ""
    )
    return _Screened(unknown, failure)


def rows_read(train: Rows, validation: Rows, screened: Sequence[RuleResult]) -> dict[str, int]:
    """Rows read per split: those left, and those the per-file rules dropped before."""

    def read(rows: Rows, split: str) -> int:
        dropped = sum(r.matched for r in screened if r.split == split and r.mode == "drop")
        return int(rows.table.num_rows) + dropped

    return {"train_in": read(train, "train"), "validation_in": read(validation, "validation")}
