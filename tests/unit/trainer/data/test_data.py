"""The data pipeline on real files: what it loads, how it labels and splits, and its errors."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_trainer.config import (
    MISSING_GROUP,
    BiasSpec,
    DataSource,
    EvaluationSpec,
    TrainingConfig,
)
from kubetune_trainer.data import (
    MEGA_BATCH_FACTOR,
    DataError,
    LengthGroupedSampler,
    class_weights,
    kfold_splits,
    load_table,
    prepare_audit_rows,
    prepare_data,
    prepare_language_model_data,
    stratified_split,
)
from tests.conftest import REPO

EXAMPLE_TRAIN = REPO / "examples/sentiment/data/train.csv"
EXAMPLE_VALIDATION = REPO / "examples/sentiment/data/validation.csv"
ROWS = [
    {"text": "great kettle", "label": "positive", "zip": "007"},
    {"text": "awful lamp", "label": "negative", "zip": "010"},
    {"text": "fine tent, really", "label": "positive", "zip": "100"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tiny_model_dir)
    return loaded


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


KEEP_EVERY_ROW = {
    rule: {"mode": "warn"}
    for rule in ("duplicates", "conflictingLabels", "empty", "garbage", "leakage")
}


def make_config(
    train: Path,
    validation: Path | None = None,
    *,
    labels: list[str] | None = None,
    training: dict[str, Any] | None = None,
    **data: Any,
) -> TrainingConfig:
    """A config over the given files; `data` holds manifest (camelCase) fields of data.

    The data-quality rules only warn here unless a test sets data.quality: these tests are
    about loading, labels and tokens, and test_quality.py covers the rules.
    """
    data_spec: dict[str, Any] = {"train": {"source": str(train)}, "quality": KEEP_EVERY_ROW, **data}
    if validation is not None:
        data_spec["validation"] = {"source": str(validation)}
    model: dict[str, Any] = {"source": "unused"}
    if labels is not None:
        model["labels"] = labels
    return TrainingConfig.model_validate(
        {"model": model, "data": data_spec, "training": training or {"batchSize": 2}}
    )


def reviews(count: int, label: str, **extra: Any) -> list[dict[str, Any]]:
    """`count` rows of one label, with words the tiny tokenizer knows."""
    return [{"text": f"the kettle is good {i}", "label": label, **extra} for i in range(count)]


def data_error(config: TrainingConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    with pytest.raises(DataError) as error:
        prepare_data(config, tokenizer)
    return str(error.value)


def load_error(path: Path, **source: Any) -> str:
    with pytest.raises(DataError) as error:
        load_table(DataSource(source=str(path), **source), "data.train")
    return str(error.value)


# --- load_table --------------------------------------------------------------------------


def test_csv_jsonl_and_parquet_load_the_same_rows(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "rows.csv", ROWS)
    jsonl_path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    parquet_path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet_path)
    for path in (csv_path, jsonl_path, parquet_path):
        loaded = load_table(DataSource(source=str(path)), "data.train")
        assert loaded.column_names == ["text", "label", "zip"]
        assert loaded.to_list() == ROWS


def test_csv_cells_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "numbers.csv"
    path.write_text('text,label,weight\n"two\nlines",01,1.50\n0042,2,3\n')
    loaded = load_table(DataSource(source=str(path)), "data.train")
    assert loaded.to_list() == [
        {"text": "two\nlines", "label": "01", "weight": "1.50"},
        {"text": "0042", "label": "2", "weight": "3"},
    ]


def test_compressed_csv_loads(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("text,label\ngood,positive\nbad,negative\n")
    assert load_table(DataSource(source=str(path)), "data.train")["label"] == [
        "positive",
        "negative",
    ]


def test_directory_of_shards_loads_every_shard_in_name_order(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    (shards / "part").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), shards / "a.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[2:]), shards / "part" / "b.parquet")
    (shards / "README.md").write_text("not data")
    loaded = load_table(DataSource(source=str(shards), format="parquet"), "data.train")
    assert loaded["text"] == [row["text"] for row in ROWS]


def test_directory_without_files_of_the_format(tmp_path: Path) -> None:
    write_csv(tmp_path / "rows.csv", ROWS)
    message = load_error(tmp_path, format="parquet")
    assert message == f"data.train.source: directory {tmp_path} holds no parquet files"


def test_jsonl_label_of_mixed_types_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"text": "a", "label": 0, "weight": 1}\n'
        '{"text": "b", "label": "positive", "weight": 2.5}\n'
        '{"text": "c", "label": 1.5, "weight": 3}\n'
    )
    loaded = load_table(DataSource(source=str(path)), "data.train")
    assert loaded["label"] == ["0", "positive", "1.5"]
    assert loaded["weight"] == [1.0, 2.5, 3.0]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "train.csv"
    assert load_error(missing) == f"data.train.source: {missing} does not exist"


def test_ragged_csv_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("text,label\ngood,positive\nbad,negative,extra\nfine,positive\n")
    assert load_error(path) == (
        f"data.train.source: {path} has a row with the wrong number of cells: row 3 "
        "(counting the header), 3 cells where the header has 2: bad,negative,extra"
    )


@pytest.mark.parametrize(
    ("encoding", "name"),
    [("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32-le", "UTF-32")],
)
def test_a_csv_saved_as_wide_unicode_is_named_by_its_encoding(
    tmp_path: Path, encoding: str, name: str
) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes("\ufefftext,label\ngood,positive\nbad,negative\n".encode(encoding))
    assert load_error(path) == (
        f"data.train.source: {path} is {name} text; kubetune reads UTF-8: save it as UTF-8 "
        "(a spreadsheet's CSV UTF-8)"
    )


def test_parquet_file_declared_as_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert load_error(path) == (
        f"data.train.source: {path} looks like parquet, not csv; "
        "set data.train.format to parquet or give a csv file"
    )


def test_jsonl_file_declared_as_parquet(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    message = load_error(path, format="parquet")
    assert message == (
        f"data.train.source: {path} looks like jsonl, not parquet; "
        "set data.train.format to jsonl or give a parquet file"
    )


def test_csv_file_declared_as_parquet_or_jsonl(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.data", ROWS)
    for declared in ("parquet", "jsonl"):
        message = load_error(path, format=declared)
        assert message.startswith(f"data.train.source: {path} is not a readable {declared} file")
        assert message.endswith("set data.train.format if the file is in another format")


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    assert load_error(empty_csv) == f"data.train.source: {empty_csv} is empty"
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("")
    assert load_error(empty_jsonl) == f"data.train.source: {empty_jsonl} is empty"
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    assert load_error(header_only) == f"data.train.source: {header_only} has no rows"
    no_rows = tmp_path / "none.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), no_rows)
    assert load_error(no_rows) == f"data.train.source: {no_rows} has no rows"


def test_repeated_column_name(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("text,label,text\na,b,c\n")
    assert load_error(path) == f"data.train.source: {path} has the column 'text' more than once"


# --- prepare_data on the example ---------------------------------------------------------


def test_example_data_is_labelled_counted_and_tokenized(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    config = make_config(
        EXAMPLE_TRAIN,
        EXAMPLE_VALIDATION,
        labels=["negative", "positive"],
        sensitiveColumns=["dialect"],
        training={"batchSize": 32},
    )
    prepared = prepare_data(config, tokenizer)
    train_rows, validation_rows = read_csv_rows(EXAMPLE_TRAIN), read_csv_rows(EXAMPLE_VALIDATION)
    assert prepared.labels == ["negative", "positive"]
    assert prepared.train_class_counts == Counter(row["label"] for row in train_rows)
    assert prepared.rows == {
        "train_in": 3000,
        "validation_in": 600,
        "train_out": 3000,
        "validation_out": 600,
    }
    validation_labels = Counter(row["label"] for row in validation_rows)
    assert prepared.majority_rate == max(validation_labels.values()) / 600
    assert prepared.class_weights is None
    assert prepared.train["labels"] == [
        ["negative", "positive"].index(row["label"]) for row in train_rows
    ]
    assert prepared.validation_texts == [row["text"] for row in validation_rows]
    assert prepared.validation_groups == {"dialect": [row["dialect"] for row in validation_rows]}
    assert Counter(prepared.validation_groups["dialect"]) == Counter(
        row["dialect"] for row in validation_rows
    )
    assert set(prepared.train.column_names) == {"labels", "input_ids", "attention_mask", "length"}


def test_tokens_are_unpadded_and_counted(tokenizer: PreTrainedTokenizerBase) -> None:
    config = make_config(EXAMPLE_TRAIN, EXAMPLE_VALIDATION)
    prepared = prepare_data(config, tokenizer)
    first = read_csv_rows(EXAMPLE_TRAIN)[0]["text"]
    assert prepared.train[0]["input_ids"] == tokenizer(first)["input_ids"]
    lengths = [len(ids) for ids in prepared.train["input_ids"]]
    assert prepared.train["length"] == lengths
    assert len(set(lengths)) > 1
    assert all(mask == [1] * len(mask) for mask in prepared.train["attention_mask"])


def test_long_texts_are_truncated_to_max_length(tokenizer: PreTrainedTokenizerBase) -> None:
    config = make_config(EXAMPLE_TRAIN, EXAMPLE_VALIDATION, maxLength=8)
    prepared = prepare_data(config, tokenizer)
    assert max(prepared.train["length"]) == 8
    assert all(ids[-1] == tokenizer.sep_token_id for ids in prepared.validation["input_ids"])


def test_labels_left_out_are_the_sorted_distinct_values(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    prepared = prepare_data(make_config(EXAMPLE_TRAIN, EXAMPLE_VALIDATION), tokenizer)
    assert prepared.labels == ["negative", "positive"]
    assert prepared.train_class_counts == Counter(r["label"] for r in read_csv_rows(EXAMPLE_TRAIN))


def test_held_out_validation_keeps_the_class_proportions(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    config = make_config(EXAMPLE_TRAIN, sensitiveColumns=["dialect"], validationSplit=0.2)
    prepared = prepare_data(config, tokenizer)
    assert prepared.rows["train_in"] == 2400
    assert prepared.rows["validation_in"] == 600
    everything = Counter(row["label"] for row in read_csv_rows(EXAMPLE_TRAIN))
    for label, count in prepared.train_class_counts.items():
        assert abs(count - 0.8 * everything[label]) <= 1, label  # stratified: 80% of each class
    held = Counter(prepared.validation["labels"])
    assert prepared.majority_rate == max(held.values()) / 600
    train_texts = {row["text"] for row in read_csv_rows(EXAMPLE_TRAIN)}
    assert set(prepared.validation_texts) <= train_texts
    assert len(prepared.validation_groups["dialect"]) == 600


def test_held_out_validation_depends_on_the_seed_only(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    def held_out(seed: int) -> list[str]:
        config = make_config(EXAMPLE_TRAIN, training={"batchSize": 2, "seed": seed})
        return prepare_data(config, tokenizer).validation_texts

    assert held_out(7) == held_out(7)
    assert held_out(7) != held_out(8)


def test_class_weights_follow_the_training_counts(tokenizer: PreTrainedTokenizerBase) -> None:
    config = make_config(
        EXAMPLE_TRAIN, EXAMPLE_VALIDATION, balance={"classWeights": "inverse-frequency"}
    )
    counts = Counter(row["label"] for row in read_csv_rows(EXAMPLE_TRAIN))
    assert prepare_data(config, tokenizer).class_weights == pytest.approx(
        [3000 / (2 * counts["negative"]), 3000 / (2 * counts["positive"])]
    )


# --- prepare_data on small files ---------------------------------------------------------


def test_text_pairs_are_tokenized_together(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [
        {"premise": "the kettle is good", "hypothesis": "it works", "label": "yes"},
        {"premise": "the lamp is bad", "hypothesis": "it works", "label": "no"},
    ]
    train = write_csv(tmp_path / "train.csv", rows)
    config = make_config(train, train, textColumn="premise", textPairColumn="hypothesis")
    prepared = prepare_data(config, tokenizer)
    first = prepared.train[0]["input_ids"]
    assert first == tokenizer("the kettle is good", "it works")["input_ids"]
    assert first.count(tokenizer.sep_token_id) == 2
    assert prepared.labels == ["no", "yes"]


def test_weights_are_carried_and_default_to_one_in_validation(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(
        tmp_path / "train.csv",
        [
            {"text": "good", "label": "positive", "w": "0.5"},
            {"text": "bad", "label": "negative", "w": "2"},
        ],
    )
    validation = write_csv(tmp_path / "validation.csv", reviews(1, "negative"))
    prepared = prepare_data(make_config(train, validation, weightColumn="w"), tokenizer)
    assert prepared.train["weight"] == [0.5, 2.0]
    assert prepared.validation["weight"] == [1.0]


def test_integer_labels_are_class_ids_when_they_name_no_label(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(2, "1") + reviews(1, "0"))
    prepared = prepare_data(make_config(train, train, labels=["bad", "good"]), tokenizer)
    assert prepared.train["labels"] == [1, 1, 0]
    assert prepared.train_class_counts == {"bad": 1, "good": 2}


def test_integer_labels_naming_labels_are_names(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(2, "1") + reviews(1, "0"))
    prepared = prepare_data(make_config(train, train, labels=["1", "0"]), tokenizer)
    assert prepared.train["labels"] == [0, 0, 1]


def test_integer_labels_left_out_sort_as_numbers(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = reviews(1, "10") + reviews(1, "9") + reviews(1, "-2")
    train = write_csv(tmp_path / "train.csv", rows)
    prepared = prepare_data(make_config(train, train), tokenizer)
    assert prepared.labels == ["-2", "9", "10"]
    assert prepared.train["labels"] == [2, 1, 0]


def test_mixed_jsonl_labels_are_matched_as_text(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(
        '{"text": "good", "label": 1}\n{"text": "bad", "label": "none"}\n'
        '{"text": "fine", "label": " 1 "}\n'
    )
    prepared = prepare_data(make_config(train, train, labels=["none", "1"]), tokenizer)
    assert prepared.train["labels"] == [1, 0, 1]


def test_integer_parquet_labels_are_class_ids(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": ["good", "bad", "fine"], "label": [1, 0, 1]}), train)
    prepared = prepare_data(make_config(train, train, labels=["negative", "positive"]), tokenizer)
    assert prepared.train["labels"] == [1, 0, 1]
    assert prepared.train_class_counts == {"negative": 1, "positive": 2}


# --- prepare_data errors -----------------------------------------------------------------


def test_text_column_of_lists(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": ["good", "kettle"], "label": "a"}, {"text": ["bad"], "label": "b"}],
    )
    assert data_error(make_config(train, train), tokenizer) == (
        f"data.textColumn: column 'text' of {train} holds list<item: string> values, not text"
    )


def test_missing_text_column(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(2, "a", dialect="x"))
    assert data_error(make_config(train, textColumn="txt"), tokenizer) == (
        f"data.textColumn: column 'txt' is not in {train} (columns: text, label, dialect)"
    )


def test_missing_sensitive_column_in_the_validation_file(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(2, "a", dialect="x"))
    validation = write_csv(tmp_path / "validation.csv", reviews(2, "a"))
    config = make_config(train, validation, sensitiveColumns=["dialect"])
    assert data_error(config, tokenizer) == (
        f"data.sensitiveColumns: column 'dialect' is not in {validation} (columns: text, label)"
    )


def test_sensitive_column_needed_in_training_file_that_holds_validation(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(10, "a") + reviews(10, "b"))
    config = make_config(train, sensitiveColumns=["gender"])
    assert data_error(config, tokenizer).startswith(
        f"data.sensitiveColumns: column 'gender' is not in {train}"
    )


def test_with_audit_data_only_the_audit_file_needs_the_sensitive_columns(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    held_out = write_csv(tmp_path / "train.csv", reviews(10, "a") + reviews(10, "b"))
    train = write_csv(tmp_path / "with-groups.csv", reviews(4, "a", dialect="x") + reviews(4, "b"))
    validation = write_csv(tmp_path / "validation.csv", reviews(2, "a") + reviews(2, "b"))
    audit = write_csv(tmp_path / "audit.csv", reviews(2, "a") + reviews(2, "b"))

    def with_audit_file(train: Path, validation: Path | None) -> TrainingConfig:
        config = make_config(train, validation, labels=["a", "b"], sensitiveColumns=["dialect"])
        bias = BiasSpec.model_validate({"auditData": {"source": str(audit)}})
        return config.model_copy(update={"bias": bias})

    for files in ((held_out, None), (train, validation)):
        data = prepare_data(with_audit_file(*files), tokenizer)
        assert data.validation_groups == {}
    assert prepare_data(with_audit_file(train, validation), tokenizer).train_groups == {
        "dialect": ["x"] * 4 + [MISSING_GROUP] * 4
    }
    with pytest.raises(
        DataError, match=f"data.sensitiveColumns: column 'dialect' is not in {audit}"
    ):
        prepare_audit_rows(with_audit_file(train, validation), tokenizer, ["a", "b"])


def test_cross_validation_needs_the_sensitive_columns_in_the_training_file(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(10, "a") + reviews(10, "b"))
    validation = write_csv(tmp_path / "validation.csv", reviews(2, "a", dialect="x"))
    config = make_config(train, validation, sensitiveColumns=["dialect"])
    folds = config.model_copy(
        update={"evaluation": EvaluationSpec.model_validate({"crossValidation": {"folds": 2}})}
    )
    assert data_error(folds, tokenizer).startswith(
        f"data.sensitiveColumns: column 'dialect' is not in {train}"
    )


def test_empty_sensitive_values_form_the_missing_group(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = reviews(2, "a", dialect="x") + reviews(1, "b", dialect="")
    train = write_csv(tmp_path / "train.csv", rows)
    prepared = prepare_data(make_config(train, train, sensitiveColumns=["dialect"]), tokenizer)
    assert prepared.validation_groups == {"dialect": ["x", "x", "(missing)"]}


def test_labels_outside_model_labels(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = reviews(3, "positive") + reviews(2, "neutral") + reviews(1, "postive")
    train = write_csv(tmp_path / "train.csv", rows)
    config = make_config(train, labels=["negative", "positive"])
    assert data_error(config, tokenizer) == (
        f"data.labelColumn: {train} has 3 rows with labels that are not in model.labels "
        "(negative, positive): 'neutral' (2 rows), 'postive' (1 row), in data rows 4, 5, 6; "
        "fix those rows or add the labels to model.labels, or set "
        "data.quality.unknownLabels.mode to drop to leave them out"
    )


def test_a_class_name_from_the_rows_with_control_characters_is_a_data_error(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = reviews(2, "ok") + reviews(2, "evil\u202e") + reviews(1, "nul\x00")
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    assert data_error(make_config(train), tokenizer) == (
        f"data.labelColumn: {train} has 3 rows whose label holds U+202E RIGHT-TO-LEFT "
        "OVERRIDE: 'evil\\u202e', 'nul\\x00', in data rows 3, 4, 5; a class name must not "
        "contain control or bidirectional-override characters: fix those rows, or declare "
        "the classes in model.labels (other labels are then data.quality.unknownLabels)"
    )


def test_a_data_label_with_control_characters_outside_model_labels_is_shown_escaped(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", reviews(2, "ok") + reviews(1, "\x1b[2J"))
    message = data_error(make_config(train, labels=["bad", "ok"]), tokenizer)
    assert "'\\x1b[2J' (1 row), in data row 3" in message
    assert "\x1b" not in message


def test_class_ids_out_of_range_are_unknown_labels(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    for bad in ("2", "-1"):
        train = write_csv(tmp_path / "train.csv", reviews(2, "0") + reviews(1, bad))
        message = data_error(make_config(train, labels=["bad", "good"]), tokenizer)
        assert message.startswith(f"data.labelColumn: {train} has 3 rows with labels that are")
        assert f"'0' (2 rows), '{bad}' (1 row)" in message


def test_validation_label_never_seen_in_training(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(2, "a") + reviews(2, "b"))
    validation = write_csv(tmp_path / "validation.csv", reviews(1, "a") + reviews(2, "c"))
    assert data_error(make_config(train, validation), tokenizer) == (
        f"data.labelColumn: {validation} has 2 rows with labels that are not in the training "
        "rows (a, b): 'c' (2 rows), in data rows 2, 3; fix those rows or add training rows "
        "with those labels, or set data.quality.unknownLabels.mode to drop to leave them out"
    )


def test_rows_without_a_label_fail_in_fail_mode(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = reviews(2, "a") + reviews(1, "  ") + reviews(1, "b") + reviews(1, "")
    train = write_csv(tmp_path / "train.csv", rows)
    config = make_config(train, quality={"missingValues": {"mode": "fail"}})
    assert data_error(config, tokenizer) == (
        f"data.labelColumn: {train} has 2 rows with no label in column 'label' (data rows 3, 5); "
        "data.quality.missingValues.mode is fail: fill them in, or set it to drop to leave "
        "those rows out"
    )


def test_rows_without_a_label_are_dropped_by_default(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = reviews(4, "a") + reviews(1, "  ") + reviews(4, "b") + reviews(1, "")
    train = write_csv(tmp_path / "train.csv", rows)
    prepared = prepare_data(make_config(train, train), tokenizer)
    assert prepared.train_class_counts == {"a": 4, "b": 4}
    assert prepared.rows == {
        "train_in": 10,
        "validation_in": 10,
        "train_out": 8,
        "validation_out": 8,
    }
    assert prepared.quality.dropped() == {"missingValues": 4}  # 2 rows in each file


def test_rows_without_text(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "good", "label": "a"}\n{"text": null, "label": "b"}\n')
    assert data_error(make_config(train, train), tokenizer) == (
        f"data.textColumn: {train} has 1 row with no text in column 'text' (data row 2)"
    )


def test_rows_held_out_for_validation_are_numbered_as_in_the_file(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [
        {"text": "good", "label": label, "w": str(number)} for number, label in enumerate("ab" * 10)
    ]
    rows[13]["w"] = "-1"
    train = write_csv(tmp_path / "train.csv", rows)
    config = make_config(train, weightColumn="w", validationSplit=0.5)
    assert data_error(config, tokenizer) == (
        f"data.weightColumn: {train} has 1 row with a negative weight in column 'w' "
        "(data row 14); weights must be numbers >= 0"
    )


def test_a_single_class(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(4, "a"))
    assert data_error(make_config(train), tokenizer) == (
        f"data.labelColumn: every row of {train} has the label 'a'; "
        "a classifier needs rows of at least two classes"
    )


def test_a_single_class_is_refused_when_model_labels_declare_more(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(72, "a"))
    assert data_error(make_config(train, labels=["a", "b"]), tokenizer) == (
        f"data.labelColumn: every row of {train} has the label 'a'; "
        "a classifier needs rows of at least two classes"
    )


def test_a_single_class_of_class_ids_is_named_by_its_declared_name(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(8, "1"))
    assert data_error(make_config(train, labels=["neg", "pos"]), tokenizer) == (
        f"data.labelColumn: every row of {train} has the label 'pos'; "
        "a classifier needs rows of at least two classes"
    )


def test_a_declared_class_without_training_rows_is_a_warning_in_the_report(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(20, "a") + reviews(20, "b"))
    prepared = prepare_data(make_config(train, labels=["a", "b", "neutral"]), tokenizer)
    warning = (
        "model.labels: no training row has the class 'neutral'; the model will never predict it"
    )
    assert prepared.report.warnings == [warning]
    assert prepared.report.to_report()["warnings"] == [warning]
    assert prepared.report.to_status()["message"].endswith(f"; warning: {warning}")


def test_no_warning_when_every_class_has_training_rows(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(20, "a") + reviews(20, "b"))
    prepared = prepare_data(make_config(train, labels=["a", "b"]), tokenizer)
    assert prepared.report.warnings == []
    assert "warning" not in prepared.report.to_status()["message"]


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        (["1", "-0.5", "2", "-1"], "2 rows with a negative weight in column 'w' (data rows 2, 4)"),
        (
            ["1", "2", "inf", "3"],
            "1 row with a weight that is not a finite number in column 'w' (data row 3)",
        ),
        (
            ["1", "2", "3", "NaN"],
            "1 row with a weight that is not a finite number in column 'w' (data row 4)",
        ),
    ],
)
def test_bad_weights(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase, weights: list[str], problem: str
) -> None:
    rows = [
        {"text": "good", "label": label, "w": weight}
        for label, weight in zip("abab", weights, strict=True)
    ]
    train = write_csv(tmp_path / "train.csv", rows)
    message = data_error(make_config(train, train, weightColumn="w"), tokenizer)
    assert message == f"data.weightColumn: {train} has {problem}; weights must be numbers >= 0"


def test_responses_that_max_length_cuts_off_everywhere_are_refused(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    long_prompt = "the kettle is good the lamp is fine the tent"  # 10 tokens
    rows = [{"text": f"{long_prompt} {i}", "answer": "great"} for i in range(4)]
    train = write_csv(tmp_path / "train.csv", rows)
    validation = write_csv(tmp_path / "val.csv", [{"text": "good", "answer": "fine"}])

    def config(max_length: int) -> TrainingConfig:
        return TrainingConfig.model_validate(
            {
                "model": {"source": "unused", "task": "causal-lm"},
                "data": {
                    "train": {"source": str(train)},
                    "validation": {"source": str(validation)},
                    "textPairColumn": "answer",
                    "maxLength": max_length,
                },
                "training": {"batchSize": 2},
            }
        )

    with pytest.raises(DataError) as refused:
        prepare_language_model_data(config(8), tokenizer)
    assert str(refused.value) == (
        "data.maxLength: 8 tokens hold only the prompt of every training row, so no "
        "response token (data.textPairColumn) is left to learn from; raise data.maxLength "
        "or shorten the prompts"
    )
    prepared = prepare_language_model_data(config(12), tokenizer)
    assert [labels[-1] for labels in prepared.train["labels"]] == [tokenizer.vocab["great"]] * 4


def test_training_rows_that_all_weigh_nothing_are_refused(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(3, "a", w="0") + reviews(3, "b", w="0.0"))
    validation = write_csv(tmp_path / "val.csv", reviews(2, "a", w="0") + reviews(2, "b", w="0"))
    assert data_error(make_config(train, validation, weightColumn="w"), tokenizer) == (
        f"data.weightColumn: every training row of {train} has weight 0 in column 'w', so "
        "the loss would be 0 at every step and the model would not learn; give rows a weight > 0"
    )
    weighed = write_csv(tmp_path / "weighed.csv", reviews(3, "a", w="0") + reviews(3, "b", w="1"))
    prepared = prepare_data(make_config(weighed, validation, weightColumn="w"), tokenizer)
    assert prepared.train["weight"] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_rows_without_a_weight(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "good", "label": "a", "w": 1}\n{"text": "bad", "label": "b"}\n')
    config = make_config(
        train, train, weightColumn="w", quality={"missingValues": {"mode": "fail"}}
    )
    assert data_error(config, tokenizer) == (
        f"data.weightColumn: {train} has 1 row with no weight in column 'w' (data row 2); "
        "data.quality.missingValues.mode is fail: fill them in, or set it to drop to leave "
        "those rows out"
    )


def test_weights_that_are_not_numbers(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [{"text": "good", "label": "a", "w": "1"}, {"text": "bad", "label": "b", "w": "heavy"}]
    train = write_csv(tmp_path / "train.csv", rows)
    message = data_error(make_config(train, train, weightColumn="w"), tokenizer)
    assert message.startswith(f"data.weightColumn: column 'w' of {train} is not numeric: ")
    assert "'heavy'" in message


def test_batch_larger_than_the_training_rows(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(10, "a") + reviews(10, "b"))
    config = make_config(train, training={"batchSize": 32}, validationSplit=0.25)
    assert data_error(config, tokenizer) == (
        "training.batchSize: 32 is larger than the 15 training rows; "
        "lower it to 15 or less, or add rows"
    )


def test_class_without_training_rows_cannot_be_weighted(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(2, "a") + reviews(2, "b"))
    config = make_config(
        train, train, labels=["a", "b", "c"], balance={"classWeights": "effective-number"}
    )
    assert data_error(config, tokenizer) == (
        "data.balance.classWeights: effective-number weights need training rows of every "
        "class; c have none (rows per class: a: 2, b: 2, c: 0)"
    )


# --- class weights -----------------------------------------------------------------------


def test_inverse_frequency_weights() -> None:
    assert class_weights([30, 10], "inverse-frequency", 0.999) == pytest.approx(
        [40 / (2 * 30), 40 / (2 * 10)]
    )
    assert class_weights([5, 5, 5], "inverse-frequency", 0.999) == pytest.approx([1.0] * 3)


def test_effective_number_weights_sum_to_the_class_count() -> None:
    # beta 0.9: raw weights 0.1 / (1 - 0.9) = 1 and 0.1 / (1 - 0.81) = 0.1 / 0.19.
    raw = [1.0, 0.1 / 0.19]
    expected = [2 * w / sum(raw) for w in raw]
    weights = class_weights([1, 2], "effective-number", 0.9)
    assert weights == pytest.approx(expected)
    assert weights == pytest.approx([1.3103448, 0.6896552])
    assert sum(weights or []) == pytest.approx(2.0)


def test_no_class_weights() -> None:
    assert class_weights([1, 100], "none", 0.999) is None


def test_zero_count_without_names_names_the_class_id() -> None:
    with pytest.raises(DataError, match=r"; 1 have none \(rows per class: 0: 4, 1: 0\)"):
        class_weights([4, 0], "inverse-frequency", 0.999)


# --- splits ------------------------------------------------------------------------------


def test_stratified_split_holds_out_the_fraction_of_each_class() -> None:
    labels = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    kept, held_out = stratified_split(labels, 0.2, seed=3)
    assert Counter(labels[held_out]) == {"a": 12, "b": 6, "c": 2}
    assert Counter(labels[kept]) == {"a": 48, "b": 24, "c": 8}
    assert sorted([*kept, *held_out]) == list(range(100))
    assert list(held_out) == sorted(held_out)
    assert np.array_equal(stratified_split(labels, 0.2, seed=3)[1], held_out)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], held_out)


def test_stratified_split_needs_two_rows_per_class() -> None:
    labels = np.array(["a"] * 9 + ["b"])
    with pytest.raises(DataError) as error:
        stratified_split(labels, 0.2, seed=0)
    assert str(error.value) == (
        "data.validationSplit: a stratified validation split needs at least 2 rows of every "
        "class (rows per class: a: 9, b: 1); add rows, or give data.validation"
    )


def test_stratified_split_needs_a_row_of_each_class_on_each_side() -> None:
    labels = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"])
    with pytest.raises(DataError, match=r"0\.1 of 10 rows holds out 1, but each side needs"):
        stratified_split(labels, 0.1, seed=0)


def test_stratified_folds_partition_the_rows_and_keep_proportions() -> None:
    labels = np.array([0] * 30 + [1] * 20)
    folds = kfold_splits(labels, 5, stratified=True, seed=1)
    assert len(folds) == 5
    held_out = np.concatenate([held for _, held in folds])
    assert sorted(held_out.tolist()) == list(range(50))
    for train, held in folds:
        assert Counter(labels[held].tolist()) == {0: 6, 1: 4}
        assert set(train.tolist()) | set(held.tolist()) == set(range(50))
        assert not set(train.tolist()) & set(held.tolist())


def test_plain_folds_partition_the_rows() -> None:
    labels = np.array([0] * 48 + [1] * 2)
    folds = kfold_splits(labels, 4, stratified=False, seed=1)
    assert sorted(len(held) for _, held in folds) == [12, 12, 13, 13]
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(50))


def test_stratified_folds_need_enough_rows_of_each_class() -> None:
    labels = np.array(["a"] * 20 + ["b"] * 3)
    with pytest.raises(DataError) as error:
        kfold_splits(labels, 5, stratified=True, seed=0)
    assert str(error.value) == (
        "evaluation.crossValidation.folds: 5 stratified folds need at least 5 rows of every "
        "class (rows per class: a: 20, b: 3); lower folds, add rows, or set stratified: false"
    )


def test_folds_need_enough_rows() -> None:
    with pytest.raises(DataError, match="5 folds need at least 5 rows; there are 3"):
        kfold_splits(np.array([0, 1, 0]), 5, stratified=False, seed=0)


# --- LengthGroupedSampler ----------------------------------------------------------------


@pytest.fixture(scope="module")
def example_train(tokenizer: PreTrainedTokenizerBase) -> Any:
    return prepare_data(make_config(EXAMPLE_TRAIN, EXAMPLE_VALIDATION), tokenizer).train


@pytest.fixture(scope="module")
def example_lengths(example_train: Any) -> np.ndarray:
    return np.asarray(example_train["length"][:])


def padding(lengths: np.ndarray, order: list[int], batch_size: int) -> int:
    """Pad tokens when batches of `order` are padded to their longest row."""
    batches = [lengths[order[i : i + batch_size]] for i in range(0, len(order), batch_size)]
    return int(sum(batch.max() * len(batch) - batch.sum() for batch in batches))


def test_sampler_yields_every_row_once(example_train: Any, example_lengths: np.ndarray) -> None:
    sampler = LengthGroupedSampler(example_train["length"], batch_size=8, seed=1)
    assert len(sampler) == 3000
    assert sorted(sampler) == list(range(3000))
    assert list(sampler) == list(LengthGroupedSampler(example_lengths, batch_size=8, seed=1))
    assert list(sampler) == list(LengthGroupedSampler(example_lengths.tolist(), 8, seed=1))


def test_sampler_is_deterministic_per_seed_and_epoch(example_lengths: np.ndarray) -> None:
    first, second = (LengthGroupedSampler(example_lengths, 8, seed=1) for _ in range(2))
    assert list(first) == list(second)
    epoch_zero = list(first)
    first.set_epoch(1)
    assert list(first) != epoch_zero
    second.set_epoch(1)
    assert list(first) == list(second)
    assert list(LengthGroupedSampler(example_lengths, 8, seed=2)) != epoch_zero


def window_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[list[Any]]:
    """Each window's batches as lists of row lengths, in the order they are drawn."""
    window = MEGA_BATCH_FACTOR * batch_size
    return [
        [
            lengths[order[i : i + batch_size]].tolist()
            for i in range(start, start + window, batch_size)
            if i < len(order)
        ]
        for start in range(0, len(order), window)
    ]


