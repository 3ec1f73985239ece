"""The pipeline of causal language models: next-token prediction on the text column.

A causal LM has no labels and no classes, so most of the classification pipeline does not
apply: its rows are read, screened, split and checked by the quality rules like any other,
then tokenized as prompt (+ response + end of text). When a response column is set
(data.textPairColumn) the prompt's tokens are masked out of the labels, so that the model
learns to answer, not to repeat the question. The rows are tokenized whole, counted in
tokens for the data report (token_budget.py), then cut to data.maxLength.
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
from datasets.table import InMemoryTable
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import DataSource, DataSpec, TrainingConfig
from kubetune_trainer.data.batching import check_batch_size
from kubetune_trainer.data.cleaning import apply_quality_rules
from kubetune_trainer.data.columns import check_columns, required_texts, text_columns
from kubetune_trainer.data.groups import present_sensitive_groups
from kubetune_trainer.data.loading import read_source
from kubetune_trainer.data.prepared import PreparedData
from kubetune_trainer.data.quality import QualityReport, RuleResult
from kubetune_trainer.data.report import DataReport, length_summary
from kubetune_trainer.data.rows import DataError, Rows
from kubetune_trainer.data.screening import rows_read, screen
from kubetune_trainer.data.splits import stratified_split
from kubetune_trainer.data.token_budget import IGNORED, run_tokens, split_tokens, truncated

IGNORED_LABEL = IGNORED
"""The label value torch's cross-entropy skips: prompt tokens and padding."""
ENCODED_COLUMNS = ("input_ids", "attention_mask", "labels")


def prepare_language_model_data(
    config: TrainingConfig, tokenizer: PreTrainedTokenizerBase
) -> PreparedData:
    """Load, check, split and tokenize the rows of a causal-LM run."""
    data = config.data
    checked = checked_rows(config, tokenizer, text_columns(data))
    train_set, train_tokens = _tokenize_for_language_model(
        checked.train, data, tokenizer, "training"
    )
    validation_set, validation_tokens = _tokenize_for_language_model(
        checked.validation, data, tokenizer, "validation"
    )
    splits = {"train": train_tokens, "validation": validation_tokens}
    tokens = run_tokens(splits, config.training.epochs, config.training.max_steps)
    return checked.prepared(train_set, validation_set, data, tokens)


@dataclass(frozen=True)
class CheckedRows:
    """A causal-LM run's rows once read, screened, split and checked by the quality rules."""

    train: Rows
    validation: Rows
    quality: QualityReport
    rows_in: dict[str, int]

    def prepared(
        self,
        train_set: datasets.Dataset,
        validation_set: datasets.Dataset,
        data: DataSpec,
        tokens: dict[str, Any] | None = None,
    ) -> PreparedData:
        """What the run trains on: the tokenized rows (with a "length" column) and, beside
        them, the prompts, groups, counts and the token figures (token_budget.run_tokens)."""
        report = DataReport(
            quality=self.quality,
            labels=[],
            classes={},
            lengths={
                split: length_summary(np.asarray(rows["length"][:]), data.max_length)
                for split, rows in (("train", train_set), ("validation", validation_set))
            },
            tokens=tokens,
        )
        return PreparedData(
            train=train_set,
            validation=validation_set,
            labels=[],
            train_class_counts={},
            class_weights=None,
            train_texts=_prompts(self.train, data),
            train_groups=present_sensitive_groups(self.train, data.sensitive_columns),
            train_sources=np.arange(len(train_set), dtype=np.int64),
            validation_texts=_prompts(self.validation, data),
            validation_groups=present_sensitive_groups(self.validation, data.sensitive_columns),
            rows={
                **self.rows_in,
                "train_out": len(train_set),
                "validation_out": len(validation_set),
            },
            majority_rate=0.0,
            report=report,
        )


Reader = Callable[[DataSource, str, str], tuple[Rows, list[RuleResult]]]
"""Reads one source (the source, its field, its split) into rows, with the results of the
per-file rules it ran as it read them."""
TokenCounter = Callable[[Rows], npt.NDArray[np.int64]]
"""Tokens per row, for the length rule, where the model reads more than the text column."""


def _read(source: DataSource, field: str, split: str) -> tuple[Rows, list[RuleResult]]:
    return read_source(source, field), []


