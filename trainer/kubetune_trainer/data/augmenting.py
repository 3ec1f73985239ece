"""More training rows: synthetic sources and EDA augmentation.

Scarce classes and under-represented groups are where a fine-tune fails, and more rows of
them help. data.augmentation adds rows from synthetic sources (files read and checked like
the training file, and marked so that the data report counts them apart) and rows made by
EDA edits of the training texts (augment.py). Made texts that are already training or
validation texts are left out: they would only weigh a row twice, or leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from kubetune_trainer.config import DataSource, TrainingConfig
from kubetune_trainer.data.augment import (
    AugmentationError,
    augment_texts,
    plan_augmentation,
    read_synonyms,
)
from kubetune_trainer.data.columns import as_text, check_columns, training_file_columns
from kubetune_trainer.data.labels import encode_labels
from kubetune_trainer.data.loading import read_source
from kubetune_trainer.data.quality import RuleResult, normalise
from kubetune_trainer.data.rows import DataError, Rows
from kubetune_trainer.data.screening import screen

SYNTHETIC_COLUMN = "__kubetune_synthetic"
"""A column that marks synthetic rows (data.augmentation.syntheticSources) among the training
rows while the quality rules run; the model never sees it."""


def with_synthetic_rows(
    train: Rows, labels: Sequence[str], config: TrainingConfig, screened: list[RuleResult]
) -> tuple[Rows, list[RuleResult]]:
    """The training rows followed by the synthetic sources' rows, marked as synthetic, and
    the per-file rules' results with those of the synthetic files added."""
    spec = config.data.augmentation
    if spec is None or not spec.synthetic_sources:
        return train, screened
    roles = training_file_columns(config.data, holds_validation=False, audited=False)
    marked = _marked(train, synthetic=False)
    for index, source in enumerate(spec.synthetic_sources):
        rows = read_source(source, f"data.augmentation.syntheticSources[{index}]")
        check_columns(rows, roles)
        rows, results = screen(rows, "train", config, labels)
        screened = [*screened, *results]
        rows = encode_labels(rows, labels, config.data.label_column, declared=True)
        names = marked.table.column_names
        rows = replace(rows, table=_marked(rows, synthetic=True).table.select(names))
        marked = marked.extended(_as_text_columns(rows, marked.table.schema))
    return marked, screened


def _marked(rows: Rows, *, synthetic: bool) -> Rows:
    flags = pa.array(np.full(rows.table.num_rows, synthetic))
    return replace(rows, table=rows.table.append_column(SYNTHETIC_COLUMN, flags))


def _as_text_columns(rows: Rows, schema: pa.Schema) -> Rows:
    """`rows` with the column types of `schema` where they differ (CSV text vs JSON numbers)."""
    try:
        return replace(rows, table=rows.table.cast(schema))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DataError(
            f"data.augmentation.syntheticSources: the columns of {rows.origin} do not match "
            f"the training file's types ({error})"
        ) from None


def synthetic_count(rows: Rows) -> int:
    if SYNTHETIC_COLUMN not in rows.table.column_names:
        return 0
    return int(pc.sum(rows.table.column(SYNTHETIC_COLUMN)).as_py() or 0)


def with_augmented_rows(
    train: Rows, validation: Rows, num_classes: int, config: TrainingConfig
) -> tuple[Rows, dict[str, int]]:
    """The training rows and the new rows EDA makes from them (only texts not seen before)."""
    spec = config.data.augmentation
    if spec is None or spec.multiple == 0:
        return train, {}
    seed, column = config.training.seed, config.data.text_column
    synonyms = None if spec.synonyms is None else _synonyms(spec.synonyms)
    sources = plan_augmentation(train.label_ids, num_classes, spec, seed)
    texts = as_text(train, column, "data.textColumn")
    made = augment_texts(texts.to_pylist(), sources, spec, seed, synonyms)
    new_texts = pa.array(made.texts, pa.string())
    new = train.take(made.sources)
    position = new.table.column_names.index(column)
    new = replace(new, table=new.table.set_column(position, column, new_texts))
    new = new.take(_novel(new_texts, [texts, as_text(validation, column, "data.textColumn")]))
    text_typed = replace(train, table=train.table.set_column(position, column, texts))
    return text_typed.extended(new), {"augmented": new.table.num_rows}


def _novel(made: pa.Array, known: list[pa.ChunkedArray]) -> npt.NDArray[np.int64]:
    """Positions of the made texts whose normalised text is new: in none of `known` (training
    and validation texts) and not made before (a short row's edits often coincide)."""
    made_forms = normalise(made)
    known_forms = pa.concat_arrays([normalise(texts).combine_chunks() for texts in known])
    unseen = pc.invert(pc.is_in(made_forms, value_set=known_forms)).to_numpy(zero_copy_only=False)
    codes = pc.index_in(made_forms, value_set=pc.unique(made_forms)).to_numpy(zero_copy_only=False)
    first = np.zeros(len(codes), dtype=np.bool_)
    first[np.unique(codes, return_index=True)[1]] = True
    return np.flatnonzero(unseen & first)


def _synonyms(source: DataSource) -> dict[str, list[str]]:
    rows = read_source(source, "data.augmentation.synonyms")
    try:
        return read_synonyms(rows.table, rows.origin)
    except AugmentationError as error:
        raise DataError(str(error)) from None
