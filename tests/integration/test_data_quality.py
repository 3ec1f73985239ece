"""The data-quality rules on the sentiment example: the counts a person would find by hand."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import DataError, prepare_data
from tests.conftest import REPO

DATA = REPO / "examples/sentiment/data"


def by_hand(rows: list[dict[str, str]], validation_texts: set[str] | None) -> dict[str, Any]:
    """Duplicates (same text and label, first kept), conflicting labels (every copy), leakage."""
    norm = [re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", r["text"].lower())).strip() for r in rows]
    seen: set[tuple[str, str]] = set()
    duplicates = set()
    for i, (text, row) in enumerate(zip(norm, rows, strict=True)):
        if (text, row["label"]) in seen:
            duplicates.add(i)
        seen.add((text, row["label"]))
    labels: dict[str, set[str]] = defaultdict(set)
    for i, text in enumerate(norm):
        if i not in duplicates:
            labels[text].add(rows[i]["label"])
    conflicting = {i for i, t in enumerate(norm) if i not in duplicates and len(labels[t]) > 1}
    kept = [i for i in range(len(rows)) if i not in duplicates | conflicting]
    leaked = {i for i in kept if validation_texts is not None and norm[i] in validation_texts}
    return {
        "duplicates": len(duplicates),
        "conflictingLabels": len(conflicting),
        "leakage": len(leaked),
        "kept": [norm[i] for i in kept if i not in leaked],
    }


def read(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def config(max_length: int = 128, **quality: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": "unused", "labels": ["negative", "positive"]},
            "data": {
                "train": {"source": str(DATA / "train.csv")},
                "validation": {"source": str(DATA / "validation.csv")},
                "sensitiveColumns": ["dialect"],
                "maxLength": max_length,
                "quality": quality,
            },
        },
        by_name=False,
    )


def test_the_example_loses_exactly_its_repeats_conflicts_and_leaks(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = prepare_data(config(), tokenizer)
    validation = by_hand(read("validation.csv"), None)
    train = by_hand(read("train.csv"), set(validation["kept"]))
    status = prepared.quality.to_status()
    assert status["rowsIn"] == 3600
    assert status["dropped"] == {
        "duplicates": train["duplicates"] + validation["duplicates"],
        "conflictingLabels": train["conflictingLabels"] + validation["conflictingLabels"],
        "leakage": train["leakage"],
    }
    assert train["duplicates"] > 100  # the example really has repeats, conflicts and leaks
    assert train["conflictingLabels"] > 10
    assert train["leakage"] > 30
    assert len(prepared.train) == len(train["kept"])
    assert len(prepared.validation) == len(validation["kept"])
    assert status["rowsOut"] == len(train["kept"]) + len(validation["kept"])
    assert prepared.rows["train_in"] == 3000
    assert prepared.rows["train_out"] == len(train["kept"])
    results = prepared.quality.to_report()["results"]
    duplicates = next(r for r in results if (r["rule"], r["split"]) == ("duplicates", "train"))
    rows = read("train.csv")
    for example in duplicates["examples"]:  # file positions: the rows are where they say
        assert isinstance(example["row"], int)
        assert rows[example["row"]]["text"] == example["text"]
    assert [(r["rule"], r["split"], r["matched"]) for r in results[:4]] == [
        ("missingValues", "train", 0),
        ("unknownLabels", "train", 0),
        ("missingValues", "validation", 0),
        ("unknownLabels", "validation", 0),
    ]
    assert status["rowsIn"] - sum(status["dropped"].values()) == status["rowsOut"]


def test_warn_keeps_the_rows_and_counts_them(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = prepare_data(config(duplicates={"mode": "warn"}), tokenizer)
    status = prepared.quality.to_status()
    assert status["flagged"]["duplicates"] > 100
    assert "duplicates" not in status["dropped"]


def test_fail_mode_and_the_dropped_share_limit_name_the_rule(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = re.escape(str(DATA / "train.csv"))
    leakage = rf"^data\.quality\.leakage: \d+ of 3000 train rows of {train} match \(file rows "
    with pytest.raises(DataError, match=leakage):
        prepare_data(config(leakage={"mode": "fail"}), tokenizer)
    with pytest.raises(DataError, match=r"^data\.quality\.maxDroppedFraction: .*more than max"):
        prepare_data(config(maxDroppedFraction=0.01), tokenizer)


def test_length_flags_the_rows_the_tokenizer_finds_too_long(tiny_model_dir: Path) -> None:
    """The example's rows run to 19 tokens without [CLS] and [SEP]; maxLength 14 cuts some."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = prepare_data(config(max_length=14), tokenizer)
    for name, split in (("train.csv", "train"), ("validation.csv", "validation")):
        texts = [row["text"] for row in read(name)]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        result = next(r for r in prepared.quality.results if (r.rule, r.split) == ("length", split))
        assert result.mode == "warn"
        assert result.matched == sum(length > 14 for length in lengths) > 0
        assert all(example["tokens"] > 14 for example in result.examples)
    assert "length" in prepared.quality.flagged()


def test_label_noise_finds_the_planted_annotator_bias(tiny_model_dir: Path) -> None:
    """The example's regional-dialect rows carry a planted annotator bias (positive reviews
    labelled negative): the suspects are mostly those rows, and warn keeps every row."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = prepare_data(config(), tokenizer)
    prepared = prepare_data(config(labelNoise={}, examplesPerRule=20), tokenizer)
    noise = next(r for r in prepared.quality.results if r.rule == "labelNoise")
    assert (noise.split, noise.mode) == ("train", "warn")
    assert 20 <= noise.matched <= 200
    assert len(prepared.train) == len(plain.train)
    rows = read("train.csv")
    dialects = [rows[example["row"]]["dialect"] for example in noise.examples]
    assert len(dialects) == 20
    assert dialects.count("regional") >= 15  # measured: 20 of the first 20 (53 suspects in all)
    for example in noise.examples:
        assert example["suggested"] in ("negative", "positive")
        assert example["suggested"] != example["label"]
