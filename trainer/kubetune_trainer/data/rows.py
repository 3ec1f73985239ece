"""The rows of one split on their way to the model, and the error every stage raises.

Each stage of the pipeline takes rows from one file (or a directory of shards) and hands
on fewer, more or relabelled rows. A message about a row must still name the file and the
row's place in it, after a validation split or a drop has reordered the table, so the
rows travel with their origin and positions (`Rows`). A data problem fails the job with a
`DataError` whose message is in the user's terms: field, file, column, counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa

SHOWN = 5
"""How many example rows or values a message lists."""


class DataError(Exception):
    """Data that cannot be trained on; the message names the file, the column and the counts."""


@dataclass(frozen=True)
class Rows:
    """The rows of one split on their way to the model, and where they came from."""

    table: pa.Table
    origin: str
    """The file or directory, for messages."""
    positions: npt.NDArray[np.int64]
    """Where each row is in its file (from 0), for messages once a split has taken rows."""
    files: npt.NDArray[np.object_]
    """The source each row was read from, as the manifest names it: the training rows
    hold the synthetic sources' rows too, and their examples must say whose row they show."""
    label_ids: npt.NDArray[np.int64] = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.int64)
    )
    """Class id per row, once the labels are encoded."""
    sources: npt.NDArray[np.int64] = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.int64)
    )
    """For training rows after the quality rules: the kept row each one is, or was made from."""

    def take(self, indices: npt.NDArray[np.int64]) -> Rows:
        return replace(
            self,
            table=self.table.take(indices),
            positions=self.positions[indices],
            files=self.files[indices],
            label_ids=self.label_ids[indices] if self.label_ids.size else self.label_ids,
            sources=self.sources[indices] if self.sources.size else self.sources,
        )

    def extended(self, more: Rows) -> Rows:
        """These rows followed by `more` (same columns; `more` keeps its own positions)."""
        return replace(
            self,
            table=pa.concat_tables([self.table, more.table.select(self.table.column_names)]),
            positions=np.concatenate([self.positions, more.positions]),
            files=np.concatenate([self.files, more.files]),
            label_ids=np.concatenate([self.label_ids, more.label_ids]),
            sources=np.concatenate([self.sources, more.sources]),
        )

    def row_numbers(self, mask: pa.ChunkedArray) -> str:
        """The first few rows where `mask` is true, numbered in the file from 1 (no header)."""
        numbers = self.positions[np.flatnonzero(mask.to_numpy(zero_copy_only=False))] + 1
        shown = ", ".join(str(number) for number in numbers[:SHOWN])
        more = f" and {len(numbers) - SHOWN} more" if len(numbers) > SHOWN else ""
        return f"data {'row' if len(numbers) == 1 else 'rows'} {shown}{more}"


def row_count(count: int) -> str:
    """A count of rows in words: "1 row", "3 rows"."""
    return f"{count} row" if count == 1 else f"{count} rows"


def listing(items: Sequence[str], limit: int = 4 * SHOWN) -> str:
    """The first `limit` items, comma-separated, and how many more there are."""
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
