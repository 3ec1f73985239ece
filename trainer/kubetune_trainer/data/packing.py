"""Packing: several causal-LM training rows in each sequence of data.maxLength tokens.

Chat and instruction rows have very uneven lengths, so even length-grouped batches padded
to their longest row spend many tokens of every step on padding. With data.packing the
training rows are put into bins of data.maxLength tokens by best-fit decreasing (longest
row first, each into the fullest bin it still fits; a row never splits), and each bin
becomes one training sequence: the rows' input_ids and labels concatenated, and
position_ids that restart at 0 for every row.

No attention_mask is made. Without one, transformers (5.x, `masking_utils`) reads the
restarts of position_ids as sequence boundaries and builds a block-diagonal causal mask
for sdpa, eager and flex attention, and flash attention takes position_ids as its varlen
boundaries: a row attends only to itself, exactly as it would alone. Two conditions:
the model must be run without a KV cache (a cache switches the detection off; modeling.py
sets use_cache false), and the architecture must take position_ids from its inputs
(`PACKED_ARCHITECTURES`, each checked by tests/unit/trainer/data/test_packing.py against one
row at a time). The first label of every packed row is IGNORED_LABEL, so the last token of a row is
never asked to predict the first token of the next.

The collator pads each batch of packed sequences to its longest, and numbers the pad tail
0..k like a row of its own, so the tail needs no attention_mask either. transformers'
`DataCollatorWithFlattening` would instead concatenate the whole batch into one sequence
of batch x maxLength tokens: flash attention handles that well, but sdpa and eager (the
CPU's and most GPUs' default here) then build a (batch x maxLength)^2 mask and compute
attention over batch-times more token pairs, all masked out. Bins of maxLength padded as
[batch, longest] keep attention's cost that of unpacked rows.

Only the training split is packed: validation loss and perplexity are computed on the
unpacked validation rows, exactly as without packing.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.table import InMemoryTable

from kubetune_trainer.data.batching import LengthGroupedSampler
from kubetune_trainer.data.language_model import IGNORED_LABEL

PAD_MULTIPLE = 8
"""On a GPU, batches are padded to a multiple of this many tokens (tensor-core friendly
shapes); on a CPU to their longest row (training/loaders.py, pad_multiple)."""
PACKED_ARCHITECTURES = frozenset(
    {"gemma", "gemma2", "gpt2", "gpt_neox", "llama", "mistral", "phi", "phi3", "qwen2", "qwen3"}
)
"""model_type values whose models keep packed rows apart given position_ids alone (checked
by tests against one row at a time). OPT, Bloom and Falcon, for example, derive positions
or alibi from the attention mask and would let packed rows attend to each other."""


@dataclass(frozen=True)
class PackingStats:
    """What packing did to the training rows."""

    rows: int
    """Training rows packed."""
    sequences: int
    """Packed sequences the rows became (the training rows the loader sees)."""
    tokens: int
    """Real (non-padding) tokens in all of them."""
    capacity: int
    """Tokens per packed sequence at most (data.maxLength)."""

    @property
    def fill(self) -> float:
        """Real tokens over sequences x capacity."""
        return self.tokens / max(self.sequences * self.capacity, 1)


@dataclass(frozen=True)
class PackedRows:
    """The packed training sequences and the statistics of their packing."""

    rows: datasets.Dataset
    """input_ids, labels, position_ids and length (tokens) per packed sequence."""
    stats: PackingStats


def best_fit_decreasing(lengths: npt.ArrayLike, capacity: int) -> npt.NDArray[np.int64]:
    """The bin of each row: rows longest first (ties by row index), each into the bin with
    the least free room that still holds it (ties to the earliest opened), else into a new
    bin. Bins are numbered in the order they are opened."""
    sizes = np.asarray(lengths, dtype=np.int64)
    if sizes.size and (sizes.min() < 0 or sizes.max() > capacity):
        raise ValueError(f"row lengths must lie in 0..{capacity}")
    order = np.lexsort((np.arange(sizes.size), -sizes))
    bins_by_free_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # heaps of bins
    # Bit r is set while some bin has exactly r tokens free: the lowest set bit at or above a
    # row's length is its best fit, found in one shift of a Python integer.
    free_room_mask = 0
    opened = 0
    assignment = [0] * sizes.size
    for row, size in zip(order.tolist(), sizes[order].tolist(), strict=True):
        fitting = free_room_mask >> size
        if fitting:
            free = size + (fitting & -fitting).bit_length() - 1
            target = heapq.heappop(bins_by_free_room[free])
            if not bins_by_free_room[free]:
                free_room_mask ^= 1 << free
        else:
            target, free, opened = opened, capacity, opened + 1
        assignment[row] = target
        left = free - size
        heapq.heappush(bins_by_free_room[left], target)
        free_room_mask |= 1 << left
    return np.asarray(assignment, dtype=np.int64)


def pack_rows(rows: datasets.Dataset, capacity: int) -> PackedRows:
    """The rows (input_ids, labels, length; each at most `capacity` tokens) packed into
    sequences of at most `capacity` tokens, rows of a sequence in their original order."""
    table = rows.select_columns(["input_ids", "labels", "length"]).with_format("arrow")[:]
    lengths = table.column("length").to_numpy().astype(np.int64)
    bins = best_fit_decreasing(lengths, capacity)
    order = np.argsort(bins, kind="stable")
    ordered_lengths = lengths[order]
    row_starts = np.cumsum(ordered_lengths) - ordered_lengths
    sequence_offsets = np.concatenate(([0], np.cumsum(np.bincount(bins, weights=lengths))))
    offsets = pa.array(sequence_offsets.astype(np.int64), pa.int64())
    input_ids = _flat_values(table.column("input_ids"), order)
    labels = _flat_values(table.column("labels"), order).astype(np.int64)
    labels[row_starts[ordered_lengths > 0]] = IGNORED_LABEL
    positions = np.arange(labels.size, dtype=np.int64) - np.repeat(row_starts, ordered_lengths)
    packed = pa.table(
        {
            "input_ids": pa.LargeListArray.from_arrays(offsets, pa.array(input_ids)),
            "labels": pa.LargeListArray.from_arrays(offsets, pa.array(labels)),
            "position_ids": pa.LargeListArray.from_arrays(offsets, pa.array(positions)),
            "length": pa.array(np.diff(sequence_offsets).astype(np.int64)),
        }
    )
    stats = PackingStats(
        rows=len(lengths),
        sequences=packed.num_rows,
        tokens=int(lengths.sum()),
        capacity=capacity,
    )
    return PackedRows(datasets.Dataset(InMemoryTable(packed)), stats)


def _flat_values(column: pa.ChunkedArray, order: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
    """The list column's values, rows taken in `order`, as one flat array."""
    taken = pc.take(column, pa.array(order))
    return np.asarray(pc.list_flatten(taken).to_numpy(zero_copy_only=False))


