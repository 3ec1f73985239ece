"""The data-quality rules on hand-made tables whose answers are known row by row: the
engine's rules on Arrow tables, then the rules that need the files, the labels or the
tokenizer (missing values, unknown labels, length) through prepare_data."""

from __future__ import annotations

import copy
import csv
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import DataError, PreparedData, prepare_data, quality
from kubetune_trainer.data.quality import (
    Finding,
    LengthSettings,
    QualityError,
    QualitySettings,
    RuleMode,
    RuleResult,
    RuleSettings,
    SplitInput,
    check,
    normalise,
)
from tests.tiny import make_tokenizer
from tests.unit.operator.api.test_crd import defaulted, failed_rules

TRAIN = [
    ("Great kettle!", "pos"),  # 0 kept: the first of four copies
    ("great kettle", "pos"),  # 1 duplicate
    ("GREAT   kettle.", "pos"),  # 2 duplicate
    ("  great, kettle  ", "pos"),  # 3 duplicate
    ("Awful lamp", "neg"),  # 4 conflicting
    ("awful lamp!!", "pos"),  # 5 conflicting
    ("", "neg"),  # 6 empty
    ("   \t ", "pos"),  # 7 empty
    (None, "pos"),  # 8 empty
    ("bad \ufffd bytes", "neg"),  # 9 garbage: a failed decode
    ("bell \x07 here", "neg"),  # 10 garbage: a control character
    ("$$$ +++ === ok", "neg"),  # 11 garbage: 9 of 14 characters are symbols
    ("Café crème brûlée 😋", "pos"),  # 12 kept: accents and an emoji
    ("Multi\nline\ttext\r\nfine", "neg"),  # 13 kept: tab, newline, carriage return
    ("Nice tent", "pos"),  # 14 leaked: validation row 0
    ("Sturdy chair", "neg"),  # 15 leaked: validation row 1
    ("Blue kettle", "pos"),  # 16 kept: its validation copy is garbage, dropped there
]
VALIDATION = [
    ("nice TENT", "pos"),  # 0 kept
    ("sturdy chair!", "neg"),  # 1 kept
    ("Lovely mug", "pos"),  # 2 kept
    ("lovely mug", "pos"),  # 3 duplicate
    ("", "neg"),  # 4 empty
    ("blue kettle \x07", "pos"),  # 5 garbage
]
RULES = ("empty", "garbage", "duplicates", "conflictingLabels", "leakage")


def table(rows: list[tuple[str | None, str]]) -> pa.Table:
    texts, labels = zip(*rows, strict=True)
    return pa.table({"text": pa.array(texts, pa.string()), "label": pa.array(labels)})


def settings(
    mode: RuleMode = "drop", *, max_dropped_fraction: float = 1.0, **modes: RuleMode
) -> QualitySettings:
    """Every rule in `mode` unless named in `modes` (snake_case field names)."""
    fields = ("duplicates", "conflicting_labels", "empty", "garbage", "leakage")
    rules = {name: RuleSettings(modes.get(name, mode)) for name in fields}
    return QualitySettings(**rules, max_dropped_fraction=max_dropped_fraction)


def run(
    quality: QualitySettings,
    train: list[tuple[str | None, str]] = TRAIN,
    validation: list[tuple[str | None, str]] | None = VALIDATION,
) -> tuple[Any, Any, Any]:
    return check(
        table(train),
        None if validation is None else table(validation),
        text_column="text",
        label_column="label",
        settings=quality,
    )


def matched(report: Any, split: str) -> dict[str, int]:
    return {r.rule: r.matched for r in report.results if r.split == split}


def test_normalise_lowercases_drops_punctuation_and_collapses_whitespace() -> None:
    texts = pa.array(["Hello, World!", "  Don't\tSTOP  me\u00a0now ", "Café—crème", None, "¿Qué?"])
    normalised = normalise(texts)
    assert isinstance(normalised, pa.ChunkedArray)
    assert normalised.to_pylist() == ["hello world", "dont stop me now", "cafécrème", None, "qué"]