def checked_rows(
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    columns: list[tuple[str, str]],
    *,
    read: Reader = _read,
    token_counts: TokenCounter | None = None,
) -> CheckedRows:
    """Read the sources (with `read`), check that they hold `columns` ((field, column)
    pairs), screen them, hold out the validation split if there is no validation source,
    and apply the quality rules (the length rule counting `token_counts`, if given)."""
    data = config.data
    train, screened = read(data.train, "data.train", "train")
    check_columns(train, columns)
    train, screened_train = screen(train, "train", config, None)
    screened += screened_train
    if data.validation is None:
        kept, held_out = stratified_split(
            np.zeros(train.table.num_rows, dtype=np.int64),
            data.validation_split,
            config.training.seed,
        )
        train, validation = train.take(kept), train.take(held_out)
    else:
        validation, read_validation = read(data.validation, "data.validation", "validation")
        check_columns(validation, columns)
        validation, screened_validation = screen(validation, "validation", config, None)
        screened += read_validation + screened_validation
    rows_in = rows_read(train, validation, screened)
    train, validation, quality = apply_quality_rules(
        train, validation, config, tokenizer, screened=screened, token_counts=token_counts
    )
    check_batch_size(config.training.batch_size, train)
    return CheckedRows(train, validation, quality, rows_in)


def _prompts(rows: Rows, data: DataSpec) -> list[str]:
    texts: list[str] = required_texts(rows, data.text_column, "data.textColumn").to_pylist()
    return texts


def _tokenize_for_language_model(
    rows: Rows, data: DataSpec, tokenizer: PreTrainedTokenizerBase, split: str
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """The split's rows tokenized and cut to data.maxLength, and its token figures (counted
    before the cut)."""
    columns = {"prompt": required_texts(rows, data.text_column, "data.textColumn")}
    if data.text_pair_column is not None:
        columns["response"] = required_texts(rows, data.text_pair_column, "data.textPairColumn")
    table = pa.table(columns)
    whole = datasets.Dataset(InMemoryTable(table)).map(
        language_model_encoder(tokenizer, None),
        batched=True,
        remove_columns=list(columns),
        desc=f"Tokenizing the {split} rows",
    )
    figures = split_tokens(whole.data.table.column("labels"), data.max_length)
    encoded = truncated(whole, ENCODED_COLUMNS, data.max_length)
    lengths = pc.list_value_length(encoded.data.table.column("input_ids"))
    if pc.max(lengths).as_py() is None:
        raise DataError(f"data.{split}: no row holds any text")
    if data.text_pair_column is not None:
        check_responses_fit(encoded, data.max_length, split)
    with_lengths = encoded.data.table.append_column("length", lengths)
    return datasets.Dataset(InMemoryTable(with_lengths)), figures


def check_responses_fit(
    encoded: datasets.Dataset,
    max_length: int,
    split: str,
    labels: str = "labels",
    field: str = "data.textPairColumn",
) -> None:
    """Refuse a split whose every response (in the column `labels`) is cut off by
    data.maxLength: its loss would be 0/0 (NaN) at every step, which would read as a
    divergence."""
    # In Arrow: a Python loop over every token would slow the start of a large run.
    responses = pc.list_flatten(pc.list_slice(encoded.data.table.column(labels), 1))
    if not pc.any(pc.not_equal(responses, IGNORED_LABEL)).as_py():
        raise DataError(
            f"data.maxLength: {max_length} tokens hold only the prompt of every {split} row, "
            f"so no response token ({field}) is left to learn from; raise "
            "data.maxLength or shorten the prompts"
        )


def language_model_encoder(
    tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> Callable[[Any], dict[str, Any]]:
    """Prompt (+ response + end of text) token ids, labels masking the prompt when a response
    column exists, cut to `max_length` tokens (None: whole)."""
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(batch: Any) -> dict[str, Any]:
        prompts = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
        responses = batch.get("response")
        if responses is None:
            ids = [(p + end)[:max_length] for p in prompts]
            return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids], "labels": ids}
        answers = tokenizer(responses, add_special_tokens=False)["input_ids"]
        ids = [(p + a + end)[:max_length] for p, a in zip(prompts, answers, strict=True)]
        labels = [
            ([IGNORED_LABEL] * len(p) + a + end)[:max_length]
            for p, a in zip(prompts, answers, strict=True)
        ]
        return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids], "labels": labels}

    return encode
