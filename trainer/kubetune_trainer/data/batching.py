"""Batches: the order rows are drawn in, and a batch size the rows can fill.

Rows are padded to the longest row of their batch, so a batch of one long and many short
rows is mostly padding. `LengthGroupedSampler` draws rows in an order that puts rows of
similar length together, while each epoch's batches stay random; with sampling weights it
draws rows class-balanced instead of in a plain shuffle (data.balance.sampler).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from torch.utils.data import Sampler

from kubetune_trainer.data.rows import DataError, Rows

MEGA_BATCH_FACTOR = 50
"""LengthGroupedSampler sorts by length within windows of this many batches."""


class LengthGroupedSampler(Sampler[int]):
    """Row indices in an order that puts rows of similar length in the same batch.

    Rows are shuffled (seeded by seed and epoch), cut into windows of MEGA_BATCH_FACTOR
    batches, and each window is sorted longest first and cut into batches, which are then
    drawn in random order, the window's longest batch first: batches are padded far less
    than in random order, the order of lengths stays random, and an out-of-memory batch
    shows early.

    With `weights` (one per row, e.g. `balance.class_balanced_weights` for sampler:
    class-balanced), each epoch instead draws len(lengths) rows with replacement, row i
    with probability weights[i] / sum(weights), from the same (seed, epoch) generator;
    the windows are then sorted the same way. An epoch keeps its number of steps, but a
    row may come several times or not at all. Without weights the order is the shuffle
    above, unchanged.
    """

    def __init__(
        self,
        lengths: Sequence[int] | npt.NDArray[np.integer[Any]],
        batch_size: int,
        seed: int = 0,
        *,
        weights: npt.NDArray[np.float64] | None = None,
    ) -> None:
        super().__init__()
        # A slice converts at once where a datasets Column would convert row by row.
        self.lengths = np.asarray(lengths[:], dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.probabilities = None if weights is None else self._probabilities(weights, self.lengths)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of `epoch` (each epoch has its own shuffle)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def order(self) -> npt.NDArray[np.int64]:
        """This epoch's row indices in order: every row once, or the weighted draws."""
        rng = np.random.default_rng((self.seed, self.epoch))
        rows = len(self.lengths)
        if self.probabilities is None:
            shuffled = rng.permutation(rows)
        else:
            shuffled = rng.choice(rows, size=rows, replace=True, p=self.probabilities)
        window = np.arange(len(shuffled)) // (MEGA_BATCH_FACTOR * self.batch_size)
        # lexsort sorts by its last key first: by window, then longest first within one.
        by_length = shuffled[np.lexsort((-self.lengths[shuffled], window))]
        return by_length[self._batches_shuffled(len(by_length), rng)]

    def _batches_shuffled(self, rows: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Positions that draw each window's batches in random order, its longest batch
        still first, and a short last batch still last. Sorted batches alone would make
        every epoch of a small dataset (under MEGA_BATCH_FACTOR batches) run from its
        longest rows to its shortest: a curriculum by length, and, where row kinds differ
        in length (the chat example's preference rows with and without an age), by kind."""
        starts = np.arange(0, rows, self.batch_size)
        batches = np.arange(len(starts))
        full = batches if rows % self.batch_size == 0 else batches[:-1]
        picked: list[npt.NDArray[np.int64]] = []
        for first in range(0, len(full), MEGA_BATCH_FACTOR):
            in_window = full[first : first + MEGA_BATCH_FACTOR]
            picked += [in_window[:1], rng.permutation(in_window[1:])]
        picked.append(batches[len(full) :])
        order = np.concatenate(picked)
        positions = starts[order][:, None] + np.arange(self.batch_size)[None, :]
        return positions[positions < rows].astype(np.int64)

    @staticmethod
    def _probabilities(
        weights: npt.NDArray[np.float64], lengths: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """`weights` scaled to sum to 1; one finite weight >= 0 per row, not all zero."""
        values = np.asarray(weights, dtype=np.float64)
        if values.shape != lengths.shape:
            raise ValueError(f"{values.size} sampling weights for {lengths.size} rows")
        if not (np.isfinite(values).all() and (values >= 0).all() and values.sum() > 0):
            raise ValueError("sampling weights must be finite, >= 0 and not all zero")
        probabilities: npt.NDArray[np.float64] = values / values.sum()
        return probabilities


def check_batch_size(batch_size: int, train: Rows) -> None:
    """Refuse a batch larger than the training rows (a DataError naming training.batchSize)."""
    rows = train.table.num_rows
    if batch_size > rows:
        raise DataError(
            f"training.batchSize: {batch_size} is larger than the {rows} training rows; "
            f"lower it to {rows} or less, or add rows"
        )
