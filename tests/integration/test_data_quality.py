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


def config(**quality: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": "unused", "labels": ["negative", "positive"]},
            "data": {
                "train": {"source": str(DATA / "train.csv")},
                "validation": {"source": str(DATA / "validation.csv")},
                "sensitiveColumns": ["dialect"],
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
    examples = prepared.quality.to_report()["results"][0]["examples"]
    assert all(isinstance(example["row"], int) for example in examples)


def test_warn_keeps_the_rows_and_counts_them(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = prepare_data(config(duplicates={"mode": "warn"}), tokenizer)
    status = prepared.quality.to_status()
    assert status["flagged"]["duplicates"] > 100
    assert "duplicates" not in status["dropped"]


def test_fail_mode_and_the_dropped_share_limit_name_the_rule(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(DataError, match=r"data\.quality: rule leakage matched \d+ of \d+ train"):
        prepare_data(config(leakage={"mode": "fail"}), tokenizer)
    with pytest.raises(DataError, match=r"more than maxDroppedFraction 0\.01"):
        prepare_data(config(maxDroppedFraction=0.01), tokenizer)
