"""The data-quality rules of quality.py (and label_noise.py), run on the pipeline's rows.

The quality engine (kubetune_trainer.data.quality) knows no file, tokenizer or model; this
module is where the pipeline meets it. It builds the engine's settings from the manifest,
measures what the engine cannot (token counts for the length rule, the label-noise
detector), hands over each row's position in its file so that examples and messages name
the right row, and turns the engine's refusal into a DataError that says which field to
change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import DataQualitySpec, DataSpec, TrainingConfig
from kubetune_trainer.data.columns import as_text
from kubetune_trainer.data.labels import class_names
from kubetune_trainer.data.quality import (
    Finding,
    LengthSettings,
    Mask,
    NearDuplicateSettings,
    QualityError,
    QualityReport,
    QualitySettings,
    RuleResult,
    RuleSettings,
    SplitInput,
    check,
)
from kubetune_trainer.data.rows import DataError, Rows

TOKEN_COUNT_BATCH = 1024
"""Rows per tokenizer call when the length rule counts tokens."""


def apply_quality_rules(
    train: Rows,
    validation: Rows,
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    screened: Sequence[RuleResult] = (),
    token_counts: Callable[[Rows], npt.NDArray[np.int64]] | None = None,
    prompts: tuple[str, str | None] | None = None,
) -> tuple[Rows, Rows, QualityReport]:
    """The rows the data-quality rules keep, and their report (row numbers are file positions).

    `screened` holds what the per-file rules (`screening.screen`: missingValues, unknownLabels) did
    before the labels were encoded and the validation split made: the report opens with
    them and the dropped share counts them. The length rule counts tokens with `tokenizer`,
    in the text (and text pair) columns, or with `token_counts` where the model reads
    something else (a rendered conversation). A causal LM's rules compare its prompts and
    responses: the columns `prompts` names ((prompt, response), the response None for rows
    without one), or else data.textColumn and data.textPairColumn (for preference rows,
    both responses together).
    """
    data = config.data
    generative = config.model.task == "causal-lm"
    label = None if generative else data.label_column
    prompt, response = (None, None) if not generative else prompts or _prompt_columns(config)
    for rows in (train, validation):  # a column of lists or structs is no text to check
        as_text(rows, data.text_column, "data.textColumn")
    count = token_counts or (lambda rows: _token_counts(rows, data, tokenizer))
    train_input, validation_input = (
        SplitInput(
            _with_preference_pairs(rows, config),
            rows.positions,
            count(rows),
            rows.origin,
            rows.files,
        )
        for rows in (train, validation)
    )
    try:
        keep_train, keep_validation, report = check(
            train_input,
            validation_input,
            text_column=data.text_column,
            label_column=label,
            settings=_settings(config),
            earlier=screened,
            label_noise=_label_noise_detector(train, config),
            prompt_column=prompt,
            response_column=response,
        )
    except QualityError as error:
        raise DataError(quality_failure(error)) from None
    assert keep_validation is not None
    kept_train = train.take(np.flatnonzero(keep_train))
    kept_validation = validation.take(np.flatnonzero(keep_validation))
    return kept_train, kept_validation, report


def quality_failure(error: QualityError) -> str:
    """The DataError message for the engine's refusal: the rule's field, and the fix."""
    if error.rule == "maxDroppedFraction":
        fix = "fix the data, change the rules' modes, or raise the limit"
    else:
        fix = f"fix those rows, or set data.quality.{error.rule}.mode to drop or warn"
    return f"data.quality.{error.rule}: {error}; {fix}"


PREFERENCE_PAIR = "kubetune:preference pair"
"""Preference rows' chosen and rejected responses in one column: a row is a duplicate when
its prompt and both responses repeat an earlier row's."""


def _prompt_columns(config: TrainingConfig) -> tuple[str, str | None]:
    """A causal LM's prompt and response columns."""
    data = config.data
    if config.training.learns_preferences:
        return data.text_column, PREFERENCE_PAIR
    return data.text_column, data.text_pair_column


def _with_preference_pairs(rows: Rows, config: TrainingConfig) -> pa.Table:
    """The rows' table, with PREFERENCE_PAIR for preference rows."""
    if not config.training.learns_preferences:
        return rows.table
    data = config.data
    chosen = pc.fill_null(as_text(rows, data.chosen_column, "data.chosenColumn"), "")
    rejected = pc.fill_null(as_text(rows, data.rejected_column, "data.rejectedColumn"), "")
    pairs = pc.binary_join_element_wise(chosen, rejected, "\n")
    return rows.table.append_column(PREFERENCE_PAIR, pairs)


