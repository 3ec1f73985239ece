"""The sensitive columns as groups, for the bias audit and the data report.

The bias audit compares the model across the groups of each sensitive column
(data.sensitiveColumns), and the data report counts them before and after the rules. Both
need the same reading of the column: text, and a row without a value is a group of its own
(MISSING_GROUP) rather than a dropped row, since leaving such rows out could hide the
group the model treats worst.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from kubetune_trainer.config import MISSING_GROUP
from kubetune_trainer.data.columns import as_text
from kubetune_trainer.data.rows import Rows


def sensitive_groups(rows: Rows, columns: Sequence[str]) -> dict[str, list[str]]:
    """Each of `columns` as group names, one per row."""
    return {column: _group_values(rows, column) for column in columns}


def present_sensitive_groups(rows: Rows, columns: Sequence[str]) -> dict[str, list[str]]:
    """sensitive_groups of the sensitive columns this file has (training files may lack them)."""
    names = set(rows.table.column_names)
    return sensitive_groups(rows, [column for column in columns if column in names])


def _group_values(rows: Rows, column: str) -> list[str]:
    values: list[str] = group_column(rows, column).to_pylist()
    return values


def group_column(rows: Rows, column: str) -> pa.ChunkedArray:
    """A sensitive column as text, MISSING_GROUP where a row has no value."""
    values = as_text(rows, column, "data.sensitiveColumns")
    empty = pc.fill_null(pc.equal(values, ""), True)
    return pc.if_else(empty, MISSING_GROUP, values)
