"""The pipeline of preference rows (training.objective dpo or simpo): a prompt, a chosen
and a rejected response per row.

The rows are read, screened, split and checked like a causal LM's (language_model.py),
with two more per-file checks in screening.py: a row without a chosen or rejected response
is data.quality.missingValues', and a row whose two responses are the same is
data.quality.identicalPreferences' (it prefers nothing, so it carries no gradient). The
text rules (duplicates, empty, garbage, leakage) read the prompt (data.textColumn); the
length rule counts the prompt with its longer response, the sequence data.maxLength cuts.

Each response is tokenized after its prompt as a causal LM's response is (prompt tokens
masked out of the labels, the end-of-text token appended), into the columns chosen_input_ids,
chosen_labels, rejected_input_ids and rejected_labels; `length` is the longer of the two, so
that length-grouped batches pad little. `PreferenceCollator` puts every row's chosen
sequence in the first half of a batch and its rejected one in the second, padded together,
so that one forward pass scores both (as TRL's DataCollatorForPreference does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F  # noqa: N812
from datasets.table import InMemoryTable
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import DataSpec, TrainingConfig
from kubetune_trainer.data.columns import as_text, preference_columns, required_texts
from kubetune_trainer.data.language_model import (
    IGNORED_LABEL,
    check_responses_fit,
    checked_rows,
    language_model_encoder,
)
from kubetune_trainer.data.prepared import PreparedData
from kubetune_trainer.data.rows import DataError, Rows
from kubetune_trainer.data.token_budget import preference_tokens, run_tokens, truncated

TOKEN_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
"""What a tokenized preference row holds (besides its length)."""
REFERENCE_COLUMNS = ("reference_chosen", "reference_rejected")
"""The reference model's summed log-probabilities of each response, when computed before
training (training/preferences.py); the collator passes them on with the batch."""


def prepare_preference_data(
    config: TrainingConfig, tokenizer: PreTrainedTokenizerBase
) -> PreparedData:
    """Load, check, split and tokenize the preference rows of a dpo or simpo run."""
    data = config.data
    counts = _token_counts(tokenizer, data)
    checked = checked_rows(config, tokenizer, preference_columns(data), token_counts=counts)
    train_set, train_tokens = _tokenize_preferences(checked.train, data, tokenizer, "training")
    validation_set, validation_tokens = _tokenize_preferences(
        checked.validation, data, tokenizer, "validation"
    )
    splits = {"train": train_tokens, "validation": validation_tokens}
    tokens = run_tokens(splits, config.training.epochs, config.training.max_steps)
    return checked.prepared(train_set, validation_set, data, tokens)


def _token_counts(
    tokenizer: PreTrainedTokenizerBase, data: DataSpec
) -> Callable[[Rows], npt.NDArray[np.int64]]:
    """Tokens of each row's prompt and its longer response (special tokens not counted):
    what the length rule compares with data.maxLength, which truncates that sequence."""

    def count(rows: Rows) -> npt.NDArray[np.int64]:
        def tokens(column: str, field: str) -> npt.NDArray[np.int64]:
            texts = pc.fill_null(as_text(rows, column, field), "").to_pylist()
            if not texts:
                return np.zeros(0, dtype=np.int64)
            encoded = tokenizer(texts, add_special_tokens=False, return_length=True, verbose=False)
            return np.asarray(encoded["length"], dtype=np.int64)

        prompts = tokens(data.text_column, "data.textColumn")
        chosen = tokens(data.chosen_column, "data.chosenColumn")
        rejected = tokens(data.rejected_column, "data.rejectedColumn")
        return prompts + np.maximum(chosen, rejected)

    return count


def _tokenize_preferences(
    rows: Rows, data: DataSpec, tokenizer: PreTrainedTokenizerBase, split: str
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """The split's preference rows tokenized and cut to data.maxLength, and their token
    figures (counted before the cut)."""
    columns = {
        "prompt": required_texts(rows, data.text_column, "data.textColumn"),
        "chosen": required_texts(rows, data.chosen_column, "data.chosenColumn"),
        "rejected": required_texts(rows, data.rejected_column, "data.rejectedColumn"),
    }
    whole = datasets.Dataset(InMemoryTable(pa.table(columns))).map(
        _preference_encoder(tokenizer),
        batched=True,
        remove_columns=list(columns),
        desc=f"Tokenizing the {split} preference rows",
    )
    figures = preference_tokens(whole, data.max_length)
    encoded = truncated(whole, TOKEN_COLUMNS, data.max_length)
    return preference_rows(encoded, data.max_length, split), figures


def preference_rows(encoded: datasets.Dataset, max_length: int, split: str) -> datasets.Dataset:
    """Tokenized preference rows (TOKEN_COLUMNS) checked, with their `length` column: a
    split where data.maxLength cuts off every chosen or every rejected response is refused."""
    if not len(encoded):
        raise DataError(f"data.{split}: no preference row is left")
    check_responses_fit(encoded, max_length, split, "chosen_labels", "data.chosenColumn")
    check_responses_fit(encoded, max_length, split, "rejected_labels", "data.rejectedColumn")
    table = encoded.data.table
    lengths = pc.max_element_wise(
        pc.list_value_length(table.column("chosen_input_ids")),
        pc.list_value_length(table.column("rejected_input_ids")),
    )
    return datasets.Dataset(InMemoryTable(table.append_column("length", lengths)))


def _preference_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[Any], dict[str, Any]]:
    """Both responses of each row, each after its prompt, as a causal LM's response (whole)."""
    encode = language_model_encoder(tokenizer, None)

    def encode_both(batch: Any) -> dict[str, Any]:
        columns: dict[str, Any] = {}
        for side in ("chosen", "rejected"):
            encoded = encode({"prompt": batch["prompt"], "response": batch[side]})
            columns[f"{side}_input_ids"] = encoded["input_ids"]
            columns[f"{side}_labels"] = encoded["labels"]
        return columns

    return encode_both


@dataclass(frozen=True)
class PreferenceCollator:
    """A batch of B preference rows as 2B sequences: the chosen ones, then the rejected
    ones, right-padded to their longest, rounded up to `multiple` tokens (labels with
    IGNORED_LABEL)."""

    pad_token_id: int
    multiple: int = 1

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sides = ("chosen", "rejected")
        ids = [torch.as_tensor(row[f"{side}_input_ids"]) for side in sides for row in rows]
        labels = [torch.as_tensor(row[f"{side}_labels"]) for side in sides for row in rows]
        batch = {
            "input_ids": self._padded(ids, self.pad_token_id),
            "attention_mask": self._padded([torch.ones_like(i) for i in ids], 0),
            "labels": self._padded(labels, IGNORED_LABEL),
        }
        for column in REFERENCE_COLUMNS:
            if column in rows[0]:
                batch[column] = torch.tensor([float(row[column]) for row in rows])
        return batch

    def _padded(self, sequences: list[torch.Tensor], value: int) -> torch.Tensor:
        padded = pad_sequence(sequences, batch_first=True, padding_value=value)
        extra = -padded.shape[1] % self.multiple
        return F.pad(padded, (0, extra), value=value)
