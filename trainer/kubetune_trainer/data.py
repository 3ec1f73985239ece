"""The data pipeline of sequence classification: files in, tokenized batches out.

A fine-tune fails most often on its data, and a data problem must fail the job with a
message that names the file, the column or the manifest field, and the counts (it becomes
the DataValidated condition), never with a pyarrow traceback. So every stage checks what
it relies on and raises `DataError` in the user's terms.

The stages, in order (docs/data.md describes them for users): load each source into an
Arrow table (CSV cells are read as text, so "007" stays "007"); check the columns; the
per-file quality rules (missing values, unknown labels); map the label column to class ids;
hold out a stratified validation split when no validation source is given; add the
synthetic rows; the quality rules of quality.py (a DataError when they refuse the data);
augmentation (augment.py) and resampling (balance.py) of the training rows; class weights;
then tokenize without padding (batches are padded to their longest row by the collator,
and `LengthGroupedSampler` puts rows of similar length together so that padding stays
small). The data report (data_report.py) counts classes and groups as they reach the rules
and as they leave for the model. Every stage works on whole Arrow columns (pyarrow.compute,
numpy, batched tokenizer calls), never on one row at a time in Python, except the EDA edits,
which are per row by nature and run only on the (scarce) training rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from datasets.table import InMemoryTable
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch.utils.data import Sampler
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.augment import (
    AugmentationError,
    augment_texts,
    plan_augmentation,
    read_synonyms,
)
from kubetune_trainer.balance import recommendation, resample
from kubetune_trainer.config import (
    BalanceSpec,
    DataFormat,
    DataQualitySpec,
    DataSource,
    DataSpec,
    TrainingConfig,
    infer_format,
)
from kubetune_trainer.data_report import (
    BeforeAfter,
    Counts,
    DataReport,
    class_counts,
    group_counts,
    length_summary,
)
from kubetune_trainer.quality import (
    Finding,
    LengthSettings,
    Mask,
    QualityError,
    QualityReport,
    QualitySettings,
    RuleMode,
    RuleResult,
    RuleSettings,
    SplitInput,
    check,
    normalise,
    rule_result,
)
from kubetune_trainer.sources import SourceError, resolve_local

MISSING_GROUP = "(missing)"
"""The group of a validation row whose sensitive column is empty."""
MEGA_BATCH_FACTOR = 50
"""LengthGroupedSampler sorts by length within windows of this many batches."""
_SHOWN = 5
"""How many example rows or values a message lists."""
TOKEN_COUNT_BATCH = 1024
"""Rows per tokenizer call when the length rule counts tokens."""
_INTEGER_TEXT = r"^-?[0-9]+$"
_CLASS_ID_TEXT = r"^[0-9]{1,9}$"


class DataError(Exception):
    """Data that cannot be trained on; the message names the file, the column and the counts."""


@dataclass
class PreparedData:
    """Tokenized training and validation rows and what the rest of the run needs to know.

    `rows` counts each split as it came in (after the validation split, when one is held
    out of the training rows) and as it goes out to the model (after the quality rules).
    """

    train: datasets.Dataset
    """input_ids, attention_mask (token_type_ids when the tokenizer makes them), labels,
    length (tokens), and weight when data.weightColumn is set."""
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
class _Rows:
    """The rows of one split on their way to the model, and where they came from."""

    table: pa.Table
    origin: str
    """The file or directory, for messages."""
    positions: npt.NDArray[np.int64]
    """Where each row is in `origin` (from 0), for messages once a split has taken rows."""
    label_ids: npt.NDArray[np.int64] = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.int64)
    )
    """Class id per row, once the labels are encoded."""
    sources: npt.NDArray[np.int64] = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.int64)
    )
    """For training rows after the quality rules: the kept row each one is, or was made from."""

    def take(self, indices: npt.NDArray[np.int64]) -> _Rows:
        return replace(
            self,
            table=self.table.take(indices),
            positions=self.positions[indices],
            label_ids=self.label_ids[indices] if self.label_ids.size else self.label_ids,
            sources=self.sources[indices] if self.sources.size else self.sources,
        )

    def extended(self, more: _Rows) -> _Rows:
        """These rows followed by `more` (same columns; `more` keeps its own positions)."""
        return replace(
            self,
            table=pa.concat_tables([self.table, more.table.select(self.table.column_names)]),
            positions=np.concatenate([self.positions, more.positions]),
            label_ids=np.concatenate([self.label_ids, more.label_ids]),
            sources=np.concatenate([self.sources, more.sources]),
        )

    def row_numbers(self, mask: pa.ChunkedArray) -> str:
        """The first few rows where `mask` is true, numbered in the file from 1 (no header)."""
        numbers = self.positions[np.flatnonzero(mask.to_numpy(zero_copy_only=False))] + 1
        shown = ", ".join(str(number) for number in numbers[:_SHOWN])
        more = f" and {len(numbers) - _SHOWN} more" if len(numbers) > _SHOWN else ""
        return f"data {'row' if len(numbers) == 1 else 'rows'} {shown}{more}"


# --- loading ---------------------------------------------------------------------------


def load_table(source: DataSource, field: str) -> datasets.Dataset:
    """The rows of `source` (one file, or a directory of shards of one format).

    `field` is the manifest path of the source (e.g. `data.train`) for messages. CSV cells
    are read as text; JSON lines columns that mix types are read as text.
    """
    return datasets.Dataset(InMemoryTable(_read_source(source, field).table))


def _read_source(source: DataSource, field: str) -> _Rows:
    try:
        path = resolve_local(source.source, f"{field}.source")
    except SourceError as error:
        raise DataError(str(error)) from error
    data_format, files = _data_files(path, source.resolved_format(), field)
    table = _concat_shards([_read_file(file, data_format, field) for file in files], path, field)
    if table.num_rows == 0:
        raise DataError(f"{field}.source: {path} has no rows")
    return _Rows(table, str(path), np.arange(table.num_rows, dtype=np.int64))


def _concat_shards(tables: list[pa.Table], path: Path, field: str) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as error:
        raise DataError(
            f"{field}.source: the files in {path} do not share their columns' types ({error})"
        ) from None


def _data_files(
    path: Path, declared: DataFormat | None, field: str
) -> tuple[DataFormat, list[Path]]:
    """The format and the data files at `path`: the file itself, or a directory's shards."""
    if path.is_file():
        data_format = declared or infer_format(path.name)
        if data_format is None:
            raise DataError(f"{field}.format: cannot tell the format of {path}; set it")
        return data_format, [path]
    by_format = _shards_by_format(path)
    if declared is None and len(by_format) > 1:
        found = ", ".join(f"{len(files)} {kind}" for kind, files in sorted(by_format.items()))
        raise DataError(f"{field}.format: {path} holds files of several formats ({found}); set it")
    data_format = declared or next(iter(by_format), None)
    if data_format is None or not by_format.get(data_format):
        kind = declared or "csv, jsonl or parquet"
        raise DataError(f"{field}.source: directory {path} holds no {kind} files")
    return data_format, by_format[data_format]


