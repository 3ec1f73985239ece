"""Preference rows (training.objective dpo): their columns, their rules with counts, their
tokens, and the collator that puts a row's chosen and rejected sequences in one batch."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import IGNORED_LABEL, DataError, PreferenceCollator, prepare_data
from kubetune_trainer.data.cache import cache_key
from kubetune_trainer.training.loaders import pad_multiple
from tests.tiny import make_tokenizer

WORDS = ["the", "kettle", "is", "good", "bad", "lamp", "tent", "fine", "awful"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    made = make_tokenizer(WORDS)
    made.eos_token = "[SEP]"
    return made


def write_rows(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerows(rows)
    return path


KEEP_REPEATED_PROMPTS = {"duplicates": {"mode": "warn"}, "leakage": {"mode": "warn"}}
"""Several pairs may share a prompt; the text rules read the prompt (test_quality.py has them)."""


def config_of(train: Path, validation: Path, **data: Any) -> TrainingConfig:
    data["quality"] = {**KEEP_REPEATED_PROMPTS, **data.get("quality", {})}
    return TrainingConfig.model_validate(
        {
            "model": {"source": "unused", "task": "causal-lm"},
            "data": {
                "train": {"source": str(train)},
                "validation": {"source": str(validation)},
                "textColumn": "prompt",
                **data,
            },
            "training": {"objective": "dpo", "batchSize": 2},
        },
        by_name=False,
    )


def rows(count: int) -> list[tuple[str, str, str]]:
    prompts = ["the kettle is", "the lamp is", "the tent is", "is the lamp", "is the tent"]
    return [(prompts[i % len(prompts)], "fine good", "awful bad") for i in range(count)]


def matched(prepared: Any, rule: str) -> dict[str, int]:
    return {r.split: r.matched for r in prepared.quality.results if r.rule == rule}


def test_each_response_follows_its_prompt_with_the_prompt_masked(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_rows(tmp_path / "train.csv", [("the kettle is", "good", "awful bad"), *rows(3)])
    validation = write_rows(tmp_path / "validation.csv", rows(2))
    prepared = prepare_data(config_of(train, validation), tokenizer)
    first = prepared.train[0]
    ids = tokenizer.convert_tokens_to_ids(["the", "kettle", "is", "good", "awful", "bad", "[SEP]"])
    the, kettle, is_, good, awful, bad, end = ids
    assert first["chosen_input_ids"] == [the, kettle, is_, good, end]
    assert first["chosen_labels"] == [IGNORED_LABEL] * 3 + [good, end]
    assert first["rejected_input_ids"] == [the, kettle, is_, awful, bad, end]
    assert first["rejected_labels"] == [IGNORED_LABEL] * 3 + [awful, bad, end]
    assert first["length"] == 6
    assert prepared.train_texts[0] == "the kettle is"


def test_the_collator_puts_chosen_rows_first_and_pads_them_together() -> None:
    collate = PreferenceCollator(pad_token_id=0, multiple=pad_multiple(torch.device("cuda")))
    first = {"chosen_input_ids": [5, 6], "chosen_labels": [-100, 6]}
    first |= {"rejected_input_ids": [5, 7, 8], "rejected_labels": [-100, 7, 8]}
    first |= {"reference_chosen": -1.5, "reference_rejected": -2.0}
    second = {"chosen_input_ids": [9], "chosen_labels": [9]}
    second |= {"rejected_input_ids": [9, 4], "rejected_labels": [9, 4]}
    second |= {"reference_chosen": -0.5, "reference_rejected": -3.0}
    batch = collate([first, second])
    assert batch["input_ids"].shape == (4, 8)
    assert batch["input_ids"][:, :3].tolist() == [[5, 6, 0], [9, 0, 0], [5, 7, 8], [9, 4, 0]]
    assert batch["attention_mask"].sum(dim=1).tolist() == [2, 1, 3, 2]
    assert batch["labels"][0].tolist() == [-100, 6] + [IGNORED_LABEL] * 6
    assert batch["reference_chosen"].tolist() == [-1.5, -0.5]
    assert batch["reference_rejected"].dtype == torch.float32
    on_a_cpu = PreferenceCollator(0, pad_multiple(torch.device("cpu")))([first, second])
    assert on_a_cpu["input_ids"].tolist() == batch["input_ids"][:, :3].tolist()


def test_identical_preferences_are_dropped_and_counted(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    same = [("the lamp", "fine good", "fine good"), ("the tent", " bad ", "bad")]
    train = write_rows(tmp_path / "train.csv", rows(6) + same)
    validation = write_rows(tmp_path / "validation.csv", rows(3) + same[:1])
    prepared = prepare_data(config_of(train, validation), tokenizer)
    assert matched(prepared, "identicalPreferences") == {"train": 2, "validation": 1}
    assert prepared.rows["train_out"] == 6
    assert prepared.rows["validation_out"] == 3


def test_identical_preferences_fail_the_job_in_fail_mode(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_rows(tmp_path / "train.csv", [*rows(6), ("the lamp", "good", "good")])
    validation = write_rows(tmp_path / "validation.csv", rows(2))
    config = config_of(train, validation, quality={"identicalPreferences": {"mode": "fail"}})
    with pytest.raises(DataError) as refused:
        prepare_data(config, tokenizer)
    message = str(refused.value)
    assert message.startswith("data.quality.identicalPreferences: ")
    assert "has 1 row whose 'chosen' response equals its 'rejected' one (data row 7)" in message


def test_a_missing_response_column_names_its_field(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_rows(tmp_path / "train.csv", rows(4))
    validation = write_rows(tmp_path / "validation.csv", rows(2))
    config = config_of(train, validation, rejectedColumn="worse")
    with pytest.raises(DataError) as refused:
        prepare_data(config, tokenizer)
    assert str(refused.value).startswith("data.rejectedColumn: column 'worse' is not in ")


def test_a_blank_response_is_a_missing_value_with_its_count(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_rows(tmp_path / "train.csv", [*rows(6), ("the lamp", "good", " ")])
    validation = write_rows(tmp_path / "validation.csv", rows(2))
    prepared = prepare_data(config_of(train, validation), tokenizer)
    assert matched(prepared, "missingValues") == {"train": 1, "validation": 0}
    assert prepared.rows["train_out"] == 6


def test_the_data_cache_tells_preference_rows_from_texts(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_rows(tmp_path / "train.csv", rows(4))
    validation = write_rows(tmp_path / "validation.csv", rows(2))
    preferences = config_of(train, validation)
    texts = preferences.model_copy(
        update={"training": preferences.training.model_copy(update={"objective": "sft"})}
    )
    assert cache_key(preferences, tokenizer) != cache_key(texts, tokenizer)


def test_the_length_rule_counts_the_prompt_with_its_longer_response(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    long_answer = ("the kettle is", "fine good", "awful bad the lamp is the tent is fine")
    train = write_rows(tmp_path / "train.csv", [*rows(8), long_answer])
    validation = write_rows(tmp_path / "validation.csv", rows(2))
    length = {"mode": "drop", "maxTokens": 8}
    prepared = prepare_data(config_of(train, validation, quality={"length": length}), tokenizer)
    assert matched(prepared, "length") == {"train": 1, "validation": 0}
    assert prepared.rows["train_out"] == 8


def test_a_duplicate_repeats_the_prompt_and_both_responses(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    repeated = [
        ("the kettle is", "fine good", "awful bad"),
        ("the kettle is", "good", "awful"),  # another pair for the same prompt: kept
        ("The kettle is!", "fine good", "awful bad"),  # the first row again
        ("the lamp is", "good", "bad"),
        ("the tent is", "fine", "awful"),
    ]
    train = write_rows(tmp_path / "train.csv", repeated)
    validation = write_rows(tmp_path / "validation.csv", [("is the tent", "good", "bad")])
    config = config_of(train, validation, quality={"duplicates": {"mode": "drop"}})
    prepared = prepare_data(config, tokenizer)
    duplicates = next(r for r in prepared.quality.results if r.rule == "duplicates")
    assert [example["row"] for example in duplicates.examples] == [2]
    assert prepared.rows["train_out"] == 4
    assert "conflictingResponses" not in {r.rule for r in prepared.quality.results}