def test_drop_mode_keeps_exactly_the_clean_rows() -> None:
    keep_train, keep_validation, report = run(settings())
    assert np.flatnonzero(keep_train).tolist() == [0, 12, 13, 16]
    assert np.flatnonzero(keep_validation).tolist() == [0, 1, 2]
    assert matched(report, "train") == {
        "empty": 3,
        "garbage": 3,
        "duplicates": 3,
        "conflictingLabels": 2,
        "leakage": 2,
    }
    assert matched(report, "validation") == {
        "empty": 1,
        "garbage": 1,
        "duplicates": 1,
        "conflictingLabels": 0,
    }
    assert report.rows_in == {"train": 17, "validation": 6}
    assert report.rows_out == {"train": 4, "validation": 3}


def test_duplicates_keep_the_first_copy_and_name_the_others_by_position() -> None:
    _, _, report = run(settings())
    duplicates = next(r for r in report.results if r.rule == "duplicates" and r.split == "train")
    assert duplicates.examples == [
        {"row": 1, "text": "great kettle", "label": "pos"},
        {"row": 2, "text": "GREAT   kettle.", "label": "pos"},
        {"row": 3, "text": "  great, kettle  ", "label": "pos"},
    ]


def test_a_text_under_two_labels_loses_both_copies_but_not_its_same_label_duplicates() -> None:
    rows = [("Good pan", "pos"), ("good pan", "pos"), ("GOOD PAN!", "neg"), ("Fine", "pos")]
    keep, _, report = run(settings(), train=rows, validation=None)
    assert keep.tolist() == [False, False, False, True]
    assert matched(report, "train") == {
        "empty": 0,
        "garbage": 0,
        "duplicates": 1,
        "conflictingLabels": 2,
    }


def test_examples_are_limited_and_clipped() -> None:
    long_garbage = "x\x07" + "y" * 300
    rows = [("ok", "pos"), ("", "pos"), (None, "neg"), (" ", "pos"), (long_garbage, "neg")]
    _, _, report = run(replace(settings(), examples_per_rule=2), train=rows, validation=None)
    empty, garbage = report.results[0], report.results[1]
    assert empty.matched == 3
    assert empty.examples == [
        {"row": 1, "text": "", "label": "pos"},
        {"row": 2, "text": None, "label": "neg"},
    ]
    assert garbage.examples == [{"row": 4, "text": long_garbage[:200], "label": "neg"}]


def test_warn_mode_keeps_every_row_and_counts_it_as_flagged() -> None:
    keep_train, keep_validation, report = run(settings("warn"))
    assert keep_train.all()
    assert keep_validation.all()
    assert report.dropped() == {}
    assert report.flagged() == {
        "empty": 4,
        "garbage": 4,
        "duplicates": 4,
        "conflictingLabels": 2,
        "leakage": 2,
    }
    assert report.to_status() == {
        "rowsIn": 23,
        "rowsOut": 23,
        "dropped": {},
        "flagged": report.flagged(),
        "message": (
            "23 of 23 rows kept: 4 empty, 4 garbage, 4 duplicates, 2 conflictingLabels, "
            "2 leakage flagged"
        ),
    }


def test_status_totals_the_splits_and_lists_the_largest_counts_first() -> None:
    _, _, report = run(settings(duplicates="warn"))
    assert report.to_status() == {
        "rowsIn": 23,
        "rowsOut": 11,
        "dropped": {"empty": 4, "garbage": 4, "conflictingLabels": 2, "leakage": 2},
        "flagged": {"duplicates": 4},
        "message": (
            "11 of 23 rows kept: 4 empty, 4 garbage, 2 conflictingLabels, 2 leakage dropped; "
            "4 duplicates flagged"
        ),
    }


def test_report_holds_every_result_and_is_json() -> None:
    _, _, report = run(settings())
    document = json.loads(json.dumps(report.to_report()))
    assert document["rowsIn"] == {"train": 17, "validation": 6}
    assert document["rowsOut"] == {"train": 4, "validation": 3}
    assert document["message"] == (
        "7 of 23 rows kept: 4 empty, 4 garbage, 4 duplicates, 2 conflictingLabels, "
        "2 leakage dropped"
    )
    assert [(r["rule"], r["split"]) for r in document["results"]] == [
        *((rule, "train") for rule in RULES[:4]),
        *((rule, "validation") for rule in RULES[:4]),
        ("leakage", "train"),
    ]
    assert document["results"][-1] == {
        "rule": "leakage",
        "split": "train",
        "mode": "drop",
        "matched": 2,
        "examples": [
            {"row": 14, "text": "Nice tent", "label": "pos"},
            {"row": 15, "text": "Sturdy chair", "label": "neg"},
        ],
        "note": "",
    }


