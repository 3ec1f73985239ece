"""What the data stage hands the rest of the run.

The recipe, cross-validation, the bias audit, the data cache and the report all read the
prepared data, and none of them should know how it was made. `PreparedData` is that
boundary: tokenized rows for the model, and beside them the texts, groups, counts and the
data report that evaluation and reporting need. It has a module of its own because both
pipelines (classification and causal language models) build it.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import numpy.typing as npt

from kubetune_trainer.data.quality import QualityReport
from kubetune_trainer.data.report import DataReport


@dataclass
class PreparedData:
    """Tokenized training and validation rows and what the rest of the run needs to know.

    `rows` counts each split as it came in (after the validation split, when one is held
    out of the training rows) and as it goes out to the model (after the quality rules).
    """

    train: datasets.Dataset
    """input_ids, attention_mask (token_type_ids when the tokenizer makes them), labels,
    length (tokens), and weight when data.weightColumn is set; a preference run's rows hold
    chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels and length instead
    (preferences.py)."""
    validation: datasets.Dataset
    """The same columns as train."""
    labels: list[str]
    """Class names in class-id order."""
    train_class_counts: dict[str, int]
    """Training rows per class name."""
    class_weights: list[float] | None
    """Loss weight per class id (data.balance), or None for unweighted."""
    train_texts: list[str]
    """The text column of the training rows, aligned with `train` (cross-validation folds)."""
    train_groups: dict[str, list[str]]
    """Each sensitive column's values for the training rows, for the columns the file has."""
    train_sources: npt.NDArray[np.int64]
    """Per training row, the row that the quality rules kept and this row is, or was made from
    (augmentation and oversampling make rows from others): cross-validation folds split on it,
    so that no fold validates on a copy of a row it trained on."""
    validation_texts: list[str]
    """The text column of the validation rows, aligned with `validation`."""
    validation_groups: dict[str, list[str]]
    """Each sensitive column's values for the validation rows, as strings, aligned."""
    rows: dict[str, int]
    """train_in, validation_in, train_out, validation_out."""
    majority_rate: float
    """Share of the most frequent class in the validation rows (the accuracy of guessing it)."""
    report: DataReport
    """What the data stage found and did: the quality rules, classes, groups, lengths."""

    @property
    def quality(self) -> QualityReport:
        """What the data-quality rules found and did (data.quality)."""
        return self.report.quality


@dataclass(frozen=True)
class AuditRows:
    """The rows a bias audit judges the model on: tokenized, with their texts and groups."""

    rows: datasets.Dataset
    texts: list[str]
    groups: dict[str, list[str]]
