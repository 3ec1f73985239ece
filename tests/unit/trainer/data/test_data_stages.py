"""The data stages after the quality rules, through prepare_data on real files: synthetic
and augmented rows, resampling, and the data report they feed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_operator.api.v1alpha1 import DataValidationStatus
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.crossval import fold_rows
from kubetune_trainer.data import DataError, PreparedData, prepare_data
from kubetune_trainer.data.quality import normalise
from tests.unit.trainer.data.test_data import write_csv

WORDS = [
    "the",
    "kettle",
    "lamp",
    "tent",
    "chair",
    "is",
    "was",
    "good",
    "bad",
    "fine",
    "awful",
    "great",
    "very",
    "really",
    "quite",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tiny_model_dir)
    return loaded


def sentences(count: int, label: str, seed: int, **extra: Any) -> list[dict[str, Any]]:
    """`count` distinct rows of 6-9 words, so no quality rule matches any of them."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        words = rng.choice(WORDS, size=int(rng.integers(6, 10))).tolist()
        rows.append({"text": f"{' '.join(words)} {label} {seed} {index}", "label": label, **extra})
    return rows


@pytest.fixture
def imbalanced(tmp_path: Path) -> tuple[Path, Path]:
    """60 positive and 15 negative training rows, 10 + 10 validation rows; a dialect column."""
    train = sentences(60, "positive", 1, dialect="standard") + sentences(
        15, "negative", 2, dialect="regional"
    )
    validation = sentences(10, "positive", 3, dialect="standard") + sentences(
        10, "negative", 4, dialect="regional"
    )
    return write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "val.csv", validation)


def config_for(train: Path, validation: Path, **data: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": "unused", "labels": ["negative", "positive"]},
            "data": {
                "train": {"source": str(train)},
                "validation": {"source": str(validation)},
                "sensitiveColumns": ["dialect"],
                **data,
            },
            "training": {"batchSize": 4, "seed": 7},
        }
    )


def labels_of(prepared: PreparedData) -> list[int]:
    return np.bincount(np.asarray(prepared.train["labels"][:]), minlength=2).tolist()


def test_without_any_stage_the_report_counts_classes_and_groups_in_and_out(
    imbalanced: tuple[Path, Path], tokenizer: PreTrainedTokenizerBase
) -> None:
    prepared = prepare_data(config_for(*imbalanced), tokenizer)
    report = prepared.report.to_report()
    assert report["classes"]["train"] == {
        "in": {"negative": 15, "positive": 60},
        "out": {"negative": 15, "positive": 60},
    }
    assert report["classes"]["validation"]["out"] == {"negative": 10, "positive": 10}
    assert report["groups"]["dialect"]["train"]["in"] == {"standard": 60, "regional": 15}
    assert report["added"] == {}
    assert report["removed"] == {}
    assert report["imbalanceRatio"] == 4.0
    lengths = report["lengths"]["train"]
    assert lengths["count"] == 75
    assert sum(lengths["histogram"]["counts"]) == 75
    assert lengths["min"] <= lengths["p50"] <= lengths["p90"] <= lengths["max"]


def test_the_recommendation_names_the_classes_when_imbalance_is_left_alone(
    imbalanced: tuple[Path, Path], tokenizer: PreTrainedTokenizerBase
) -> None:
    status = prepare_data(config_for(*imbalanced), tokenizer).report.to_status()
    assert "positive" in status["recommendation"]
    assert "negative" in status["recommendation"]
    weighted = config_for(*imbalanced, balance={"classWeights": "inverse-frequency"})
    assert "recommendation" not in prepare_data(weighted, tokenizer).report.to_status()
    calm = config_for(*imbalanced, balance={"recommendAbove": 5})
    assert "recommendation" not in prepare_data(calm, tokenizer).report.to_status()


def test_the_status_fits_the_crd_status_schema(
    imbalanced: tuple[Path, Path], tokenizer: PreTrainedTokenizerBase
) -> None:
    config = config_for(*imbalanced, balance={"resample": "oversample"})
    status = prepare_data(config, tokenizer).report.to_status()
    parsed = DataValidationStatus.model_validate(status)
    assert parsed.class_counts == {"negative": 60, "positive": 60}
    assert parsed.added == {"oversampled": 45}
    assert parsed.passed is True
    assert parsed.imbalance_ratio == 4.0


