"""The columns each file must have, and reading one as text.

The manifest names the columns (data.textColumn, data.labelColumn, ...); a file that lacks
one, or holds something other than text in a text column, fails with the field that named
it, the file and the columns it does have. Which columns a file needs depends on its role:
the sensitive columns are needed where the bias audit reads them, in bias.auditData when it
is set, else in the validation rows (the validation file, or a training file that a
validation split is held out of); a validation file needs no weights.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from kubetune_trainer.config import DataSpec
from kubetune_trainer.data.rows import DataError, Rows, row_count


def as_text(rows: Rows, column: str, field: str) -> pa.ChunkedArray:
    """`column` cast to text; a DataError naming `field` when it holds lists or structs."""
    values = rows.table.column(column)
    try:
        return pc.cast(values, pa.string())
    except pa.ArrowException:
        raise DataError(
            f"{field}: column {column!r} of {rows.origin} holds {values.type} values, not text"
        ) from None


def required_texts(rows: Rows, column: str, field: str) -> pa.ChunkedArray:
    """`column` as text, refusing rows without one."""
    values = as_text(rows, column, field)
    _refuse_missing(rows, pc.is_null(values), field, f"no text in column {column!r}")
    return values


def _refuse_missing(rows: Rows, missing: pa.ChunkedArray, field: str, what: str) -> None:
    """A DataError naming how many rows, and which, lack a value."""
    count = pc.sum(missing).as_py() or 0
    if count:
        raise DataError(
            f"{field}: {rows.origin} has {row_count(count)} with {what} "
            f"({rows.row_numbers(missing)})"
        )


def check_columns(rows: Rows, roles: list[tuple[str, str]]) -> None:
    """Refuse a file that lacks one of the (field, column) pairs in `roles`."""
    names: list[str] = rows.table.column_names
    for field, column in roles:
        if column not in names:
            raise DataError(
                f"{field}: column {column!r} is not in {rows.origin} (columns: {', '.join(names)})"
            )


def _model_columns(data: DataSpec) -> list[tuple[str, str]]:
    roles = [("data.textColumn", data.text_column), ("data.labelColumn", data.label_column)]
    if data.text_pair_column is not None:
        roles.append(("data.textPairColumn", data.text_pair_column))
    return roles


def training_file_columns(
    data: DataSpec, *, holds_validation: bool, audited: bool
) -> list[tuple[str, str]]:
    """The columns of a training file (and of one a validation split is held out of, whose
    validation rows are `audited`: validation_file_columns)."""
    roles = _model_columns(data)
    if data.weight_column is not None:
        roles.append(("data.weightColumn", data.weight_column))
    if holds_validation and audited:
        roles += _sensitive_columns(data)
    return roles


def validation_file_columns(data: DataSpec, *, audited: bool) -> list[tuple[str, str]]:
    """A validation file needs no weights (rows without them count once), and the sensitive
    columns only when the audit reads them there (`audited`: a bias audit without
    bias.auditData); an audit file always needs them."""
    return _model_columns(data) + (_sensitive_columns(data) if audited else [])


def _sensitive_columns(data: DataSpec) -> list[tuple[str, str]]:
    return [("data.sensitiveColumns", column) for column in data.sensitive_columns]


def text_columns(data: DataSpec) -> list[tuple[str, str]]:
    """The columns of a causal language model's file: the text, and the response if set."""
    roles = [("data.textColumn", data.text_column)]
    if data.text_pair_column is not None:
        roles.append(("data.textPairColumn", data.text_pair_column))
    return roles


def preference_columns(data: DataSpec) -> list[tuple[str, str]]:
    """The columns of a preference file (training.objective dpo): prompt, chosen, rejected."""
    return [
        ("data.textColumn", data.text_column),
        ("data.chosenColumn", data.chosen_column),
        ("data.rejectedColumn", data.rejected_column),
    ]
