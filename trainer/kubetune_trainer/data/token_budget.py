"""A causal LM's data in tokens: what one epoch reads and learns from, and what maxLength cuts.

A generative fine-tune is sized and billed in tokens, not rows: GPU-hours grow with the
tokens the model reads, and a managed fine-tuning API bills the tokens of the file times
the epochs. How many of those tokens carry the loss (the responses) decides what the model
learns, and a response that data.maxLength cuts off teaches the model to stop mid-answer.
This module counts all of it from the tokenized rows, before any training step, so the
data report can show it beside the rows.

The rows are tokenized whole (no truncation) and the counts compare them with their first
maxLength tokens, which is what the model sees (`truncated` then cuts them). A token is a
prompt token when its label is IGNORED_LABEL and a response token otherwise (for plain
text rows, every token); the loss counts the response tokens after the first position, since
a causal LM predicts each token from the ones before it.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable

from kubetune_trainer.data.report import length_summary

IGNORED = -100
"""The label torch's cross-entropy skips (language_model.IGNORED_LABEL is this value)."""
PERCENTILES = (50, 95)
Ints = npt.NDArray[np.int64]


def truncated(
    encoded: datasets.Dataset, columns: tuple[str, ...], max_length: int
) -> datasets.Dataset:
    """`encoded` with each of its list `columns` cut to the first `max_length` tokens."""
    table = encoded.data.table
    for name in columns:
        index = table.column_names.index(name)
        table = table.set_column(index, name, pc.list_slice(table.column(name), 0, max_length))
    return datasets.Dataset(InMemoryTable(table))


def split_tokens(labels: pa.ChunkedArray, max_length: int) -> dict[str, Any]:
    """One split's figures from its untruncated `labels` (IGNORED on prompt tokens): rows,
    prompt and response tokens per row (summaries with histograms), the tokens one epoch
    reads and the loss counts, and the rows whose response maxLength cuts (and the response
    tokens it cuts off)."""
    per_row = _per_row(labels, max_length)
    return {
        "rows": len(per_row["length"]),
        "promptTokens": _summary(per_row["length"] - per_row["response"], max_length),
        "responseTokens": _summary(per_row["response"], max_length),
        "tokensPerEpoch": int(np.minimum(per_row["length"], max_length).sum()),
        "lossTokensPerEpoch": int(per_row["lossKept"].sum()),
        "responsesCut": int((per_row["response"] > per_row["responseKept"]).sum()),
        "responseTokensCut": int((per_row["response"] - per_row["responseKept"]).sum()),
    }


def _per_row(labels: pa.ChunkedArray, max_length: int) -> dict[str, Ints]:
    """Per row: tokens, response tokens, and those of the first max_length tokens (response,
    and response after the first position: the loss's). One Arrow chunk at a time, so that
    the per-token arrays stay the size of a chunk."""
    counted = [_chunk_per_row(chunk, max_length) for chunk in labels.chunks]
    keys = ("length", "response", "responseKept", "lossKept")
    return {
        key: np.concatenate([chunk[key] for chunk in counted] or [np.zeros(0, np.int64)])
        for key in keys
    }


def _chunk_per_row(labels: pa.Array, max_length: int) -> dict[str, Ints]:
    lengths = np.asarray(pc.list_value_length(labels).to_numpy(zero_copy_only=False), np.int64)
    flat = np.asarray(pc.list_flatten(labels).to_numpy(zero_copy_only=False), np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(flat), dtype=np.int64) - starts[rows]
    response = flat != IGNORED
    kept = response & (position < max_length)

    def count(mask: npt.NDArray[np.bool_]) -> Ints:
        return np.bincount(rows[mask], minlength=len(lengths)).astype(np.int64)

    return {
        "length": lengths,
        "response": count(response),
        "responseKept": count(kept),
        "lossKept": count(kept & (position > 0)),
    }


def _summary(counts: Ints, max_length: int) -> dict[str, Any]:
    """Percentiles, max, total and a histogram of tokens per row."""
    if not len(counts):
        return {"count": 0}
    p50, p95 = np.percentile(counts, PERCENTILES)
    histogram = length_summary(counts, max_length)["histogram"]
    return {
        "p50": float(p50),
        "p95": float(p95),
        "max": int(counts.max()),
        "total": int(counts.sum()),
        "histogram": histogram,
    }


def run_tokens(
    splits: dict[str, dict[str, Any]], epochs: int, max_steps: int | None
) -> dict[str, Any]:
    """The figures of every split, and the training tokens over the run: one epoch's times
    training.epochs (an upper bound when training.maxSteps may stop the run sooner)."""
    train = splits.get("train", {})
    return {
        "splits": splits,
        "epochs": epochs,
        "upperBound": max_steps is not None,
        "tokensPerRun": epochs * int(train.get("tokensPerEpoch", 0)),
        "lossTokensPerRun": epochs * int(train.get("lossTokensPerEpoch", 0)),
    }


def preference_tokens(encoded: datasets.Dataset, max_length: int) -> dict[str, Any]:
    """`split_tokens` of untruncated preference rows: the model reads both responses of a
    row (each after its prompt), so every figure but the rows counts both sequences."""
    table = encoded.data.table
    both = pa.chunked_array(
        [*table.column("chosen_labels").chunks, *table.column("rejected_labels").chunks]
    )
    return {**split_tokens(both, max_length), "rows": table.num_rows}