def _shards_by_format(directory: Path) -> dict[DataFormat, list[Path]]:
    by_format: dict[DataFormat, list[Path]] = {}
    for file in sorted(directory.rglob("*")):
        hidden = any(part.startswith(".") for part in file.relative_to(directory).parts)
        data_format = infer_format(file.name)
        if file.is_file() and not hidden and data_format is not None:
            by_format.setdefault(data_format, []).append(file)
    return by_format


def _read_file(path: Path, data_format: DataFormat, field: str) -> pa.Table:
    try:
        _check_looks_like(path, data_format, field)
        table = _READERS[data_format](path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise DataError(_read_failure(path, data_format, field, error)) from None
    _check_unique_columns(table, path, field)
    return table


def _check_looks_like(path: Path, data_format: DataFormat, field: str) -> None:
    looks_like = _sniff_format(path)
    if looks_like is not None and looks_like != data_format:
        raise DataError(
            f"{field}.source: {path} looks like {looks_like}, not {data_format}; "
            f"set {field}.format to {looks_like} or give a {data_format} file"
        )


def _sniff_format(path: Path) -> DataFormat | None:
    """The format the first bytes of an uncompressed file give away, if they do."""
    with path.open("rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    return None


def _read_csv(path: Path) -> pa.Table:
    parse = pacsv.ParseOptions(newlines_in_values=True)
    names = pacsv.open_csv(path, parse_options=parse).schema.names
    text = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names}, strings_can_be_null=False
    )
    return pacsv.read_csv(path, parse_options=parse, convert_options=text)


def _read_jsonl(path: Path) -> pa.Table:
    try:
        return pajson.read_json(path)
    except pa.ArrowInvalid as error:
        if "changed from" not in str(error):
            raise
        return _read_jsonl_mixed_types(path)


def _read_jsonl_mixed_types(path: Path) -> pa.Table:
    """Arrow needs one type per column; pandas reads mixed ones as objects, made text here."""
    frame = pd.read_json(path, lines=True, dtype=False)
    for name in frame.columns:
        if pd.api.types.infer_dtype(frame[name], skipna=True) in ("mixed", "mixed-integer"):
            frame[name] = frame[name].astype("string")
    return pa.Table.from_pandas(frame, preserve_index=False)


def _read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path)


_READERS: dict[DataFormat, Callable[[Path], pa.Table]] = {
    "csv": _read_csv,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
}


def _read_failure(path: Path, data_format: DataFormat, field: str, error: Exception) -> str:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = f"{field}.source: {path}"
    if detail.startswith(("Empty CSV file", "Empty JSON file")):
        return f"{where} is empty"
    if "Expected" in detail and "columns, got" in detail:
        return f"{where} has a row with the wrong number of cells: {_ragged_row(path, detail)}"
    other_format = f"set {field}.format if the file is in another format"
    return f"{where} is not a readable {data_format} file ({detail}); {other_format}"


def _ragged_row(path: Path, detail: str) -> str:
    """pyarrow numbers the bad row only when it parses on one thread: parse again to ask."""
    found: list[str] = []

    def note(row: Any) -> str:
        found.append(
            f"row {row.number} (counting the header), {row.actual_columns} cells "
            f"where the header has {row.expected_columns}: {row.text[:200]}"
        )
        return "error"

    single = pacsv.ReadOptions(use_threads=False)
    parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=note)
    with contextlib.suppress(pa.ArrowInvalid):
        pacsv.read_csv(path, read_options=single, parse_options=parse)
    return found[0] if found else detail.removeprefix("CSV parse error: ")


def _check_unique_columns(table: pa.Table, path: Path, field: str) -> None:
    names: list[str] = table.column_names
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{field}.source: {path} has the column {repeated[0]!r} more than once")


# --- preparing ---------------------------------------------------------------------------


