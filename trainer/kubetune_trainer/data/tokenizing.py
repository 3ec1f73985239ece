"""Model inputs: the columns the model reads, tokenized without padding.

The model reads fixed names (text, text_pair, labels, weight) whatever the file calls its
columns, so the rest of the run never looks at the manifest's column names again. Rows are
tokenized in batches, truncated to data.maxLength and not padded: the collator pads each
batch to its longest row, and each row's length in tokens is kept for the length-grouped
sampler and the data report. Row weights are checked here, where they become numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import DataSpec
from kubetune_trainer.data.columns import required_texts
from kubetune_trainer.data.rows import DataError, Rows, row_count


def model_inputs(rows: Rows, data: DataSpec) -> pa.Table:
    """The columns the model sees, under fixed names: text, text_pair, labels, weight."""
    columns: dict[str, Any] = {
        "text": required_texts(rows, data.text_column, "data.textColumn"),
        "labels": pa.array(rows.label_ids, pa.int64()),
    }
    if data.text_pair_column is not None:
        columns["text_pair"] = required_texts(rows, data.text_pair_column, "data.textPairColumn")
    if data.weight_column is not None:
        columns["weight"] = _weights(rows, data.weight_column)
    return pa.table(columns)


def _weights(rows: Rows, column: str) -> pa.ChunkedArray:
    """The weight column as numbers; negative or non-finite weights are refused (rows with no
    weight are the missingValues rule's, gone by now)."""
    table = rows.table
    if column not in table.column_names:
        return pa.chunked_array([np.ones(table.num_rows, np.float32)])
    weights = _as_numbers(rows, column)
    negative = pc.fill_null(pc.less(weights, 0), False)
    infinite = pc.fill_null(pc.invert(pc.is_finite(weights)), False)
    for mask, problem in (
        (pc.is_null(weights), "no weight"),
        (negative, "a negative weight"),
        (infinite, "a weight that is not a finite number"),
    ):
        count = pc.sum(mask).as_py() or 0
        if count:
            raise DataError(
                f"data.weightColumn: {rows.origin} has {row_count(count)} with {problem} in column "
                f"{column!r} ({rows.row_numbers(mask)}); weights must be numbers >= 0"
            )
    return pc.cast(weights, pa.float32())


def check_training_weights(inputs: pa.Table, column: str, origin: str) -> None:
    """Refuse training rows that all weigh 0: the weighted loss would be 0 at every step."""
    if "weight" in inputs.column_names and not pc.any(pc.greater(inputs["weight"], 0)).as_py():
        raise DataError(
            f"data.weightColumn: every training row of {origin} has weight 0 in column "
            f"{column!r}, so the loss would be 0 at every step and the model would not learn; "
            "give rows a weight > 0"
        )


def _as_numbers(rows: Rows, column: str) -> pa.ChunkedArray:
    """The column as float64; blank text cells become null (a missing weight, not a bad one)."""
    values = rows.table.column(column)
    numeric = pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
    if not (numeric or pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise DataError(
            f"data.weightColumn: column {column!r} of {rows.origin} holds {values.type} values, "
            "not numbers"
        )
    if not numeric:
        trimmed = pc.utf8_trim_whitespace(values)
        values = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, values.type), trimmed)
    try:
        return pc.cast(values, pa.float64())
    except pa.ArrowInvalid as error:
        raise DataError(
            f"data.weightColumn: column {column!r} of {rows.origin} is not numeric: {error}"
        ) from None


def tokenize(
    inputs: pa.Table, tokenizer: PreTrainedTokenizerBase, max_length: int, split: str
) -> datasets.Dataset:
    """Token ids truncated to `max_length`, unpadded, with each row's length in tokens."""
    texts = [name for name in ("text", "text_pair") if name in inputs.column_names]
    encoded = datasets.Dataset(InMemoryTable(inputs)).map(
        _encoder(tokenizer, max_length),
        batched=True,
        remove_columns=texts,
        desc=f"Tokenizing the {split} rows",
    )
    table = encoded.data.table
    lengths = pc.list_value_length(table.column("input_ids"))
    return datasets.Dataset(InMemoryTable(table.append_column("length", lengths)))


def _encoder(
    tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Callable[[Any], dict[str, Any]]:
    def encode(batch: Any) -> dict[str, Any]:
        pairs = batch.get("text_pair")
        return dict(tokenizer(batch["text"], pairs, truncation=True, max_length=max_length))

    return encode