def test_oversampling_evens_the_classes_and_keeps_every_row(
    imbalanced: tuple[Path, Path], tokenizer: PreTrainedTokenizerBase
) -> None:
    config = config_for(*imbalanced, balance={"resample": "oversample", "targetRatio": 0.5})
    prepared = prepare_data(config, tokenizer)
    assert labels_of(prepared) == [30, 60]
    assert len(set(prepared.train_texts)) == 75
    assert prepared.report.added == {"oversampled": 15}
    assert len(prepared.validation) == 20


def test_undersampling_leaves_out_rows_of_the_larger_class(
    imbalanced: tuple[Path, Path], tokenizer: PreTrainedTokenizerBase
) -> None:
    config = config_for(*imbalanced, balance={"resample": "undersample"})
    prepared = prepare_data(config, tokenizer)
    assert labels_of(prepared) == [15, 15]
    assert prepared.report.removed == {"undersampled": 45}
    assert prepared.report.to_report()["classes"]["train"]["out"] == {
        "negative": 15,
        "positive": 15,
    }


def test_augmentation_adds_rows_to_training_only(
    imbalanced: tuple[Path, Path], tokenizer: PreTrainedTokenizerBase
) -> None:
    plain = prepare_data(config_for(*imbalanced), tokenizer)
    augmented = prepare_data(config_for(*imbalanced, augmentation={"multiple": 1}), tokenizer)
    assert augmented.report.added["augmented"] == len(augmented.train) - 75
    assert 70 <= augmented.report.added["augmented"] <= 75
    assert augmented.validation_texts == plain.validation_texts
    assert augmented.train_texts[:75] == plain.train_texts
    new_rows = augmented.train_texts[75:]
    assert len(set(new_rows) - set(plain.train_texts)) >= 0.8 * len(new_rows)
    groups = augmented.train_groups["dialect"]
    sources = augmented.train_sources
    assert all(groups[i] == groups[sources[i]] for i in range(len(groups)))