def prepare_data(config: TrainingConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Load, check, label, split and tokenize the data of a run."""
    if config.model.task == "causal-lm":
        return prepare_language_model_data(config, tokenizer)
    data = config.data
    train = _read_source(data.train, "data.train")
    validation = (
        None if data.validation is None else _read_source(data.validation, "data.validation")
    )
    _check_columns(train, _training_file_columns(data, holds_validation=validation is None))
    if validation is not None:
        _check_columns(validation, _validation_file_columns(data))
    declared = config.model.labels is not None
    train, screened = _screen(train, "train", config, config.model.labels)
    labels = config.model.labels or _labels_of(train, data.label_column)
    train = _encode_labels(train, labels, data.label_column, declared=declared)
    if validation is None:
        train, validation = _split_off_validation(
            train, labels, data.validation_split, config.training.seed
        )
    else:
        validation, screened_validation = _screen(validation, "validation", config, labels)
        screened += screened_validation
        validation = _encode_labels(validation, labels, data.label_column, declared=declared)
    train, screened = _with_synthetic_rows(train, labels, config, screened)
    rows_in = _rows_read(train, validation, screened)
    arriving = _Tally.of(train, validation, labels, data)
    train, validation, quality = apply_quality_rules(
        train, validation, config, tokenizer, screened=screened
    )
    return _finish(train, validation, quality, arriving, rows_in, labels, config, tokenizer)


def _finish(
    train: _Rows,
    validation: _Rows,
    quality: QualityReport,
    arriving: _Tally,
    rows_in: dict[str, int],
    labels: Sequence[str],
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
) -> PreparedData:
    """After the rules: add and resample training rows, weigh classes, tokenize, report."""
    data, seed = config.data, config.training.seed
    train = replace(train, sources=np.arange(train.table.num_rows, dtype=np.int64))
    synthetic = {"synthetic": _synthetic_count(train)} if data.augmentation else {}
    train, augmented = _augmented(train, validation, len(labels), config)
    train, oversampled, removed = _resampled(train, len(labels), data.balance, seed)
    _check_batch_size(config.training.batch_size, train)
    counts = np.bincount(train.label_ids, minlength=len(labels))
    weights = class_weights(
        counts.tolist(), data.balance.class_weights, data.balance.beta, names=labels
    )
    train_inputs, validation_inputs = _model_inputs(train, data), _model_inputs(validation, data)
    train_set = _tokenize(train_inputs, tokenizer, data.max_length, "training")
    validation_set = _tokenize(validation_inputs, tokenizer, data.max_length, "validation")
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
    )
    return PreparedData(
        train=train_set,
        validation=validation_set,
        labels=list(labels),
        train_class_counts=dict(zip(labels, counts.tolist(), strict=True)),
        class_weights=weights,
        train_texts=train_inputs.column("text").to_pylist(),
        train_groups=_present_groups(train, data.sensitive_columns),
        train_sources=train.sources,
        validation_texts=validation_inputs.column("text").to_pylist(),
        validation_groups=_groups(validation, data.sensitive_columns),
        rows={
            **rows_in,
            "train_out": len(train_set),
            "validation_out": len(validation_set),
        },
        majority_rate=_majority_rate(validation.label_ids),
        report=report,
    )


@dataclass(frozen=True)
class AuditRows:
    """The rows a bias audit judges the model on: tokenized, with their texts and groups."""

    rows: datasets.Dataset
    texts: list[str]
    groups: dict[str, list[str]]


def prepare_audit_rows(
    config: TrainingConfig, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str]
) -> AuditRows | None:
    """bias.auditData read, checked and tokenized like a validation file; None without it."""
    if config.bias is None or config.bias.audit_data is None:
        return None
    data = config.data
    rows = _read_source(config.bias.audit_data, "bias.auditData")
    _check_columns(rows, _validation_file_columns(data))
    rows, _ = _screen(rows, "audit", config, labels)
    rows = _encode_labels(rows, labels, data.label_column, declared=True)
    inputs = _model_inputs(rows, data)
    return AuditRows(
        rows=_tokenize(inputs, tokenizer, data.max_length, "audit"),
        texts=inputs.column("text").to_pylist(),
        groups=_groups(rows, data.sensitive_columns),
    )


def apply_quality_rules(
    train: _Rows,
    validation: _Rows,
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    screened: Sequence[RuleResult] = (),
) -> tuple[_Rows, _Rows, QualityReport]:
    """The rows the data-quality rules keep, and their report (row numbers are file positions).

    `screened` holds what the per-file rules (`_screen`: missingValues, unknownLabels) did
    before the labels were encoded and the validation split made: the report opens with
    them and the dropped share counts them. The length rule counts tokens with `tokenizer`.
    """
    data = config.data
    label = data.label_column if config.model.task == "sequence-classification" else None
    for rows in (train, validation):  # a column of lists or structs is no text to check
        _as_text(rows, data.text_column, "data.textColumn")
    train_input, validation_input = (
        SplitInput(rows.table, rows.positions, _token_counts(rows, data, tokenizer), rows.origin)
        for rows in (train, validation)
    )
    try:
        keep_train, keep_validation, report = check(
            train_input,
            validation_input,
            text_column=data.text_column,
            label_column=label,
            settings=quality_settings(data.quality, data.max_length),
            earlier=screened,
            label_noise=_label_noise_detector(train, config),
        )
    except QualityError as error:
        raise DataError(_quality_failure(error)) from None
    assert keep_validation is not None
    kept_train = train.take(np.flatnonzero(keep_train))
    kept_validation = validation.take(np.flatnonzero(keep_validation))
    return kept_train, kept_validation, report


def _quality_failure(error: QualityError) -> str:
    if error.rule == "maxDroppedFraction":
        fix = "fix the data, change the rules' modes, or raise the limit"
    else:
        fix = f"fix those rows, or set data.quality.{error.rule}.mode to drop or warn"
    return f"data.quality.{error.rule}: {error}; {fix}"


def quality_settings(spec: DataQualitySpec, max_length: int) -> QualitySettings:
    """The engine's settings from the config section (length.maxTokens defaults to maxLength)."""
    length = spec.length
    upper = max_length if length.max_tokens is None else length.max_tokens
    return QualitySettings(
        duplicates=RuleSettings(spec.duplicates.mode),
        conflicting_labels=RuleSettings(spec.conflicting_labels.mode),
        empty=RuleSettings(spec.empty.mode),
        garbage=RuleSettings(spec.garbage.mode),
        leakage=RuleSettings(spec.leakage.mode),
        length=LengthSettings(length.mode, min_tokens=length.min_tokens, max_tokens=upper),
        label_noise=None if spec.label_noise is None else RuleSettings(spec.label_noise.mode),
        max_non_printable_fraction=spec.max_non_printable_fraction,
        max_dropped_fraction=spec.max_dropped_fraction,
        examples_per_rule=spec.examples_per_rule,
    )


# --- after the rules: synthetic and augmented rows, resampling, the tally for the report --


SYNTHETIC_COLUMN = "__kubetune_synthetic"
"""A column that marks synthetic rows (data.augmentation.syntheticSources) among the training
rows while the quality rules run; the model never sees it."""


def _with_synthetic_rows(
    train: _Rows, labels: Sequence[str], config: TrainingConfig, screened: list[RuleResult]
) -> tuple[_Rows, list[RuleResult]]:
    """The training rows followed by the synthetic sources' rows, marked as synthetic, and
    the per-file rules' results with those of the synthetic files added."""
    spec = config.data.augmentation
    if spec is None or not spec.synthetic_sources:
        return train, screened
    roles = _training_file_columns(config.data, holds_validation=False)
    marked = _marked(train, synthetic=False)
    for index, source in enumerate(spec.synthetic_sources):
        rows = _read_source(source, f"data.augmentation.syntheticSources[{index}]")
        _check_columns(rows, roles)
        rows, results = _screen(rows, "train", config, labels)
        screened = [*screened, *results]
        rows = _encode_labels(rows, labels, config.data.label_column, declared=True)
        names = marked.table.column_names
        rows = replace(rows, table=_marked(rows, synthetic=True).table.select(names))
        marked = marked.extended(_as_text_columns(rows, marked.table.schema))
    return marked, screened


def _marked(rows: _Rows, *, synthetic: bool) -> _Rows:
    flags = pa.array(np.full(rows.table.num_rows, synthetic))
    return replace(rows, table=rows.table.append_column(SYNTHETIC_COLUMN, flags))


def _as_text_columns(rows: _Rows, schema: pa.Schema) -> _Rows:
    """`rows` with the column types of `schema` where they differ (CSV text vs JSON numbers)."""
    try:
        return replace(rows, table=rows.table.cast(schema))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DataError(
            f"data.augmentation.syntheticSources: the columns of {rows.origin} do not match "
            f"the training file's types ({error})"
        ) from None


def _synthetic_count(rows: _Rows) -> int:
    if SYNTHETIC_COLUMN not in rows.table.column_names:
        return 0
    return int(pc.sum(rows.table.column(SYNTHETIC_COLUMN)).as_py() or 0)


def _augmented(
    train: _Rows, validation: _Rows, num_classes: int, config: TrainingConfig
) -> tuple[_Rows, dict[str, int]]:
    """The training rows and the new rows EDA makes from them (only texts not seen before)."""
    spec = config.data.augmentation
    if spec is None or spec.multiple == 0:
        return train, {}
    seed, column = config.training.seed, config.data.text_column
    synonyms = None if spec.synonyms is None else _synonyms(spec.synonyms)
    sources = plan_augmentation(train.label_ids, num_classes, spec, seed)
    texts = _as_text(train, column, "data.textColumn")
    made = augment_texts(texts.to_pylist(), sources, spec, seed, synonyms)
    new_texts = pa.array(made.texts, pa.string())
    new = train.take(made.sources)
    position = new.table.column_names.index(column)
    new = replace(new, table=new.table.set_column(position, column, new_texts))
    new = new.take(_novel(new_texts, [texts, _as_text(validation, column, "data.textColumn")]))
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
    rows = _read_source(source, "data.augmentation.synonyms")
    try:
        return read_synonyms(rows.table, rows.origin)
    except AugmentationError as error:
        raise DataError(str(error)) from None


def _resampled(
    train: _Rows, num_classes: int, spec: BalanceSpec, seed: int
) -> tuple[_Rows, dict[str, int], dict[str, int]]:
    """The training rows after data.balance.resample, and the rows it added and removed."""
    if spec.resample == "none":
        return train, {}, {}
    indices = resample(train.label_ids, num_classes, spec.resample, spec.target_ratio, seed)
    change = len(indices) - train.table.num_rows
    added = {"oversampled": change} if change > 0 else {}
    removed = {"undersampled": -change} if change < 0 else {}
    return train.take(indices), added, removed


@dataclass(frozen=True)
class _Tally:
    """Rows per class and per sensitive group in each split, at one point of the pipeline."""

    classes: dict[str, Counts]
    """split -> class -> rows"""
    groups: dict[str, dict[str, Counts]]
    """sensitive column -> split -> group -> rows (splits whose file has the column)"""

    @classmethod
    def of(cls, train: _Rows, validation: _Rows, labels: Sequence[str], data: DataSpec) -> _Tally:
        splits = {"train": train, "validation": validation}
        classes = {name: class_counts(rows.label_ids, labels) for name, rows in splits.items()}
        groups = {
            column: {
                name: group_counts(_group_column(rows, column))
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


def _token_counts(
    rows: _Rows, data: DataSpec, tokenizer: PreTrainedTokenizerBase
) -> npt.NDArray[np.int64]:
    """Tokens per row, text and text pair together, without special tokens or truncation.

    Rows without text count 0 (the empty rule has them, and the length rule skips them).
    """
    texts = pc.fill_null(_as_text(rows, data.text_column, "data.textColumn"), "")
    pairs = None
    if data.text_pair_column is not None:
        pairs = pc.fill_null(_as_text(rows, data.text_pair_column, "data.textPairColumn"), "")
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


def _label_noise_detector(train: _Rows, config: TrainingConfig) -> Callable[[Mask], Finding] | None:
    """data.quality.labelNoise on the training rows the engine still keeps, or None when off."""
    spec = config.data.quality.label_noise
    if spec is None or config.model.task != "sequence-classification":
        return None
    # Imported here: cleanlab takes most of a second to import, and most runs do not ask.
    from kubetune_trainer.label_noise import find_suspects

    names = _class_names(train, config)
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


def _joined_texts(rows: _Rows, data: DataSpec) -> pa.ChunkedArray:
    """Each row's text, and its text pair after a space: what the label-noise model reads."""
    texts = pc.fill_null(_as_text(rows, data.text_column, "data.textColumn"), "")
    if data.text_pair_column is None:
        return texts
    pairs = pc.fill_null(_as_text(rows, data.text_pair_column, "data.textPairColumn"), "")
    joined: pa.ChunkedArray = pc.binary_join_element_wise(texts, pairs, " ")
    return joined


def _class_names(rows: _Rows, config: TrainingConfig) -> npt.NDArray[np.object_]:
    """Class name per class id: model.labels, else the labels the training rows carry."""
    if config.model.labels is not None:
        return np.asarray(config.model.labels, dtype=object)
    ids, first = np.unique(rows.label_ids, return_index=True)
    names = np.full(int(ids.max(initial=0)) + 1, None, dtype=object)
    values = _label_values(rows, config.data.label_column)
    names[ids] = values.take(pa.array(first)).to_pylist()
    return names


def _model_columns(data: DataSpec) -> list[tuple[str, str]]:
    roles = [("data.textColumn", data.text_column), ("data.labelColumn", data.label_column)]
    if data.text_pair_column is not None:
        roles.append(("data.textPairColumn", data.text_pair_column))
    return roles


def _training_file_columns(data: DataSpec, *, holds_validation: bool) -> list[tuple[str, str]]:
    roles = _model_columns(data)
    if data.weight_column is not None:
        roles.append(("data.weightColumn", data.weight_column))
    if holds_validation:
        roles += [("data.sensitiveColumns", column) for column in data.sensitive_columns]
    return roles


def _validation_file_columns(data: DataSpec) -> list[tuple[str, str]]:
    """A validation file needs no weights: rows without them count once."""
    sensitive = [("data.sensitiveColumns", column) for column in data.sensitive_columns]
    return _model_columns(data) + sensitive


def _check_columns(rows: _Rows, roles: list[tuple[str, str]]) -> None:
    names: list[str] = rows.table.column_names
    for field, column in roles:
        if column not in names:
            raise DataError(
                f"{field}: column {column!r} is not in {rows.origin} (columns: {', '.join(names)})"
            )


def _as_text(rows: _Rows, column: str, field: str) -> pa.ChunkedArray:
    values = rows.table.column(column)
    try:
        return pc.cast(values, pa.string())
    except pa.ArrowException:
        raise DataError(
            f"{field}: column {column!r} of {rows.origin} holds {values.type} values, not text"
        ) from None


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _some(items: Sequence[str], limit: int = 4 * _SHOWN) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _texts(rows: _Rows, column: str, field: str) -> pa.ChunkedArray:
    values = _as_text(rows, column, field)
    _refuse_missing(rows, pc.is_null(values), field, f"no text in column {column!r}")
    return values


def _refuse_missing(rows: _Rows, missing: pa.ChunkedArray, field: str, what: str) -> None:
    """A DataError naming how many rows, and which, lack a value."""
    count = pc.sum(missing).as_py() or 0
    if count:
        raise DataError(
            f"{field}: {rows.origin} has {_rows(count)} with {what} ({rows.row_numbers(missing)})"
        )


# --- labels ----------------------------------------------------------------------------


def _label_values(rows: _Rows, column: str) -> pa.ChunkedArray:
    """The label column as text without surrounding spaces; null where a row has no label."""
    values = pc.utf8_trim_whitespace(_as_text(rows, column, "data.labelColumn"))
    labelled: pa.ChunkedArray = pc.if_else(
        pc.equal(values, ""), pa.scalar(None, pa.string()), values
    )
    return labelled


def _all_match(values: pa.ChunkedArray | pa.Array, pattern: str) -> bool:
    return bool(pc.all(pc.match_substring_regex(values, pattern)).as_py())


def _labels_of(rows: _Rows, column: str) -> list[str]:
    """The class names when model.labels is left out: the distinct labels, sorted.

    Integer labels sort as numbers, so that "10" comes after "9". Rows without a label
    (the missingValues rule has them) name no class.
    """
    distinct = pc.unique(_label_values(rows, column)).drop_null()
    names: list[str] = distinct.to_pylist()
    if len(names) < 2:
        found = f"the label {names[0]!r}" if names else "no label"
        raise DataError(
            f"data.labelColumn: every row of {rows.origin} has {found}; "
            "a classifier needs rows of at least two classes"
        )
    return sorted(names, key=int) if _all_match(distinct, _INTEGER_TEXT) else sorted(names)


def _encode_labels(rows: _Rows, labels: Sequence[str], column: str, *, declared: bool) -> _Rows:
    """Attach each row's class id: the position of its label in `labels`.

    With declared labels (model.labels), a column of integers that names none of them is
    read as class ids when every value is a valid id. The per-file rules (`_screen`) have
    dropped or refused the rows without a label or with an unknown one by now.
    """
    values = _label_values(rows, column)
    unknown = _unknown_mask(values, labels, declared=declared)
    if unknown.any():
        raise DataError(_unknown_labels(rows, values, unknown, labels, declared=declared))
    ids = pc.index_in(values, value_set=pa.array(labels, pa.string()))
    if pc.any(pc.is_null(ids)).as_py():  # every label is a class id (_unknown_mask)
        ids = pc.cast(values, pa.int64())
    return replace(rows, label_ids=ids.to_numpy().astype(np.int64))


def _unknown_mask(values: pa.ChunkedArray, labels: Sequence[str], *, declared: bool) -> Mask:
    """Rows whose label is not a class (rows without a label are not judged here)."""
    unknown = pc.and_(pc.is_valid(values), pc.is_null(pc.index_in(values, pa.array(labels))))
    if declared and _reads_as_class_ids(values, unknown, len(labels)):
        return np.zeros(len(values), dtype=np.bool_)
    return np.asarray(unknown.to_numpy(zero_copy_only=False), dtype=np.bool_)


def _reads_as_class_ids(values: pa.ChunkedArray, unknown: pa.ChunkedArray, classes: int) -> bool:
    labelled = values.drop_null()
    if not len(labelled) or not pc.all(unknown.filter(pc.is_valid(values))).as_py():
        return False
    if not _all_match(labelled, _CLASS_ID_TEXT):
        return False
    return bool(pc.max(pc.cast(labelled, pa.int64())).as_py() < classes)


def _unknown_labels(
    rows: _Rows,
    values: pa.ChunkedArray,
    unknown: Mask,
    labels: Sequence[str],
    *,
    declared: bool,
) -> str:
    matched = pa.chunked_array([unknown])
    tally = pc.value_counts(values.filter(matched))
    found = zip(tally.field("values").to_pylist(), tally.field("counts").to_pylist(), strict=True)
    ranked = sorted(found, key=lambda pair: (-pair[1], pair[0]))
    shown = _some([f"{value!r} ({_rows(count)})" for value, count in ranked], _SHOWN)
    count = sum(count for _, count in ranked)
    if declared:
        known, fix = "model.labels", "fix those rows or add the labels to model.labels"
    else:
        known, fix = "the training rows", "fix those rows or add training rows with those labels"
    return (
        f"data.labelColumn: {rows.origin} has {_rows(count)} with labels that are not in {known} "
        f"({_some(list(labels))}): {shown}, in {rows.row_numbers(matched)}; {fix}, or set "
        "data.quality.unknownLabels.mode to drop to leave them out"
    )


# --- the per-file rules: rows that cannot be encoded go before the labels are -------------


@dataclass(frozen=True)
class _Screened:
    """What one per-file rule matched in one file."""

    matched: Mask
    failure: str
    """The message of a failure (fail mode): the field, the file, counts and rows."""
    details: dict[str, npt.NDArray[Any]] = dataclasses.field(default_factory=dict)


def _screen(
    rows: _Rows, split: str, config: TrainingConfig, labels: Sequence[str] | None
) -> tuple[_Rows, list[RuleResult]]:
    """The rows of one file that the per-file rules keep, and their results.

    data.quality.missingValues (rows without a label, text pair or weight), then, with
    `labels`, data.quality.unknownLabels (rows whose label is not a class). Both run before
    the labels are encoded and the validation split is made, since those need every row to
    have a class; their modes are drop or fail (a row that cannot be encoded cannot be kept).
    """
    spec = config.data.quality
    results: list[RuleResult] = []
    rows_in = rows.table.num_rows
    _as_text(rows, config.data.text_column, "data.textColumn")  # the examples show the text
    missing = _missing_values(rows, config)
    rows = _settle(rows, split, "missingValues", spec.missing_values.mode, missing, config, results)
    if labels is not None and config.model.task == "sequence-classification":
        unknown = _unknown_values(rows, config, labels)
        mode = spec.unknown_labels.mode
        rows = _settle(rows, split, "unknownLabels", mode, unknown, config, results)
    report = QualityReport({split: rows_in}, {split: rows.table.num_rows}, results)
    try:
        report.refuse_excess_drops(split, spec.max_dropped_fraction, rows.origin)
    except QualityError as error:
        raise DataError(_quality_failure(error)) from None
    if not rows.table.num_rows:
        message = report.to_status()["message"]
        raise DataError(f"data.quality: no row of {rows.origin} is left ({message})")
    return rows, results


def _settle(
    rows: _Rows,
    split: str,
    rule: str,
    mode: RuleMode,
    found: _Screened,
    config: TrainingConfig,
    results: list[RuleResult],
) -> _Rows:
    """Fail with the rule's message, or record what it matched and drop those rows."""
    if mode == "fail" and found.matched.any():
        raise DataError(found.failure)
    data = config.data
    label = data.label_column if config.model.task == "sequence-classification" else None
    result = rule_result(
        rule,
        split,
        mode,
        found.matched,
        SplitInput(rows.table, rows.positions, origin=rows.origin),
        text_column=data.text_column,
        label_column=label,
        limit=data.quality.examples_per_rule,
        details=found.details,
    )
    results.append(result)
    if mode != "drop" or not result.matched:
        return rows
    return rows.take(np.flatnonzero(~found.matched))


def _needed_values(rows: _Rows, config: TrainingConfig) -> list[tuple[str, str, str]]:
    """(field, column, what) of every value a row must have besides its text."""
    data = config.data
    classifying = config.model.task == "sequence-classification"
    needed = [("data.labelColumn", data.label_column, "label")] if classifying else []
    if data.text_pair_column is not None:
        needed.append(("data.textPairColumn", data.text_pair_column, "text"))
    weights = data.weight_column
    if classifying and weights is not None and weights in rows.table.column_names:
        needed.append(("data.weightColumn", weights, "weight"))
    return needed


def _missing_values(rows: _Rows, config: TrainingConfig) -> _Screened:
    """Rows with a null, empty or blank cell in a column the data section needs."""
    matched = np.zeros(rows.table.num_rows, dtype=np.bool_)
    missing = np.zeros(rows.table.num_rows, dtype=np.dtypes.StringDType())
    problems = []
    for field, column, what in _needed_values(rows, config):
        blank = _blank(rows, column, field)
        if blank.any():
            shown = rows.row_numbers(pa.chunked_array([blank]))
            count = _rows(int(blank.sum()))
            problems.append(
                f"{field}: {rows.origin} has {count} with no {what} in column {column!r} ({shown})"
            )
            separator = np.where(missing == "", "", ", ").astype(missing.dtype)
            named = np.strings.add(np.strings.add(missing, separator), column)
            missing = np.where(blank, named, missing)
            matched |= blank
    failure = "; ".join(problems) + (
        "; data.quality.missingValues.mode is fail: fill them in, or set it to drop to leave "
        "those rows out"
    )
    return _Screened(matched, failure, {"missing": missing})


def _blank(rows: _Rows, column: str, field: str) -> Mask:
    """Rows whose cell in `column` is null, empty or only whitespace."""
    values = _as_text(rows, column, field)
    blank = pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_trim_whitespace(values), ""))
    return np.asarray(pc.fill_null(blank, True).to_numpy(zero_copy_only=False), dtype=np.bool_)


def _unknown_values(rows: _Rows, config: TrainingConfig, labels: Sequence[str]) -> _Screened:
    declared = config.model.labels is not None
    values = _label_values(rows, config.data.label_column)
    unknown = _unknown_mask(values, labels, declared=declared)
    failure = (
        _unknown_labels(rows, values, unknown, labels, declared=declared) if unknown.any() else ""
    )
    return _Screened(unknown, failure)


def _rows_read(train: _Rows, validation: _Rows, screened: Sequence[RuleResult]) -> dict[str, int]:
    """Rows read per split: those left, and those the per-file rules dropped before."""

    def read(rows: _Rows, split: str) -> int:
        dropped = sum(r.matched for r in screened if r.split == split and r.mode == "drop")
        return int(rows.table.num_rows) + dropped

    return {"train_in": read(train, "train"), "validation_in": read(validation, "validation")}


def _split_off_validation(
    train: _Rows, labels: Sequence[str], fraction: float, seed: int
) -> tuple[_Rows, _Rows]:
    names = np.asarray(labels)[train.label_ids]
    kept, held_out = stratified_split(names, fraction, seed)
    return train.take(kept), train.take(held_out)


def _check_batch_size(batch_size: int, train: _Rows) -> None:
    rows = train.table.num_rows
    if batch_size > rows:
        raise DataError(
            f"training.batchSize: {batch_size} is larger than the {rows} training rows; "
            f"lower it to {rows} or less, or add rows"
        )


def _majority_rate(label_ids: npt.NDArray[np.int64]) -> float:
    return float(np.bincount(label_ids).max() / len(label_ids))


def _groups(rows: _Rows, columns: Sequence[str]) -> dict[str, list[str]]:
    return {column: _group_values(rows, column) for column in columns}


def _present_groups(rows: _Rows, columns: Sequence[str]) -> dict[str, list[str]]:
    """Like _groups, for the sensitive columns this file has (training files may lack them)."""
    names = set(rows.table.column_names)
    return _groups(rows, [column for column in columns if column in names])


def _group_values(rows: _Rows, column: str) -> list[str]:
    groups: list[str] = _group_column(rows, column).to_pylist()
    return groups


def _group_column(rows: _Rows, column: str) -> pa.ChunkedArray:
    """A sensitive column as text, MISSING_GROUP where a row has no value."""
    values = _as_text(rows, column, "data.sensitiveColumns")
    empty = pc.fill_null(pc.equal(values, ""), True)
    return pc.if_else(empty, MISSING_GROUP, values)


# --- model inputs ----------------------------------------------------------------------


def _model_inputs(rows: _Rows, data: DataSpec) -> pa.Table:
    """The columns the model sees, under fixed names: text, text_pair, labels, weight."""
    columns: dict[str, Any] = {
        "text": _texts(rows, data.text_column, "data.textColumn"),
        "labels": pa.array(rows.label_ids, pa.int64()),
    }
    if data.text_pair_column is not None:
        columns["text_pair"] = _texts(rows, data.text_pair_column, "data.textPairColumn")
    if data.weight_column is not None:
        columns["weight"] = _weights(rows, data.weight_column)
    return pa.table(columns)


def _weights(rows: _Rows, column: str) -> pa.ChunkedArray:
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
                f"data.weightColumn: {rows.origin} has {_rows(count)} with {problem} in column "
                f"{column!r} ({rows.row_numbers(mask)}); weights must be numbers >= 0"
            )
    return pc.cast(weights, pa.float32())


