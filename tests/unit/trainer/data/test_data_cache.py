"""The prepared-data cache: a restart reads it back, any change to data or config misses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import DataError, PreparedData, prepare_data
from kubetune_trainer.data.cache import cached_prepare
from tests.unit.trainer.data.test_data import write_csv
from tests.unit.trainer.data.test_data_stages import config_for, sentences


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tiny_model_dir)
    return loaded


class CountingPrepare:
    """The real prepare_data, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, config: TrainingConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
        self.calls += 1
        return prepare_data(config, tokenizer)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    train = sentences(30, "positive", 1, dialect="a") + sentences(10, "negative", 2, dialect="b")
    validation = sentences(5, "positive", 3, dialect="a") + sentences(5, "negative", 4)
    for row in validation[5:]:
        row["dialect"] = ""
    return write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "val.csv", validation)


def test_a_second_start_reads_the_cache_and_gets_the_same_data(
    files: tuple[Path, Path], tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    config = config_for(*files, augmentation={"multiple": 1}, balance={"resample": "oversample"})
    prepare = CountingPrepare()
    first, cached_first = cached_prepare(config, tokenizer, tmp_path / "cache", prepare)
    again, cached_again = cached_prepare(config, tokenizer, tmp_path / "cache", prepare)
    assert (cached_first, cached_again, prepare.calls) == (False, True, 1)
    assert again.train.to_dict() == first.train.to_dict()
    assert again.validation.to_dict() == first.validation.to_dict()
    assert again.train_texts == first.train_texts
    assert again.train_groups == first.train_groups
    assert again.validation_groups == first.validation_groups
    assert again.validation_groups["dialect"].count("(missing)") == 5
    np.testing.assert_array_equal(again.train_sources, first.train_sources)
    assert again.report.to_report() == first.report.to_report()
    assert again.report.to_status() == first.report.to_status()
    for name in ("labels", "train_class_counts", "class_weights", "rows", "majority_rate"):
        assert getattr(again, name) == getattr(first, name)


def test_changed_data_or_config_prepares_again_and_keeps_one_cache(
    files: tuple[Path, Path], tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train, validation = files
    prepare = CountingPrepare()
    cache = tmp_path / "cache"
    cached_prepare(config_for(train, validation), tokenizer, cache, prepare)
    with train.open("a", encoding="utf-8") as handle:
        handle.write("the lamp is quite fine indeed,positive,a\n")
    changed, hit = cached_prepare(config_for(train, validation), tokenizer, cache, prepare)
    assert not hit
    assert len(changed.train) == 41
    longer = config_for(train, validation, maxLength=64)
    _, hit = cached_prepare(longer, tokenizer, cache, prepare)
    assert not hit
    assert prepare.calls == 3
    assert len(list(cache.glob("data-*"))) == 1


def test_a_half_written_cache_is_not_trusted(
    files: tuple[Path, Path], tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    config = config_for(*files)
    cache = tmp_path / "cache"
    cached_prepare(config, tokenizer, cache, prepare_data)
    (folder,) = cache.glob("data-*")
    (folder / "prepared.json").unlink()  # what a crash before the rename would leave
    prepare = CountingPrepare()
    _, hit = cached_prepare(config, tokenizer, cache, prepare)
    assert (hit, prepare.calls) == (False, 1)


def test_a_missing_file_is_the_users_error_and_leaves_no_cache(
    files: tuple[Path, Path], tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    config = config_for(tmp_path / "nowhere.csv", files[1])
    with pytest.raises(DataError, match=r"nowhere\.csv"):
        cached_prepare(config, tokenizer, tmp_path / "cache", prepare_data)
    assert not (tmp_path / "cache").exists()