def padding_fraction(
    lengths: npt.ArrayLike, order: npt.ArrayLike, batch_size: int, multiple: int = PAD_MULTIPLE
) -> float:
    """The share of padding tokens when rows, drawn in `order` in batches of `batch_size`,
    are padded to their batch's longest (rounded up to `multiple`)."""
    drawn = np.asarray(lengths, dtype=np.int64)[np.asarray(order, dtype=np.int64)]
    if drawn.size == 0:
        return 0.0
    starts = np.arange(0, drawn.size, batch_size)
    longest = np.maximum.reduceat(drawn, starts)
    widths = -(-longest // multiple) * multiple
    rows_per_batch = np.diff(np.append(starts, drawn.size))
    padded = int((widths * rows_per_batch).sum())
    return 1.0 - int(drawn.sum()) / max(padded, 1)


def packing_summary(
    packed: PackedRows, row_lengths: npt.ArrayLike, batch_size: int, seed: int, multiple: int
) -> dict[str, Any]:
    """The data report's packing section: the counts, the fill of the packed sequences, and
    the padding share of the first epoch's length-grouped batches without and with packing
    (batches padded to a multiple of `multiple` tokens, as the loader pads them)."""
    rows = np.asarray(row_lengths, dtype=np.int64)
    sequences = np.asarray(packed.rows["length"][:], dtype=np.int64)
    unpacked_order = LengthGroupedSampler(rows, batch_size, seed).order()
    packed_order = LengthGroupedSampler(sequences, batch_size, seed).order()
    stats = packed.stats
    return {
        "rows": stats.rows,
        "sequences": stats.sequences,
        "tokens": stats.tokens,
        "maxLength": stats.capacity,
        "fill": stats.fill,
        "paddingBefore": padding_fraction(rows, unpacked_order, batch_size, multiple),
        "paddingAfter": padding_fraction(sequences, packed_order, batch_size, multiple),
    }


@dataclass(frozen=True)
class PackedCollator:
    """Pads a batch of packed sequences to its longest (rounded up to `multiple`): input_ids with
    the pad token, labels with IGNORED_LABEL, position_ids numbering the pad tail 0..k as a
    row of its own. No attention_mask: the model finds the rows from position_ids."""

    pad_token_id: int
    multiple: int = PAD_MULTIPLE

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        sizes = [len(feature["input_ids"]) for feature in features]
        width = math.ceil(max(sizes) / self.multiple) * self.multiple
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORED_LABEL, dtype=torch.long)
        position_ids = torch.arange(width, dtype=torch.long).repeat(len(features), 1)
        for index, (feature, size) in enumerate(zip(features, sizes, strict=True)):
            input_ids[index, :size] = torch.as_tensor(feature["input_ids"])
            labels[index, :size] = torch.as_tensor(feature["labels"])
            position_ids[index, :size] = torch.as_tensor(feature["position_ids"])
            position_ids[index, size:] -= size
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