def _settings(config: TrainingConfig) -> QualitySettings:
    """The engine's settings for this run: a causal LM's with the rules on prompts, but
    conflictingResponses, since preference rows give one prompt several pairs on purpose."""
    data = config.data
    settings = quality_settings(
        data.quality, data.max_length, generative=config.model.task == "causal-lm"
    )
    if config.training.learns_preferences:
        return dataclasses.replace(settings, conflicting_responses=None)
    return settings


def quality_settings(
    spec: DataQualitySpec, max_length: int, *, generative: bool = False
) -> QualitySettings:
    """The engine's settings from the config section (length.maxTokens defaults to maxLength);
    `generative`: a causal LM's, with the rules on prompts and responses."""
    length = spec.length
    upper = max_length if length.max_tokens is None else length.max_tokens
    near = spec.near_duplicates
    return QualitySettings(
        duplicates=RuleSettings(spec.duplicates.mode),
        conflicting_labels=RuleSettings(spec.conflicting_labels.mode),
        empty=RuleSettings(spec.empty.mode),
        garbage=RuleSettings(spec.garbage.mode),
        leakage=RuleSettings(spec.leakage.mode),
        length=LengthSettings(length.mode, min_tokens=length.min_tokens, max_tokens=upper),
        label_noise=None if spec.label_noise is None else RuleSettings(spec.label_noise.mode),
        conflicting_responses=(
            RuleSettings(spec.conflicting_responses.mode) if generative else None
        ),
        near_duplicates=(
            NearDuplicateSettings(near.mode, threshold=near.threshold) if generative else None
        ),
        max_non_printable_fraction=spec.max_non_printable_fraction,
        max_dropped_fraction=spec.max_dropped_fraction,
        examples_per_rule=spec.examples_per_rule,
    )


def _token_counts(
    rows: Rows, data: DataSpec, tokenizer: PreTrainedTokenizerBase
) -> npt.NDArray[np.int64]:
    """Tokens per row, text and text pair together, without special tokens or truncation.

    Rows without text count 0 (the empty rule has them, and the length rule skips them).
    """
    texts = pc.fill_null(as_text(rows, data.text_column, "data.textColumn"), "")
    pairs = None
    if data.text_pair_column is not None:
        pairs = pc.fill_null(as_text(rows, data.text_pair_column, "data.textPairColumn"), "")
    counts = np.zeros(rows.table.num_rows, dtype=np.int64)
    for start in range(0, rows.table.num_rows, TOKEN_COUNT_BATCH):
        batch = texts.slice(start, TOKEN_COUNT_BATCH).to_pylist()
        batch_pairs = None if pairs is None else pairs.slice(start, TOKEN_COUNT_BATCH).to_pylist()
        encoded = tokenizer(
            batch,
            batch_pairs,
            add_special_tokens=False,
            truncation=False,
            return_length=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        counts[start : start + len(batch)] = encoded["length"]
    return counts


def _label_noise_detector(train: Rows, config: TrainingConfig) -> Callable[[Mask], Finding] | None:
    """data.quality.labelNoise on the training rows the engine still keeps, or None when off."""
    spec = config.data.quality.label_noise
    if spec is None or config.model.task != "sequence-classification":
        return None
    # Imported here: cleanlab takes most of a second to import, and most runs do not ask.
    from kubetune_trainer.data.label_noise import find_suspects

    names = class_names(train, config)
    texts = _joined_texts(train, config.data)

    def detect(kept: Mask) -> Finding:
        rows = np.flatnonzero(kept)
        suspects = find_suspects(
            texts.take(pa.array(rows)).to_pylist(),
            train.label_ids[rows],
            folds=spec.folds,
            seed=config.training.seed,
        )
        matched = np.zeros(len(kept), dtype=np.bool_)
        matched[rows] = suspects.matched
        suggested = np.full(len(kept), None, dtype=object)
        suggested[rows] = names[np.maximum(suspects.suggested, 0)]
        probability = np.full(len(kept), np.nan)
        probability[rows] = np.round(suspects.probability, 3)
        details = {"suggested": suggested, "probability": probability}
        return Finding(matched, details, f"suspected label errors; {suspects.note}")

    return detect


def _joined_texts(rows: Rows, data: DataSpec) -> pa.ChunkedArray:
    """Each row's text, and its text pair after a space: what the label-noise model reads."""
    texts = pc.fill_null(as_text(rows, data.text_column, "data.textColumn"), "")
    if data.text_pair_column is None:
        return texts
    pairs = pc.fill_null(as_text(rows, data.text_pair_column, "data.textPairColumn"), "")
    joined: pa.ChunkedArray = pc.binary_join_element_wise(texts, pairs, " ")
    return joined
