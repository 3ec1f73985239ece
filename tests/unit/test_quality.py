"""The data-quality rules on hand-made tables whose answers are known row by row."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kubetune_trainer.quality import (
    QualityError,
    QualitySettings,
    RuleMode,
    RuleSettings,
    check,
    normalise,
)

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
    }


def test_fail_mode_raises_with_the_rule_split_counts_and_rows() -> None:
    with pytest.raises(QualityError) as raised:
        run(settings(duplicates="fail"))
    assert str(raised.value) == (
        "rule duplicates matched 3 of 17 train rows (rows 1, 2, 3, counting from 0) "
        "and its mode is fail"
    )


def test_fail_mode_names_the_validation_split() -> None:
    with pytest.raises(QualityError, match=r"rule empty matched 1 of 6 validation rows \(rows 4,"):
        run(settings(empty="fail"), train=TRAIN[12:14])


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
