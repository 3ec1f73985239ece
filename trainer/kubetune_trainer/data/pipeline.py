"""The pipeline of sequence classification, stage by stage: `prepare_data`.

This is the one place that says in which order the stages run; each stage lives in a
module named after it (loading, screening, labels, splits, cleaning, augmenting, balancing,
tokenizing). `prepare_data` is the entry point of every run (a causal language model's
rows go through language_model.py instead, and its conversations through
chat_pipeline.py); `prepare_audit_rows` reads bias.auditData
through the same stages as a validation file. `prepare_data` calls `progress` between its
stages: the recipe's heartbeat (heartbeat.py), so a long preparation is not taken for a
stuck one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import DataSpec, TrainingConfig
from kubetune_trainer.data.augmenting import (
    synthetic_count,
    with_augmented_rows,
    with_synthetic_rows,
)
from kubetune_trainer.data.balance import recommendation
from kubetune_trainer.data.balancing import class_weights, resampled
from kubetune_trainer.data.batching import check_batch_size
from kubetune_trainer.data.chat_pipeline import prepare_conversation_data
from kubetune_trainer.data.chat_preferences import prepare_conversational_preference_data
from kubetune_trainer.data.cleaning import apply_quality_rules
from kubetune_trainer.data.columns import (
    check_columns,
    training_file_columns,
    validation_file_columns,
)
from kubetune_trainer.data.groups import group_column, present_sensitive_groups, sensitive_groups
from kubetune_trainer.data.labels import (
    check_metric_computable,
    check_two_classes,
    classes_without_rows,
    encode_labels,
    labels_of,
)
from kubetune_trainer.data.language_model import prepare_language_model_data
from kubetune_trainer.data.loading import read_source
from kubetune_trainer.data.preferences import prepare_preference_data
from kubetune_trainer.data.prepared import AuditRows, PreparedData
from kubetune_trainer.data.quality import QualityReport
from kubetune_trainer.data.report import (
    BeforeAfter,
    Counts,
    DataReport,
    class_counts,
    group_counts,
    length_summary,
)
from kubetune_trainer.data.rows import Rows
from kubetune_trainer.data.screening import rows_read, screen
from kubetune_trainer.data.splits import split_off_validation
from kubetune_trainer.data.tokenizing import check_training_weights, model_inputs, tokenize


def _no_progress() -> None:
    pass


def prepare_data(
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    progress: Callable[[], None] = _no_progress,
) -> PreparedData:
    """Load, check, label, split and tokenize the data of a run; `progress` between stages."""
    if config.training.learns_preferences and config.data.messages_column is not None:
        return prepare_conversational_preference_data(config, tokenizer)
    if config.training.learns_preferences:
        return prepare_preference_data(config, tokenizer)
    if config.model.task == "causal-lm" and config.data.messages_column is not None:
        return prepare_conversation_data(config, tokenizer)
    if config.model.task == "causal-lm":
        return prepare_language_model_data(config, tokenizer)
    data = config.data
    train = read_source(data.train, "data.train")
    progress()
    validation = (
        None if data.validation is None else read_source(data.validation, "data.validation")
    )
    progress()
    audited = config.needs_validation_groups()
    # Cross-validation's folds validate on training rows: the training file holds them.
    holds_validation = validation is None or config.evaluation.cross_validation is not None
    check_columns(
        train, training_file_columns(data, holds_validation=holds_validation, audited=audited)
    )
    if validation is not None:
        check_columns(validation, validation_file_columns(data, audited=audited))
    declared = config.model.labels is not None
    train, screened = screen(train, "train", config, config.model.labels)
    labels = config.model.labels or labels_of(train, data.label_column)
    train = encode_labels(train, labels, data.label_column, declared=declared)
    check_two_classes(train, labels)
    if validation is None:
        train, validation = split_off_validation(
            train, labels, data.validation_split, config.training.seed
        )
    else:
        validation, screened_validation = screen(validation, "validation", config, labels)
        screened += screened_validation
        validation = encode_labels(validation, labels, data.label_column, declared=declared)
    train, screened = with_synthetic_rows(train, labels, config, screened)
    rows_in = rows_read(train, validation, screened)
    arriving = _Tally.of(train, validation, labels, data)
    progress()
    train, validation, quality = apply_quality_rules(
        train, validation, config, tokenizer, screened=screened
    )
    progress()
    return _finish(
        train, validation, quality, arriving, rows_in, labels, config, tokenizer, progress
    )


def _finish(
    train: Rows,
    validation: Rows,
    quality: QualityReport,
    arriving: _Tally,
    rows_in: dict[str, int],
    labels: Sequence[str],
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    progress: Callable[[], None],
) -> PreparedData:
    """After the rules: add and resample training rows, weigh classes, tokenize, report."""
    data, seed = config.data, config.training.seed
    check_metric_computable(config, labels, validation)
    train = replace(train, sources=np.arange(train.table.num_rows, dtype=np.int64))
    synthetic = {"synthetic": synthetic_count(train)} if data.augmentation else {}
    train, augmented = with_augmented_rows(train, validation, len(labels), config)
    progress()
    train, oversampled, removed = resampled(train, len(labels), data.balance, seed)
    check_batch_size(config.training.batch_size, train)
    counts = np.bincount(train.label_ids, minlength=len(labels))
    weights = class_weights(
        counts.tolist(), data.balance.class_weights, data.balance.beta, names=labels
    )
    train_inputs, validation_inputs = model_inputs(train, data), model_inputs(validation, data)
    if data.weight_column is not None:
        check_training_weights(train_inputs, data.weight_column, train.origin)
    train_set = tokenize(train_inputs, tokenizer, data.max_length, "training")
    progress()
    validation_set = tokenize(validation_inputs, tokenizer, data.max_length, "validation")
    progress()
    leaving = _Tally.of(train, validation, labels, data)
    report = DataReport(
        quality=quality,
        labels=list(labels),
        classes=arriving.classes_with(leaving),
        groups=arriving.groups_with(leaving),
        lengths={
            "train": length_summary(np.asarray(train_set["length"][:]), data.max_length),
            "validation": length_summary(np.asarray(validation_set["length"][:]), data.max_length),
        },
        added={**synthetic, **augmented, **oversampled},
        removed=removed,
        recommendation=recommendation(
            list(arriving.classes["train"].values()), labels, data.balance
        ),
        warnings=classes_without_rows(labels, counts, _classes_field(config)),
    )
    return PreparedData(
        train=train_set,
        validation=validation_set,
        labels=list(labels),
        train_class_counts=dict(zip(labels, counts.tolist(), strict=True)),
        class_weights=weights,
        train_texts=train_inputs.column("text").to_pylist(),
        train_groups=present_sensitive_groups(train, data.sensitive_columns),
        train_sources=train.sources,
        validation_texts=validation_inputs.column("text").to_pylist(),
        validation_groups=present_sensitive_groups(validation, data.sensitive_columns),
        rows={
            **rows_in,
            "train_out": len(train_set),
            "validation_out": len(validation_set),
        },
        majority_rate=_majority_rate(validation.label_ids),
        report=report,
    )


def prepare_audit_rows(
    config: TrainingConfig, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str]
) -> AuditRows | None:
    """bias.auditData read, checked and tokenized like a validation file; None without it."""
    if config.bias is None or config.bias.audit_data is None:
        return None
    data = config.data
    rows = read_source(config.bias.audit_data, "bias.auditData")
    check_columns(rows, validation_file_columns(data, audited=True))
    rows, _ = screen(rows, "audit", config, labels)
    rows = encode_labels(rows, labels, data.label_column, declared=True)
    inputs = model_inputs(rows, data)
    return AuditRows(
        rows=tokenize(inputs, tokenizer, data.max_length, "audit"),
        texts=inputs.column("text").to_pylist(),
        groups=sensitive_groups(rows, data.sensitive_columns),
    )


@dataclass(frozen=True)
class _Tally:
    """Rows per class and per sensitive group in each split, at one point of the pipeline."""

    classes: dict[str, Counts]
    """split -> class -> rows"""
    groups: dict[str, dict[str, Counts]]
    """sensitive column -> split -> group -> rows (splits whose file has the column)"""

    @classmethod
    def of(cls, train: Rows, validation: Rows, labels: Sequence[str], data: DataSpec) -> _Tally:
        splits = {"train": train, "validation": validation}
        classes = {name: class_counts(rows.label_ids, labels) for name, rows in splits.items()}
        groups = {
            column: {
                name: group_counts(group_column(rows, column))
                for name, rows in splits.items()
                if column in rows.table.column_names
            }
            for column in data.sensitive_columns
        }
        return cls(classes, groups)

    def classes_with(self, later: _Tally) -> dict[str, BeforeAfter]:
        """Each split's classes as they arrived ("in") and as they left ("out")."""
        return {
            name: {"in": self.classes[name], "out": later.classes[name]} for name in self.classes
        }

    def groups_with(self, later: _Tally) -> dict[str, dict[str, BeforeAfter]]:
        """Each sensitive column's groups per split, in and out."""
        return {
            column: {
                name: {"in": counts, "out": later.groups[column].get(name, {})}
                for name, counts in splits.items()
            }
            for column, splits in self.groups.items()
        }


def _classes_field(config: TrainingConfig) -> str:
    """Where the classes come from: model.labels, else the training rows' labels."""
    return "data.labelColumn" if config.model.labels is None else "model.labels"


def _majority_rate(label_ids: npt.NDArray[np.int64]) -> float:
    return float(np.bincount(label_ids).max() / len(label_ids))
