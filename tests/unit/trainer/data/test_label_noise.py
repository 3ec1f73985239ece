"""Label-noise detection on synthetic data with planted label flips, and its refusals to guess."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import DataError, prepare_data
from kubetune_trainer.data.label_noise import find_suspects

VOCABULARY = {
    0: ["kettle", "toaster", "blender", "oven", "fridge", "kitchen", "stove", "mixer"],
    1: ["guitar", "piano", "violin", "drum", "flute", "trumpet", "cello", "harp"],
    2: ["football", "tennis", "soccer", "golf", "hockey", "rugby", "cricket", "skiing"],
}
COMMON = ["the", "a", "is", "and", "very", "really", "quite", "my", "this"]
NAMES = ["home", "music", "sport"]


def planted(
    seed: int, rows: int = 330, flips: int = 10
) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Texts of three classes with their own words (four of theirs, two shared, a row number),
    the true labels, the labels with `flips` rows moved to another class, and those rows."""
    rng = np.random.default_rng(seed)
    labels = np.arange(rows, dtype=np.int64) % 3
    texts = []
    for row, label in enumerate(labels):
        words = [*rng.choice(VOCABULARY[int(label)], 4), *rng.choice(COMMON, 2)]
        rng.shuffle(words)
        texts.append(" ".join(words) + f" number {row}")
    flipped = np.sort(rng.choice(rows, flips, replace=False))
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 3, flips)) % 3
    return texts, labels, noisy, flipped


@pytest.mark.parametrize("seed", range(5))
def test_most_planted_flips_are_found_and_few_clean_rows(seed: int) -> None:
    """Measured: 7 to 10 of the 10 flips found per dataset, no clean row flagged (C=1 logistic
    regression, 5 folds); the margins allow a little drift across scikit-learn versions."""
    texts, labels, noisy, flipped = planted(seed)
    suspects = find_suspects(texts, noisy, folds=5, seed=42)
    found = set(np.flatnonzero(suspects.matched).tolist())
    assert len(found & set(flipped.tolist())) >= 7
    assert len(found - set(flipped.tolist())) <= 3
    caught = sorted(found & set(flipped.tolist()))
    assert (suspects.suggested[caught] == labels[caught]).all()
    assert (suspects.probability[caught] > 0.5).all()
    assert suspects.note == "5 folds"


def test_the_same_seed_finds_the_same_rows() -> None:
    texts, _, noisy, _ = planted(0)
    first = find_suspects(texts, noisy, folds=5, seed=7)
    second = find_suspects(texts, noisy, folds=5, seed=7)
    assert (first.matched == second.matched).all()
    assert np.array_equal(first.probability, second.probability)


def test_class_ids_need_not_start_at_zero_or_be_contiguous() -> None:
    texts, _, noisy, _ = planted(0)
    ids = np.array([3, 7, 9])[noisy]  # classes a declared label list has no rows of
    suspects = find_suspects(texts, ids, folds=5, seed=42)
    reference = find_suspects(texts, noisy, folds=5, seed=42)
    assert (suspects.matched == reference.matched).all()
    assert set(suspects.suggested.tolist()) <= {3, 7, 9}


def test_folds_drop_to_the_smallest_class() -> None:
    texts, _, noisy, _ = planted(1, rows=60, flips=0)
    keep = np.flatnonzero((noisy != 2) | (np.arange(60) < 9))  # class 2: 3 rows
    suspects = find_suspects([texts[i] for i in keep], noisy[keep], folds=5, seed=0)
    assert suspects.note == "3 folds, not 5: the smallest class has 3 rows"
    assert len(suspects.matched) == len(keep)


@pytest.mark.parametrize(
    ("texts", "labels", "note"),
    [
        (
            ["a b", "c d", "e f"],
            [0, 0, 0],
            "skipped: the training rows hold fewer than two classes",
        ),
        (
            ["good kettle", "good toaster", "bad lamp"],
            [0, 0, 1],
            "skipped: a class has 1 training row; out-of-fold predictions need at least 2 rows "
            "of every class",
        ),
    ],
)
def test_too_few_rows_skip_the_check_with_a_reason(
    texts: list[str], labels: list[int], note: str
) -> None:
    suspects = find_suspects(texts, np.array(labels), folds=5, seed=0)
    assert suspects.note == note
    assert not suspects.matched.any()
    assert (suspects.suggested == -1).all()


def test_texts_without_words_skip_the_check() -> None:
    suspects = find_suspects(["!", "?", "...", "-"], np.array([0, 0, 1, 1]), folds=2, seed=0)
    assert suspects.note.startswith("skipped: the texts give the model nothing (")
    assert not suspects.matched.any()


# --- through prepare_data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tiny_model_dir)
    return loaded


@pytest.fixture(scope="module")
def noisy_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """A training file of the planted dataset and a clean validation file."""
    folder = tmp_path_factory.mktemp("noisy")
    texts, _, noisy, flipped = planted(0)
    validation_texts, validation_labels, _, _ = planted(99, rows=60, flips=0)
    paths = []
    for name, rows, labels in (
        ("train", texts, noisy),
        ("validation", [f"held out {t}" for t in validation_texts], validation_labels),
    ):
        path = folder / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows((text, NAMES[label]) for text, label in zip(rows, labels, strict=True))
        paths.append(path)
    return paths[0], paths[1], flipped


def noise_config(train: Path, validation: Path, **label_noise: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": "unused"},
            "data": {
                "train": {"source": str(train)},
                "validation": {"source": str(validation)},
                "quality": {"labelNoise": label_noise, "examplesPerRule": 20},
            },
        }
    )


def test_warn_mode_reports_the_suspects_and_keeps_them(
    noisy_files: tuple[Path, Path, Any], tokenizer: PreTrainedTokenizerBase
) -> None:
    train, validation, flipped = noisy_files
    prepared = prepare_data(noise_config(train, validation), tokenizer)
    result = next(r for r in prepared.quality.results if r.rule == "labelNoise")
    assert (result.split, result.mode, result.note) == (
        "train",
        "warn",
        "suspected label errors; 5 folds",
    )
    assert len(prepared.train) == 330
    rows = [example["row"] for example in result.examples]
    assert len(set(rows) & set(flipped.tolist())) >= 7
    assert result.matched <= 13
    assert prepared.quality.flagged()["labelNoise"] == result.matched
    example = result.examples[0]
    assert set(example) == {"row", "file", "text", "label", "suggested", "probability"}
    assert example["file"] == str(train)
    assert example["suggested"] in NAMES
    assert example["suggested"] != example["label"]
    assert 0.5 < example["probability"] <= 1


def test_drop_mode_removes_the_suspects(
    noisy_files: tuple[Path, Path, Any], tokenizer: PreTrainedTokenizerBase
) -> None:
    train, validation, _ = noisy_files
    prepared = prepare_data(noise_config(train, validation, mode="drop"), tokenizer)
    dropped = prepared.quality.dropped()["labelNoise"]
    assert 7 <= dropped <= 13
    assert len(prepared.train) == 330 - dropped
    assert prepared.quality.rows_in["train"] - dropped == prepared.quality.rows_out["train"]


def test_fail_mode_names_the_rule_and_rows(
    noisy_files: tuple[Path, Path, Any], tokenizer: PreTrainedTokenizerBase
) -> None:
    train, validation, _ = noisy_files
    with pytest.raises(DataError) as error:
        prepare_data(noise_config(train, validation, mode="fail"), tokenizer)
    message = str(error.value)
    assert message.startswith("data.quality.labelNoise: ")
    assert f"of 330 train rows of {train} match (file rows " in message
    assert "suspected label errors; 5 folds" in message