def _as_numbers(rows: _Rows, column: str) -> pa.ChunkedArray:
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


def _tokenize(
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


# --- class weights and splits ------------------------------------------------------------


def class_weights(
    counts: Sequence[int], mode: str, beta: float, *, names: Sequence[str] | None = None
) -> list[float] | None:
    """Loss weight per class (data.balance.classWeights), or None for mode `none`.

    inverse-frequency: n / (k x count); effective-number (Cui et al. 2019):
    (1 - beta) / (1 - beta^count), scaled so that the k weights sum to k.
    """
    if mode == "none":
        return None
    sizes = np.asarray(counts, dtype=np.float64)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        classes = list(names) if names is not None else [str(i) for i in range(len(sizes))]
        listed = ", ".join(f"{classes[i]}: {int(c)}" for i, c in enumerate(sizes))
        raise DataError(
            f"data.balance.classWeights: {mode} weights need training rows of every class; "
            f"{_some([classes[i] for i in empty])} have none (rows per class: {listed})"
        )
    weights = _WEIGHTINGS[mode](sizes, beta)
    return [float(weight) for weight in weights]


def _inverse_frequency(sizes: npt.NDArray[np.float64], beta: float) -> npt.NDArray[np.float64]:
    weights: npt.NDArray[np.float64] = sizes.sum() / (len(sizes) * sizes)
    return weights


def _effective_number(sizes: npt.NDArray[np.float64], beta: float) -> npt.NDArray[np.float64]:
    raw = (1.0 - beta) / (1.0 - np.power(beta, sizes))
    weights: npt.NDArray[np.float64] = raw * len(sizes) / raw.sum()
    return weights


_WEIGHTINGS: dict[str, Callable[[npt.NDArray[np.float64], float], npt.NDArray[np.float64]]] = {
    "inverse-frequency": _inverse_frequency,
    "effective-number": _effective_number,
}


def _class_sizes(labels: npt.NDArray[Any]) -> tuple[list[str], list[int]]:
    values, counts = np.unique(labels, return_counts=True)
    return [str(value) for value in values], [int(count) for count in counts]


def _per_class(classes: list[str], counts: list[int]) -> str:
    return _some([f"{name}: {count}" for name, count in zip(classes, counts, strict=True)])


def stratified_split(
    labels: npt.NDArray[Any], fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices (kept, held out), holding out `fraction` of the rows of every class.

    Both are sorted, so each split keeps the rows in their file order.
    """
    classes, counts = _class_sizes(labels)
    held_out = math.ceil(fraction * len(labels))
    if min(counts) < 2:
        raise DataError(
            "data.validationSplit: a stratified validation split needs at least 2 rows of "
            f"every class (rows per class: {_per_class(classes, counts)}); add rows, or give "
            "data.validation"
        )
    if held_out < len(classes) or len(labels) - held_out < len(classes):
        raise DataError(
            f"data.validationSplit: {fraction} of {len(labels)} rows holds out {held_out}, but "
            f"each side needs a row of each of the {len(classes)} classes; change "
            "data.validationSplit, add rows, or give data.validation"
        )
    kept, held = train_test_split(
        np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
    )
    return np.sort(kept).astype(np.int64), np.sort(held).astype(np.int64)


def kfold_splits(
    labels: npt.NDArray[Any], folds: int, stratified: bool, seed: int
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """(training, validation) row indices of each of `folds` folds, shuffled with `seed`."""
    classes, counts = _class_sizes(labels)
    if stratified and min(counts) < folds:
        raise DataError(
            f"evaluation.crossValidation.folds: {folds} stratified folds need at least {folds} "
            f"rows of every class (rows per class: {_per_class(classes, counts)}); lower folds, "
            "add rows, or set stratified: false"
        )
    if len(labels) < folds:
        raise DataError(
            f"evaluation.crossValidation.folds: {folds} folds need at least {folds} rows; "
            f"there are {len(labels)}"
        )
    splitter = (StratifiedKFold if stratified else KFold)(
        n_splits=folds, shuffle=True, random_state=seed
    )
    return [
        (train.astype(np.int64), held.astype(np.int64))
        for train, held in splitter.split(np.zeros(len(labels)), labels)
    ]


# --- batching --------------------------------------------------------------------------


class LengthGroupedSampler(Sampler[int]):
    """Row indices in an order that puts rows of similar length in the same batch.

    Rows are shuffled (seeded by seed and epoch), cut into windows of MEGA_BATCH_FACTOR
    batches, and each window is sorted longest first: batches stay random across windows
    but are padded far less than in random order, and the first batch of a window is its
    longest, so an out-of-memory batch shows early.

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
        return shuffled[np.lexsort((-self.lengths[shuffled], window))]

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


# --- causal language models: next-token prediction, the prompt masked when a response column
# is set (data.textPairColumn), so the model learns to answer, not to repeat the question ---

IGNORED_LABEL = -100
"""The label value torch's cross-entropy skips: prompt tokens and padding."""


def prepare_language_model_data(
    config: TrainingConfig, tokenizer: PreTrainedTokenizerBase
) -> PreparedData:
    """Load, check, split and tokenize the rows of a causal-LM run."""
    data = config.data
    train = _read_source(data.train, "data.train")
    validation = (
        None if data.validation is None else _read_source(data.validation, "data.validation")
    )
    _check_columns(train, _text_columns(data))
    train, screened = _screen(train, "train", config, None)
    if validation is None:
        kept, held_out = stratified_split(
            np.zeros(train.table.num_rows, dtype=np.int64),
            data.validation_split,
            config.training.seed,
        )
        train, validation = train.take(kept), train.take(held_out)
    else:
        _check_columns(validation, _text_columns(data))
        validation, screened_validation = _screen(validation, "validation", config, None)
        screened += screened_validation
    rows_in = _rows_read(train, validation, screened)
    train, validation, quality = apply_quality_rules(
        train, validation, config, tokenizer, screened=screened
    )
    _check_batch_size(config.training.batch_size, train)
    train_texts, validation_texts = _prompts(train, data), _prompts(validation, data)
    train_set = _tokenize_for_language_model(train, data, tokenizer, "training")
    validation_set = _tokenize_for_language_model(validation, data, tokenizer, "validation")
    report = DataReport(
        quality=quality,
        labels=[],
        classes={},
        lengths={
            split: length_summary(np.asarray(rows["length"][:]), data.max_length)
            for split, rows in (("train", train_set), ("validation", validation_set))
        },
    )
    return PreparedData(
        train=train_set,
        validation=validation_set,
        labels=[],
        train_class_counts={},
        class_weights=None,
        train_texts=train_texts,
        train_groups=_present_groups(train, data.sensitive_columns),
        train_sources=np.arange(len(train_set), dtype=np.int64),
        validation_texts=validation_texts,
        validation_groups=_present_groups(validation, data.sensitive_columns),
        rows={
            **rows_in,
            "train_out": len(train_set),
            "validation_out": len(validation_set),
        },
        majority_rate=0.0,
        report=report,
    )


def _text_columns(data: DataSpec) -> list[tuple[str, str]]:
    roles = [("data.textColumn", data.text_column)]
    if data.text_pair_column is not None:
        roles.append(("data.textPairColumn", data.text_pair_column))
    return roles


def _prompts(rows: _Rows, data: DataSpec) -> list[str]:
    texts: list[str] = _texts(rows, data.text_column, "data.textColumn").to_pylist()
    return texts


def _tokenize_for_language_model(
    rows: _Rows, data: DataSpec, tokenizer: PreTrainedTokenizerBase, split: str
) -> datasets.Dataset:
    columns = {"prompt": _texts(rows, data.text_column, "data.textColumn")}
    if data.text_pair_column is not None:
        columns["response"] = _texts(rows, data.text_pair_column, "data.textPairColumn")
    table = pa.table(columns)
    encoded = datasets.Dataset(InMemoryTable(table)).map(
        _language_model_encoder(tokenizer, data.max_length),
        batched=True,
        remove_columns=list(columns),
        desc=f"Tokenizing the {split} rows",
    )
    lengths = pc.list_value_length(encoded.data.table.column("input_ids"))
    if pc.max(lengths).as_py() is None:
        raise DataError(f"data.{split}: no row holds any text")
    return datasets.Dataset(InMemoryTable(encoded.data.table.append_column("length", lengths)))


def _language_model_encoder(
    tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Callable[[Any], dict[str, Any]]:
    """Prompt (+ response + end of text) token ids, labels masking the prompt when a response
    column exists."""
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
