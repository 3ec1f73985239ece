"""data.packing end to end on CPU: a tiny GPT-2 trains on packed long-tailed rows, the
report counts what packing saved, and a resumed packed run continues the same curve."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubetune_trainer.__main__ import run_training
from kubetune_trainer.config import TrainingConfig
from tests.integration.test_trainer import assert_same_loss_curve, crash_then_resume
from tests.tiny import make_tiny_causal_lm

WORDS = [f"w{i}" for i in range(40)]
BATCH = 8
MAX_LENGTH = 64


def long_tailed_texts(rows: int, seed: int) -> list[str]:
    """Rows that walk the word list from a random start by a random stride (next words
    learnable from the first two), with lognormal lengths of 5 to 60 words, like chat data:
    most short, a few long."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(2.5, 0.8, rows).astype(int), 5, 60)
    starts = rng.integers(0, len(WORDS), rows)
    strides = rng.integers(1, 8, rows)
    return [
        " ".join(WORDS[(start + stride * i) % len(WORDS)] for i in range(length))
        for start, stride, length in zip(
            starts.tolist(), strides.tolist(), lengths.tolist(), strict=True
        )
    ]


def write_texts(path: Path, texts: list[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([text] for text in texts)
    return path


@pytest.fixture(scope="module")
def packed_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A causal-lm config with data.packing over 400 long-tailed training rows."""
    folder = tmp_path_factory.mktemp("packing")
    train = write_texts(folder / "train.csv", long_tailed_texts(400, seed=0))
    validation = write_texts(folder / "validation.csv", long_tailed_texts(60, seed=1))
    model = make_tiny_causal_lm(folder / "gpt", WORDS)
    return {
        "model": {"source": str(model), "task": "causal-lm"},
        "data": {
            "train": {"source": str(train)},
            "validation": {"source": str(validation)},
            "maxLength": MAX_LENGTH,
            "packing": True,
        },
        "training": {"epochs": 3, "batchSize": BATCH, "learningRate": 1e-2, "seed": 3},
    }


def config_of(job: dict[str, Any], **training: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {**job, "training": {**job["training"], **training}}, by_name=False
    )


def test_a_packed_run_learns_and_reports_what_packing_saved(
    tmp_path: Path, packed_job: dict[str, Any]
) -> None:
    result = run_training(config_of(packed_job), tmp_path, job_name="packed", env={})
    assert result.succeeded
    data = result.report["data"]
    packing = data["packing"]
    assert packing["rows"] == data["rows"]["train_out"] > 300  # after the quality rules
    assert packing["maxLength"] == MAX_LENGTH
    unpacked_fill = data["lengths"]["train"]["mean"] / MAX_LENGTH
    assert packing["fill"] > 0.95 > 2 * unpacked_fill
    assert packing["tokens"] <= packing["sequences"] * MAX_LENGTH < packing["tokens"] / 0.95
    assert packing["paddingAfter"] < packing["paddingBefore"] / 2
    steps_per_epoch = math.ceil(packing["sequences"] / BATCH)
    assert result.report["steps"] == 3 * steps_per_epoch
    assert [e["step"] for e in result.report["curves"]["evaluations"]] == [
        steps_per_epoch,
        2 * steps_per_epoch,
        3 * steps_per_epoch,
    ]
    train_losses = [loss for _, loss in result.report["curves"]["trainLoss"]]
    assert train_losses[-1] < 0.8 * train_losses[0]
    losses = [e["metrics"]["loss"] for e in result.report["curves"]["evaluations"]]
    assert losses == sorted(losses, reverse=True)  # validation rows, unpacked
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"{packing['rows']} training rows packed into {packing['sequences']} sequences" in page


def test_a_resumed_packed_run_continues_the_same_loss_curve(
    tmp_path: Path, packed_job: dict[str, Any]
) -> None:
    config = config_of(packed_job, epochs=1)
    config = config.model_copy(
        update={"output": config.output.model_copy(update={"checkpoint_every_steps": 3})}
    )
    straight = run_training(config, tmp_path / "straight", job_name="packed", env={})
    resumed_from, result = crash_then_resume(config, tmp_path / "resumed", "packed", 6)
    assert resumed_from == tmp_path / "resumed/checkpoints/step-00000006"
    assert_same_loss_curve(result, straight)
    assert result.metrics["loss"] == pytest.approx(straight.metrics["loss"], rel=1e-4)
