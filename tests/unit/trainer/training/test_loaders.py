"""The run's loaders over the sentiment rows, prepared by the real pipeline for a tiny BERT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import PreparedData, prepare_data
from kubetune_trainer.modeling import load_tokenizer
from kubetune_trainer.training.loaders import (
    CUDA_LOADER_WORKERS,
    build_loaders,
    data_loader_workers,
    draw_weights,
    endless_batches,
    steps_per_epoch,
    training_rows,
    training_sample,
)


def config(model: Path, files: tuple[Path, Path], **sections: Any) -> TrainingConfig:
    base: dict[str, Any] = {
        "model": {"source": str(model), "labels": ["negative", "positive"]},
        "data": {"train": {"source": str(files[0])}, "validation": {"source": str(files[1])}},
        "training": {"batchSize": 16, "seed": 3},
        "output": {"uri": "/out"},
    }
    for name, fields in sections.items():
        base[name] = {**base[name], **fields}
    return TrainingConfig.model_validate(base, by_name=False)


def prepared(configured: TrainingConfig) -> PreparedData:
    return prepare_data(configured, load_tokenizer(configured))


def test_the_loaders_batch_every_row_padded_to_its_longest_on_a_cpu(
    tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    configured = config(tiny_model_dir, small_data)
    data = prepared(configured)
    rows = training_rows(configured, data, torch.device("cpu"))
    train, validation, _ = build_loaders(
        configured, load_tokenizer(configured), data, rows, torch.device("cpu")
    )

    batches = list(train)
    assert sum(len(b["labels"]) for b in batches) == len(data.train) == 320
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == [int(b["attention_mask"].sum(dim=1).max()) for b in batches]
    assert any(width % 8 for width in widths)  # no rounding up: padding is only extra work
    assert "length" not in batches[0]
    assert [len(b["labels"]) for b in validation] == [32, 32, 16]  # 2 x batchSize
    assert train.num_workers == 0


def test_the_training_sample_is_fixed_by_the_seed_and_as_large_as_the_validation(
    tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    configured = config(tiny_model_dir, small_data)
    data = prepared(configured)
    sample = training_sample(data, seed=3)
    assert len(data.validation) == len(sample) == 80
    chosen = [tuple(row) for row in sample["input_ids"]]
    training = {tuple(row) for row in data.train["input_ids"]}
    assert len(set(chosen)) == 80
    assert set(chosen) <= training
    assert training_sample(data, seed=3)["input_ids"] == sample["input_ids"]
    assert training_sample(data, seed=4)["input_ids"] != sample["input_ids"]
    *_, loader = build_loaders(
        configured, load_tokenizer(configured), data, data.train, torch.device("cpu")
    )
    batches = list(loader)
    assert sorted(batches[0]) == ["attention_mask", "input_ids", "labels"]
    assert torch.cat([b["labels"] for b in batches]).tolist() == sample["labels"][:]


def test_the_training_order_is_the_same_for_the_same_seed(
    tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    configured = config(tiny_model_dir, small_data)
    data = prepared(configured)
    orders = []
    for _ in range(2):
        train, _, _ = build_loaders(
            configured, load_tokenizer(configured), data, data.train, torch.device("cpu")
        )
        orders.append(torch.cat([b["input_ids"][:, 1] for b in train]).tolist())
    assert orders[0] == orders[1]


def test_class_balanced_draws_weigh_each_class_alike(
    tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    plain = config(tiny_model_dir, small_data)
    balanced = config(tiny_model_dir, small_data, data={"balance": {"sampler": "class-balanced"}})
    data = prepared(plain)
    assert draw_weights(plain, data) is None
    weights = draw_weights(balanced, data)
    assert weights is not None
    labels = np.asarray(data.train["labels"][:])
    per_class = [weights[labels == c].sum() for c in (0, 1)]
    assert per_class[0] == pytest.approx(per_class[1])


@pytest.mark.parametrize(
    ("rows", "processes", "accumulation", "steps"),
    [(320, 1, 1, 20), (321, 1, 1, 21), (320, 2, 1, 10), (320, 2, 4, 3), (16, 4, 1, 1)],
)
def test_steps_per_epoch_count_each_processs_share_of_the_batches(
    rows: int, processes: int, accumulation: int, steps: int
) -> None:
    configured = config(
        Path("/models/unused"),
        (Path("/data/t.csv"), Path("/data/v.csv")),
        training={"gradientAccumulationSteps": accumulation},
    )
    assert steps_per_epoch(configured, rows, processes) == steps


def test_workers_are_as_configured_else_some_beside_a_gpu_only() -> None:
    files = (Path("/data/t.csv"), Path("/data/v.csv"))
    unset = config(Path("/models/unused"), files)
    assert data_loader_workers(unset, torch.device("cpu")) == 0
    assert data_loader_workers(unset, torch.device("cuda")) == CUDA_LOADER_WORKERS
    three = config(Path("/models/unused"), files, training={"dataLoaderWorkers": 3})
    assert data_loader_workers(three, torch.device("cpu")) == 3


class EpochLoader:
    """A loader that, like a prepared one, takes its epoch before each pass."""

    def __init__(self) -> None:
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        return iter([(self.epoch, 0), (self.epoch, 1)])


def test_endless_batches_go_on_epoch_after_epoch() -> None:
    batches = endless_batches(EpochLoader())
    assert [next(batches) for _ in range(5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