def test_fail_mode_raises_with_the_rule_split_counts_and_rows() -> None:
    with pytest.raises(QualityError) as raised:
        run(settings(duplicates="fail"))
    assert str(raised.value) == (
        "3 of 17 train rows match (file rows 1, 2, 3, counting from 0) and the rule's mode is fail"
    )
    assert (raised.value.rule, raised.value.split) == ("duplicates", "train")


def test_fail_mode_names_the_validation_split() -> None:
    with pytest.raises(
        QualityError, match=r"^1 of 6 validation rows match \(file rows 4,"
    ) as raised:
        run(settings(empty="fail"), train=TRAIN[12:14])
    assert raised.value.rule == "empty"


def test_fail_mode_passes_clean_data() -> None:
    keep_train, keep_validation, report = run(
        settings("fail", max_dropped_fraction=0.3), train=TRAIN[12:14], validation=VALIDATION[:3]
    )
    assert keep_train.tolist() == [True, True]
    assert keep_validation.tolist() == [True, True, True]
    assert report.to_status()["message"] == "5 of 5 rows kept"


def test_dropping_more_than_the_limit_fails_with_the_counts_per_rule() -> None:
    with pytest.raises(QualityError) as raised:
        run(settings(max_dropped_fraction=0.3))
    assert str(raised.value) == (
        "the rules would drop 13 of 17 train rows (76%, more than maxDroppedFraction 0.3): "
        "3 empty, 3 garbage, 3 duplicates, 2 conflictingLabels, 2 leakage; 4 rows left"
    )
    assert (raised.value.rule, raised.value.split) == ("maxDroppedFraction", "train")


@pytest.mark.parametrize(("copies", "fails"), [(3, False), (4, True)])
def test_the_limit_is_a_share_of_the_split(copies: int, fails: bool) -> None:
    """Ten rows: three dropped is 30% (allowed), four is 40%."""
    rows = [("same text", "pos")] * (copies + 1) + [(f"row {i}", "pos") for i in range(9 - copies)]
    quality = settings(max_dropped_fraction=0.3)
    if fails:
        with pytest.raises(QualityError, match="drop 4 of 10 train rows"):
            run(quality, train=rows, validation=None)
    else:
        keep, _, _ = run(quality, train=rows, validation=None)
        assert int(keep.sum()) == 7


def test_without_labels_duplicates_compare_text_only_and_there_is_no_conflict_rule() -> None:
    rows = pa.table({"text": ["Good pan", "good pan!", "Fine"], "label": ["pos", "neg", "pos"]})
    keep, keep_validation, report = check(
        rows, None, text_column="text", label_column=None, settings=settings()
    )
    assert keep.tolist() == [True, False, True]
    assert keep_validation is None
    assert [r.rule for r in report.results] == ["empty", "garbage", "duplicates"]
    assert report.results[2].examples == [{"row": 1, "text": "good pan!", "label": None}]


def test_two_hundred_thousand_rows() -> None:
    """Rows i >= 190,000 repeat row i - 190,000 in capitals; the first thousand of those
    change the label too; validation holds rows 180,000 to 180,999 of the training texts."""
    count, repeat_from = 200_000, 190_000
    index = np.arange(count)
    base = np.where(index >= repeat_from, index - repeat_from, index)
    texts = pc.binary_join_element_wise("Review number ", pa.array(base).cast(pa.string()), "!", "")
    repeated = pa.array(index >= repeat_from)
    labels = (base % 3 + ((index >= repeat_from) & (base < 1000))) % 3
    train = pa.table({"text": pc.if_else(repeated, pc.utf8_upper(texts), texts), "label": labels})
    validation = train.slice(180_000, 1000)
    keep_train, keep_validation, report = check(
        train, validation, text_column="text", label_column="label", settings=settings()
    )
    assert matched(report, "train") == {
        "empty": 0,
        "garbage": 0,
        "duplicates": 9000,
        "conflictingLabels": 2000,
        "leakage": 1000,
    }
    assert int(keep_train.sum()) == 188_000
    assert not keep_train[180_000:181_000].any()
    assert keep_train[1000:180_000].all()
    assert not keep_train[:1000].any()
    assert keep_validation.all()