def assert_sorted_batches_in_random_order(windows: list[list[Any]]) -> None:
    """Each window's batches are runs of its rows sorted longest first, the longest batch
    drawn first, the others in an order that is not the sorted one."""
    unsorted = 0
    for batches in windows:
        by_length = sorted(batches, key=lambda batch: (-batch[0], -batch[-1]))
        flat = [length for batch in by_length for length in batch]
        assert flat == sorted(flat, reverse=True)
        assert batches[0] == by_length[0]
        unsorted += batches != by_length
    assert unsorted > 0


def test_sampler_sorts_each_window_and_draws_its_batches_in_random_order(
    example_lengths: np.ndarray,
) -> None:
    order = LengthGroupedSampler(example_lengths, 4, seed=5).order()
    assert_sorted_batches_in_random_order(window_batches(order, example_lengths, 4))


def test_a_short_last_batch_stays_last() -> None:
    lengths = np.arange(1, 24)  # 23 rows: five batches of 4, then one of 3
    order = LengthGroupedSampler(lengths, 4, seed=0).order()
    assert sorted(order.tolist()) == list(range(23))
    assert sorted(lengths[order[-3:]].tolist()) == [1, 2, 3]


def test_sampler_pads_far_less_than_random_order(example_lengths: np.ndarray) -> None:
    # The example's rows run from 9 to 21 tokens (44,702 in all): random batches of 16 pad
    # about 10,800 tokens, batches grouped by length under 400.
    batch_size = 16
    sampler = LengthGroupedSampler(example_lengths, batch_size, seed=0)
    grouped = padding(example_lengths, list(sampler), batch_size)
    shuffled = np.random.default_rng(0).permutation(len(example_lengths)).tolist()
    random = padding(example_lengths, shuffled, batch_size)
    assert random > 0.2 * example_lengths.sum()
    assert grouped * 10 < random