def test_augmented_rows_never_repeat_a_validation_text(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """A one-word row can only become a copy of itself doubled; put that text in validation."""
    train = [{"text": "kettle", "label": "positive"}, *sentences(9, "negative", 5)]
    train += sentences(10, "positive", 6)
    validation = [{"text": "kettle kettle", "label": "positive"}, *sentences(9, "negative", 7)]
    config = TrainingConfig.model_validate(
        {
            "model": {"source": "unused", "labels": ["negative", "positive"]},
            "data": {
                "train": {"source": str(write_csv(tmp_path / "t.csv", train))},
                "validation": {"source": str(write_csv(tmp_path / "v.csv", validation))},
                "augmentation": {"operations": ["insert"], "multiple": 3},
            },
            "training": {"batchSize": 4},
        }
    )
    prepared = prepare_data(config, tokenizer)
    seen = set(normalise(pa.array(prepared.validation_texts)).to_pylist())
    made = normalise(pa.array(prepared.train_texts[20:])).to_pylist()
    assert not seen & set(made)
    assert prepared.report.added["augmented"] < 60


def test_minority_only_augmentation_fills_the_smaller_class(
    imbalanced: tuple[Path, Path], tokenizer: PreTrainedTokenizerBase
) -> None:
    config = config_for(*imbalanced, augmentation={"minorityOnly": True, "multiple": 2})
    prepared = prepare_data(config, tokenizer)
    negatives, positives = labels_of(prepared)
    assert positives == 60
    assert 15 < negatives <= 45


def test_synthetic_rows_join_training_and_go_through_the_rules(
    imbalanced: tuple[Path, Path], tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train, validation = imbalanced
    leaked = sentences(1, "negative", 4, dialect="regional")  # the first validation negative
    synthetic = sentences(20, "negative", 8, dialect="regional") + leaked
    source = write_csv(tmp_path / "synthetic.csv", synthetic)
    config = config_for(
        train,
        validation,
        augmentation={"multiple": 0, "syntheticSources": [{"source": str(source)}]},
    )
    prepared = prepare_data(config, tokenizer)
    assert prepared.report.added == {"synthetic": 20}
    assert prepared.report.quality.dropped() == {"leakage": 1}
    assert labels_of(prepared) == [35, 60]
    assert "__kubetune_synthetic" not in prepared.train.column_names


def test_every_example_row_names_the_file_it_was_read_from(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    blank = {"text": "", "label": "negative", "dialect": "regional"}
    train_rows = [
        *sentences(30, "positive", 1, dialect="standard"),
        blank,  # row 30
        *sentences(15, "negative", 2, dialect="regional"),
    ]
    train = write_csv(tmp_path / "train.csv", train_rows)
    validation = write_csv(
        tmp_path / "val.csv",
        sentences(10, "positive", 3, dialect="standard")
        + sentences(10, "negative", 4, dialect="regional"),
    )
    unlabelled = {**sentences(1, "negative", 9)[0], "label": "", "dialect": "regional"}
    synthetic_rows = [*sentences(2, "negative", 8, dialect="regional"), blank, unlabelled]
    synthetic = write_csv(tmp_path / "synthetic.csv", synthetic_rows)
    augmentation = {"multiple": 0, "syntheticSources": [{"source": str(synthetic)}]}
    config = config_for(train, validation, augmentation=augmentation)

    results = prepare_data(config, tokenizer).report.quality.results
    found = {
        result.rule: [(example["file"], example["row"]) for example in result.examples]
        for result in results
        if result.matched
    }
    assert found == {
        "missingValues": [(str(synthetic), 3)],
        "empty": [(str(train), 30), (str(synthetic), 2)],
    }


def test_a_synthetic_source_with_an_unknown_label_is_refused(
    imbalanced: tuple[Path, Path], tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train, validation = imbalanced
    source = write_csv(tmp_path / "synthetic.csv", sentences(3, "neutral", 9, dialect="x"))
    config = config_for(
        train,
        validation,
        augmentation={"multiple": 0, "syntheticSources": [{"source": str(source)}]},
    )
    with pytest.raises(DataError, match="neutral"):
        prepare_data(config, tokenizer)


def test_folds_never_validate_on_a_copy_of_a_training_row(
    imbalanced: tuple[Path, Path], tokenizer: PreTrainedTokenizerBase
) -> None:
    config = config_for(
        *imbalanced,
        balance={"resample": "oversample"},
        augmentation={"multiple": 1},
    )
    config = TrainingConfig.model_validate(
        config.model_dump(by_alias=True) | {"evaluation": {"crossValidation": {"folds": 3}}}
    )
    prepared = prepare_data(config, tokenizer)
    sources = prepared.train_sources
    seen_validation: list[int] = []
    for kept, held_out in fold_rows(prepared, config):
        assert not set(sources[kept]) & set(sources[held_out])
        assert len(set(sources[held_out])) == len(held_out)
        seen_validation += sources[held_out].tolist()
    assert sorted(seen_validation) == list(range(75))


def test_roc_auc_is_refused_for_a_validation_split_of_one_class(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_csv(
        tmp_path / "train.csv", sentences(20, "positive", 1) + sentences(20, "negative", 2)
    )
    validation = write_csv(tmp_path / "val.csv", sentences(10, "negative", 3))
    config = config_for(train, validation, sensitiveColumns=[])
    roc_auc = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"metric": "rocAuc"})}
    )

    with pytest.raises(DataError) as refused:
        prepare_data(roc_auc, tokenizer)

    assert str(refused.value) == (
        "evaluation.metric: rocAuc needs validation rows of both classes, and every "
        "validation row is negative; pick another metric or add positive rows"
    )
    assert len(prepare_data(config, tokenizer).validation) == 10


def test_roc_auc_is_refused_for_more_than_two_classes(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = sentences(20, "positive", 1) + sentences(20, "negative", 2) + sentences(20, "mixed", 3)
    config = TrainingConfig.model_validate(
        {
            "model": {"source": "unused"},
            "data": {"train": {"source": str(write_csv(tmp_path / "train.csv", rows))}},
            "training": {"batchSize": 4},
            "evaluation": {"metric": "rocAuc"},
        }
    )

    with pytest.raises(DataError) as refused:
        prepare_data(config, tokenizer)

    assert str(refused.value) == (
        "evaluation.metric: rocAuc is binary and there are 3 classes; pick another metric"
    )