# --- length, file positions, earlier rules and the label-noise detector, in the engine -----


def result_of(report: Any, rule: str, split: str = "train") -> RuleResult:
    found: RuleResult = next(r for r in report.results if (r.rule, r.split) == (rule, split))
    return found


def test_length_matches_rows_outside_the_bounds_but_not_empty_or_garbage_rows() -> None:
    rows = [
        ("one", "a"),  # 0 too short: 1 token
        ("one two three", "a"),  # 1 kept
        ("w w w w w w", "b"),  # 2 too long: 6 tokens
        ("", "b"),  # 3 empty (dropped), not judged for length
        ("x\x07 x x x x x x x", "a"),  # 4 garbage (warn): kept, not judged for length
        ("fine row", "b"),  # 5 kept
    ]
    lengths = np.array([1, 3, 6, 0, 9, 2])
    bounds = LengthSettings("warn", min_tokens=2, max_tokens=5)
    quality = replace(settings(garbage="warn"), length=bounds)
    keep, _, report = check(
        SplitInput(table(rows), lengths=lengths),
        None,
        text_column="text",
        label_column="label",
        settings=quality,
    )
    length = result_of(report, "length")
    assert (length.mode, length.matched, length.note) == ("warn", 2, "minTokens 2, maxTokens 5")
    assert length.examples == [
        {"row": 0, "text": "one", "label": "a", "tokens": 1},
        {"row": 2, "text": "w w w w w w", "label": "b", "tokens": 6},
    ]
    assert keep.tolist() == [True, True, True, False, True, True]
    dropping = replace(quality, length=replace(bounds, mode="drop"))
    keep, _, _ = check(
        SplitInput(table(rows), lengths=lengths),
        None,
        text_column="text",
        label_column="label",
        settings=dropping,
    )
    assert keep.tolist() == [False, True, False, False, True, True]


def test_without_token_counts_there_is_no_length_rule() -> None:
    _, _, report = run(settings())
    assert "length" not in {r.rule for r in report.results}


def test_examples_and_failures_name_the_rows_by_their_place_in_the_file() -> None:
    rows = [("Good pan", "pos"), ("good pan", "pos"), ("Fine", "neg")]
    positions = np.array([4, 9, 11])
    inputs = SplitInput(table(rows), positions=positions, origin="reviews.csv")
    _, _, report = check(
        inputs, None, text_column="text", label_column="label", settings=settings()
    )
    assert result_of(report, "duplicates").examples == [
        {"row": 9, "text": "good pan", "label": "pos"}
    ]
    with pytest.raises(QualityError) as raised:
        check(
            inputs,
            None,
            text_column="text",
            label_column="label",
            settings=settings(duplicates="fail"),
        )
    assert str(raised.value) == (
        "1 of 3 train rows of reviews.csv match (file rows 9, counting from 0) "
        "and the rule's mode is fail"
    )


def test_earlier_rules_open_the_report_and_count_in_rows_in_and_the_dropped_share() -> None:
    earlier = [
        RuleResult("missingValues", "train", "drop", 3, [{"row": 1}]),
        RuleResult("unknownLabels", "validation", "drop", 1, [{"row": 0}]),
    ]
    _, _, report = check(
        table(TRAIN[12:14]),
        table(VALIDATION[:3]),
        text_column="text",
        label_column="label",
        settings=settings(),
        earlier=earlier,
    )
    assert report.results[:2] == earlier
    assert report.rows_in == {"train": 5, "validation": 4}
    assert report.rows_out == {"train": 2, "validation": 3}
    assert report.dropped() == {"missingValues": 3, "unknownLabels": 1}
    with pytest.raises(QualityError, match=r"drop 3 of 5 train rows \(60%.*: 3 missingValues;"):
        check(
            table(TRAIN[12:14]),
            None,
            text_column="text",
            label_column="label",
            settings=settings(max_dropped_fraction=0.5),
            earlier=earlier,
        )


