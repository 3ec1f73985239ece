"""Hostile input that a run must refuse at setup, through the trainer's entry point: one
line naming the field or file, exit code 3 (a configuration error: no pod restart helps),
the same line in the termination log, and no report.json, model or checkpoint written."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.__main__ import main
from kubetune_trainer.config import EXIT_INVALID_INPUT, TrainingConfig
from tests.integration.test_trainer import make_config


def refused(config: TrainingConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `config` through the trainer's main; assert it was refused; return its one line."""
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json(by_alias=True))
    output = tmp_path / "run"
    termination_log = tmp_path / "termination-log"
    env = {"KUBETUNE_TERMINATION_LOG": str(termination_log)}
    code = main(["--config", str(config_file), "--output", str(output)], env=env)
    assert code == EXIT_INVALID_INPUT
    message: str = json.loads(termination_log.read_text())["message"]
    printed = capsys.readouterr().err
    assert f"kubetune trainer: {message}\n" in printed
    assert "\n" not in message
    assert "Traceback" not in printed
    assert not (output / "report.json").exists()
    assert not (output / "model").exists()
    assert not (output / "checkpoints").exists()
    return message


def with_freezing(model: Path, data: tuple[Path, Path], **fields: Any) -> TrainingConfig:
    return make_config(model, data, training={"epochs": 1}, freezing=fields)


def test_a_freezing_plan_that_trains_nothing_is_a_configuration_error(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = with_freezing(tiny_model_dir, small_data, frozenModules=["bert.*", "classifier.*"])
    message = refused(config, tmp_path, capsys)
    assert message.startswith("freezing.frozenModules: all ")
    assert "so nothing would train" in message


def test_freeze_layers_deeper_than_the_model_is_a_configuration_error(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = with_freezing(tiny_model_dir, small_data, freezeLayers=1000)
    message = refused(config, tmp_path, capsys)
    assert message.startswith("freezing.freezeLayers: 1000 is deeper than the model")
    assert "2 blocks" in message


def one_class_copy(source: Path, folder: Path) -> Path:
    """`source`'s rows, every one labelled positive."""
    with source.open(encoding="utf-8", newline="") as handle:
        rows = [{**row, "label": "positive"} for row in csv.DictReader(handle)]
    path = folder / "one-class.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_one_class_training_data_is_refused_although_model_labels_declare_two(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    train = one_class_copy(small_data[0], tmp_path)
    config = make_config(tiny_model_dir, (train, small_data[1]), training={"epochs": 1})
    assert config.model.labels == ["negative", "positive"]
    message = refused(config, tmp_path, capsys)
    assert message == (
        f"data.labelColumn: every row of {train} has the label 'positive'; "
        "a classifier needs rows of at least two classes"
    )


def test_a_fifo_as_training_data_is_refused_before_it_is_opened(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    fifo: tuple[Path, threading.Event],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, opened = fifo
    config = make_config(tiny_model_dir, (path, small_data[1]), training={"epochs": 1})
    message = refused(config, tmp_path, capsys)
    assert message == (
        f"data.train.source: {path} is a FIFO (named pipe), not a regular file; give a data "
        "file or a directory of data files"
    )
    assert not opened.is_set()  # neither the data cache's hash nor the reader opened it


def test_a_symlink_to_dev_zero_as_validation_data_is_refused(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    link = tmp_path / "validation.csv"
    link.symlink_to("/dev/zero")
    config = make_config(tiny_model_dir, (small_data[0], link), training={"epochs": 1})
    message = refused(config, tmp_path, capsys)
    assert message.startswith(
        f"data.validation.source: {link} (a symlink to /dev/zero) is a character device, "
    )


def test_a_generation_sample_larger_than_the_validation_rows_is_refused(
    tmp_path: Path, small_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.tiny import make_tiny_causal_lm

    with small_data[0].open() as handle:
        texts = [row["text"] + " " + row["label"] for row in csv.DictReader(handle)]
    config = TrainingConfig.model_validate(
        {
            "model": {
                "source": str(make_tiny_causal_lm(tmp_path / "gpt", texts)),
                "task": "causal-lm",
            },
            "data": {
                "train": {"source": str(small_data[0])},
                "validation": {"source": str(small_data[1])},
                "textPairColumn": "label",
            },
            "evaluation": {"generation": {"samples": 81}},
        },
        by_name=False,
    )
    message = refused(config, tmp_path, capsys)
    assert message == (
        "evaluation.generation.samples: 81 is more than the 80 validation rows; lower it to "
        "at most 80, or add validation rows"
    )