def test_the_label_noise_detector_sees_the_rows_the_other_rules_keep() -> None:
    seen: list[np.ndarray] = []

    def detector(kept: np.ndarray) -> Finding:
        seen.append(kept.copy())
        suggested = np.array(["neg" if i % 2 else "pos" for i in range(len(kept))], dtype=object)
        return Finding(np.ones(len(kept), np.bool_), {"suggested": suggested}, "2 folds")

    quality = replace(settings(), label_noise=RuleSettings("warn"))
    keep, _, report = check(
        table(TRAIN),
        table(VALIDATION),
        text_column="text",
        label_column="label",
        settings=quality,
        label_noise=detector,
    )
    assert np.flatnonzero(seen[0]).tolist() == [0, 12, 13, 16]
    noise = report.results[-1]
    assert (noise.rule, noise.split, noise.mode, noise.note) == (
        "labelNoise",
        "train",
        "warn",
        "2 folds",
    )
    assert noise.matched == 4  # only the rows it was asked about
    assert noise.examples[1] == {
        "row": 12,
        "text": "Café crème brûlée 😋",
        "label": "pos",
        "suggested": "pos",
    }
    assert np.flatnonzero(keep).tolist() == [0, 12, 13, 16]
    dropping = replace(settings(), label_noise=RuleSettings("drop"))
    keep, _, _ = check(
        table(TRAIN),
        None,
        text_column="text",
        label_column="label",
        settings=dropping,
        label_noise=detector,
    )
    assert not keep.any()


def test_no_label_noise_settings_means_the_detector_is_not_called() -> None:
    def detector(kept: np.ndarray) -> Finding:
        raise AssertionError("called")

    _, _, report = check(
        table(TRAIN),
        None,
        text_column="text",
        label_column="label",
        settings=settings(),
        label_noise=detector,
    )
    assert "labelNoise" not in {r.rule for r in report.results}


# --- missing values, unknown labels and length through prepare_data ------------------------

OTHER_RULES_WARN = {
    rule: {"mode": "warn"}
    for rule in ("duplicates", "conflictingLabels", "empty", "garbage", "leakage")
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tiny_model_dir)
    return loaded


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def labelled(labels: list[str], **columns: list[str]) -> list[dict[str, Any]]:
    """One row per label, each with its own text (nothing repeats or leaks)."""
    rows = [{"text": f"review {i} of the kettle", "label": label} for i, label in enumerate(labels)]
    for name, values in columns.items():
        for row, value in zip(rows, values, strict=True):
            row[name] = value
    return rows


def files(tmp_path: Path, train: list[dict[str, Any]], validation: list[dict[str, Any]]) -> Any:
    held = [{**row, "text": f"held out {row['text']}"} for row in validation]
    return write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "validation.csv", held)


def config(
    train: Path,
    validation: Path | None = None,
    *,
    labels: list[str] | None = None,
    task: str = "sequence-classification",
    quality: dict[str, Any] | None = None,
    **data: Any,
) -> TrainingConfig:
    spec: dict[str, Any] = {
        "train": {"source": str(train)},
        "quality": {**OTHER_RULES_WARN, **(quality or {})},
        **data,
    }
    if validation is not None:
        spec["validation"] = {"source": str(validation)}
    model: dict[str, Any] = {"source": "unused", "task": task}
    if labels is not None:
        model["labels"] = labels
    return TrainingConfig.model_validate(
        {"model": model, "data": spec, "training": {"batchSize": 2}}
    )


def error_of(settings: TrainingConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    with pytest.raises(DataError) as raised:
        prepare_data(settings, tokenizer)
    return str(raised.value)


def balanced(prepared: PreparedData) -> None:
    """rows_in - dropped == rows_out in every split, and the data's counts agree."""
    report = prepared.quality
    for split in report.rows_in:
        dropped = sum(r.matched for r in report.results if r.split == split and r.mode == "drop")
        assert report.rows_in[split] - dropped == report.rows_out[split], split
    assert prepared.rows == {
        "train_in": report.rows_in["train"],
        "validation_in": report.rows_in["validation"],
        "train_out": report.rows_out["train"],
        "validation_out": report.rows_out["validation"],
    }


def test_two_rows_without_a_label_are_dropped_and_shown(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train_labels = ["a", "b", "", "a", "  ", "b", "a", "b", "a", "b"]
    train, validation = files(tmp_path, labelled(train_labels), labelled(["a", "b"]))
    prepared = prepare_data(config(train, validation), tokenizer)
    missing = result_of(prepared.quality, "missingValues")
    assert (missing.mode, missing.matched) == ("drop", 2)
    assert missing.examples == [
        {
            "row": 2,
            "file": str(train),
            "text": "review 2 of the kettle",
            "label": "",
            "missing": "label",
        },
        {
            "row": 4,
            "file": str(train),
            "text": "review 4 of the kettle",
            "label": "  ",
            "missing": "label",
        },
    ]
    assert result_of(prepared.quality, "missingValues", "validation").matched == 0
    assert prepared.quality.results[0] is missing  # the per-file rules open the report
    assert prepared.train_class_counts == {"a": 4, "b": 4}
    assert prepared.quality.dropped() == {"missingValues": 2}
    assert prepared.quality.rows_in == {"train": 10, "validation": 2}
    balanced(prepared)


def test_missing_text_pairs_and_weights_are_named_per_row(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = labelled(
        ["a", "b"] * 5,
        pair=["it works", "", "it works", "it works", "yes", " ", "no", "yes", "no", "yes"],
        w=["1", "2", "1", "", "1", "", "1", "1", "1", "1"],
    )
    train = write_csv(tmp_path / "train.csv", rows)
    validation = write_csv(tmp_path / "validation.csv", labelled(["a", "b"], pair=["x", "y"]))
    settings = config(
        train,
        validation,
        textPairColumn="pair",
        weightColumn="w",
        quality={"maxDroppedFraction": 0.5},
    )
    prepared = prepare_data(settings, tokenizer)
    missing = result_of(prepared.quality, "missingValues")
    assert missing.matched == 3
    assert [(e["row"], e["missing"]) for e in missing.examples] == [
        (1, "pair"),
        (3, "w"),
        (5, "pair, w"),
    ]
    assert prepared.train["weight"] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert prepared.validation["weight"] == [1.0, 1.0]  # no weight column: every row once
    balanced(prepared)
    failing = config(
        train,
        validation,
        textPairColumn="pair",
        weightColumn="w",
        quality={"missingValues": {"mode": "fail"}},
    )
    assert error_of(failing, tokenizer) == (
        f"data.textPairColumn: {train} has 2 rows with no text in column 'pair' "
        f"(data rows 2, 6); data.weightColumn: {train} has 2 rows with no weight in column "
        "'w' (data rows 4, 6); data.quality.missingValues.mode is fail: fill them in, or set "
        "it to drop to leave those rows out"
    )


def test_negative_weights_stay_an_error_whatever_the_mode(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = labelled(["a", "b"] * 3, w=["1", "-2", "1", "1", "1", "1"])
    train, validation = files(tmp_path, rows, labelled(["a", "b"]))
    message = error_of(config(train, validation, weightColumn="w"), tokenizer)
    assert message.startswith(f"data.weightColumn: {train} has 1 row with a negative weight")


def test_one_unknown_label_is_dropped_in_drop_mode(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = labelled(["negative", "positive", "postive", "negative", "positive"] * 2)
    rows[7]["label"] = "positive"  # the typo once only: row 2
    train, validation = files(tmp_path, rows, labelled(["negative", "positive"]))
    labels = ["negative", "positive"]
    drop = {"unknownLabels": {"mode": "drop"}, "maxDroppedFraction": 0.5}
    prepared = prepare_data(config(train, validation, labels=labels, quality=drop), tokenizer)
    unknown = result_of(prepared.quality, "unknownLabels")
    assert (unknown.mode, unknown.matched) == ("drop", 1)
    assert unknown.examples == [
        {"row": 2, "file": str(train), "text": "review 2 of the kettle", "label": "postive"}
    ]
    assert len(prepared.train) == 9
    assert prepared.quality.dropped() == {"unknownLabels": 1}
    balanced(prepared)
    assert error_of(config(train, validation, labels=labels), tokenizer) == (
        f"data.labelColumn: {train} has 1 row with labels that are not in model.labels "
        "(negative, positive): 'postive' (1 row), in data row 3; fix those rows or add the "
        "labels to model.labels, or set data.quality.unknownLabels.mode to drop to leave them out"
    )


def test_class_ids_are_read_around_rows_without_a_label(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = labelled(["1", "0", "", "1", "0", "1", "0", "1", "0", "1"])
    train, validation = files(tmp_path, rows, labelled(["0", "1"]))
    prepared = prepare_data(config(train, validation, labels=["bad", "good"]), tokenizer)
    assert prepared.train["labels"] == [1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert prepared.quality.dropped() == {"missingValues": 1}


def test_labels_the_training_rows_lack_are_unknown_in_the_validation_file(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train, validation = files(
        tmp_path, labelled(["a", "b"] * 4), labelled(["a", "c", "b", "a", "b", "a", "b", "a"])
    )
    drop = {"unknownLabels": {"mode": "drop"}}
    prepared = prepare_data(config(train, validation, quality=drop), tokenizer)
    assert "unknownLabels" not in {r.rule for r in prepared.quality.results if r.split == "train"}
    unknown = result_of(prepared.quality, "unknownLabels", "validation")
    assert [(e["row"], e["label"]) for e in unknown.examples] == [(1, "c")]
    assert prepared.quality.rows_in == {"train": 8, "validation": 8}
    assert prepared.quality.rows_out == {"train": 8, "validation": 7}
    balanced(prepared)


def test_a_held_out_split_counts_the_rows_dropped_before_it_as_train(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """rows_in: train gets the training file's rows that were not held out, those the
    per-file rules dropped before the split included; validation the held-out rows."""
    rows = labelled(["a", "b"] * 10 + ["", ""])
    train = write_csv(tmp_path / "train.csv", rows)
    prepared = prepare_data(config(train, validationSplit=0.25), tokenizer)
    assert prepared.quality.rows_in == {"train": 17, "validation": 5}
    assert prepared.quality.rows_out == {"train": 15, "validation": 5}
    assert sum(prepared.quality.rows_in.values()) == 22  # every row of the file
    assert [e["row"] for e in result_of(prepared.quality, "missingValues").examples] == [20, 21]
    balanced(prepared)


def test_everything_dropped_by_the_per_file_rules_fails_with_the_counts(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train, validation = files(tmp_path, labelled(["", " ", "", "a"]), labelled(["a", "b"]))
    assert error_of(config(train, validation), tokenizer) == (
        f"data.quality.maxDroppedFraction: the rules would drop 3 of 4 train rows of {train} "
        "(75%, more than maxDroppedFraction 0.3): 3 missingValues; 1 rows left; fix the data, "
        "change the rules' modes, or raise the limit"
    )
    everything = {"maxDroppedFraction": 1.0}
    assert error_of(config(train, validation, quality=everything), tokenizer) == (
        f"data.labelColumn: every row of {train} has the label 'a'; a classifier needs rows "
        "of at least two classes"
    )
    train = write_csv(tmp_path / "empty.csv", labelled(["", " "]))
    assert error_of(config(train, validation, quality=everything), tokenizer) == (
        f"data.quality: no row of {train} is left (0 of 2 rows kept: 2 missingValues dropped)"
    )


def words(count: int, start: int = 0) -> str:
    return " ".join(f"word{i}" for i in range(start, start + count))


def test_three_rows_longer_than_max_length_are_flagged_with_their_tokens(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """maxTokens left out is data.maxLength; special tokens ([CLS], [SEP]) do not count."""
    texts = [words(3, 100 + i) for i in range(10)]
    texts[2], texts[5], texts[6], texts[8] = words(9), words(10), words(8), words(12)
    rows = [{"text": text, "label": "ab"[i % 2]} for i, text in enumerate(texts)]
    train, validation = files(tmp_path, rows, labelled(["a", "b"]))
    prepared = prepare_data(config(train, validation, maxLength=8), tokenizer)
    length = result_of(prepared.quality, "length")
    assert (length.mode, length.matched, length.note) == ("warn", 3, "minTokens 1, maxTokens 8")
    assert [(e["row"], e["tokens"]) for e in length.examples] == [(2, 9), (5, 10), (8, 12)]
    assert len(prepared.train) == 10
    assert prepared.quality.flagged() == {"length": 3}
    dropping = {"length": {"mode": "drop", "minTokens": 4, "maxTokens": 9}, "maxDroppedFraction": 1}
    prepared = prepare_data(config(train, validation, maxLength=8, quality=dropping), tokenizer)
    length = result_of(prepared.quality, "length")
    assert [(e["row"], e["tokens"]) for e in length.examples] == [(0, 3), (1, 3), (3, 3)]
    assert length.matched == 8  # the six 3-word rows, and 10 and 12 words
    assert len(prepared.train) == 2
    assert result_of(prepared.quality, "length", "validation").matched == 0  # 6 tokens each
    balanced(prepared)


def test_length_counts_the_text_pair_too(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [
        {
            "text": words(5, 10 * i),
            "pair": words(4 if i == 3 else 3, 10 * i + 5),
            "label": "ab"[i % 2],
        }
        for i in range(6)
    ]
    train, validation = files(tmp_path, rows, labelled(["a", "b"], pair=["x", "y"]))
    prepared = prepare_data(
        config(train, validation, textPairColumn="pair", maxLength=8), tokenizer
    )
    length = result_of(prepared.quality, "length")
    assert [(e["row"], e["tokens"]) for e in length.examples] == [(3, 9)]


def causal_tokenizer(texts: list[str]) -> PreTrainedTokenizerBase:
    made = make_tokenizer(texts)
    made.eos_token = "[SEP]"
    return made


def test_causal_lm_rows_are_judged_on_length_and_missing_responses(tmp_path: Path) -> None:
    rows = [
        {"prompt": words(3, 10 * i), "response": "" if i == 4 else words(2, 10 * i + 5)}
        for i in range(12)
    ]
    rows[7]["prompt"] = words(12, 200)
    train = write_csv(tmp_path / "train.csv", rows)
    validation = write_csv(
        tmp_path / "validation.csv", [{"prompt": "held out", "response": "fine"}] * 1
    )
    settings = config(
        train,
        validation,
        task="causal-lm",
        textColumn="prompt",
        textPairColumn="response",
        maxLength=10,
    )
    prepared = prepare_data(settings, causal_tokenizer([r["prompt"] for r in rows]))
    missing = result_of(prepared.quality, "missingValues")
    assert [(e["row"], e["missing"], e["label"]) for e in missing.examples] == [
        (4, "response", None)
    ]
    length = result_of(prepared.quality, "length")
    assert [(e["row"], e["tokens"]) for e in length.examples] == [(7, 14)]
    assert len(prepared.train) == 11
    balanced(prepared)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "missingValues",
            "missingValues.mode: warn cannot keep a row without a label, text pair or weight; "
            "use drop or fail",
        ),
        (
            "unknownLabels",
            "unknownLabels.mode: warn cannot keep a row whose label is not a class; "
            "use drop or fail",
        ),
    ],
)
def test_rules_for_rows_that_cannot_be_encoded_refuse_warn(
    rule: str, message: str, sentiment: dict[str, Any]
) -> None:
    data = {"train": {"source": "train.csv"}, "quality": {rule: {"mode": "warn"}}}
    with pytest.raises(ValidationError) as raised:
        TrainingConfig.model_validate({"model": {"source": "m"}, "data": data})
    assert message in str(raised.value)
    manifest = copy.deepcopy(sentiment)
    manifest["spec"]["data"]["quality"] = {rule: {"mode": "warn"}}
    assert failed_rules(defaulted(manifest)) == [message]
    manifest["spec"]["data"]["quality"] = {rule: {"mode": "drop"}}
    assert failed_rules(defaulted(manifest)) == []


@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", ""])), max_size=6), max_size=5
    )
)
def test_codes_of_a_chunked_column_agree_across_chunks(chunks: list[list[str | None]]) -> None:
    column = pa.chunked_array([pa.array(chunk, pa.string()) for chunk in chunks], pa.string())
    codes = quality._codes(column)
    values = column.to_pylist()
    assert len(codes) == len(values)
    for i, j in itertools.combinations(range(len(values)), 2):
        assert (codes[i] == codes[j]) == (values[i] == values[j])


@pytest.mark.parametrize(
    "text",
    ["a\\u2003b", "a \\t b", "a\\u00a0\\u00a0b", "a  b", "a\\nb", "a\\u3000b c", "a b"],
)
def test_normalised_spacing_is_one_plain_space(text: str) -> None:
    decoded = text.encode().decode("unicode_escape")
    assert normalise(pa.array([decoded])).to_pylist() == [" ".join(decoded.split())]
