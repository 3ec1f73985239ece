"""The data stage inside real runs of the recipe: the status it reports, the batches the
class-balanced sampler draws, the cache a restart reads, and a data failure's status."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from kubetune_trainer.__main__ import main
from kubetune_trainer.config import EXIT_INVALID_INPUT, TrainingConfig
from kubetune_trainer.report.progress import METRICS_FILE_NAME
from kubetune_trainer.training.recipe import Recipe
from tests.integration.test_trainer import make_config


def configured(
    model: Path, files: tuple[Path, Path], data: dict[str, Any], **sections: Any
) -> TrainingConfig:
    """make_config's config with more fields of its data section."""
    base = make_config(model, files, **sections).model_dump(by_alias=True, exclude_none=True)
    return TrainingConfig.model_validate({**base, "data": {**base["data"], **data}})


def sections(output: Path, name: str) -> list[dict[str, Any]]:
    """The payloads of every `name` section in the run's metrics.jsonl."""
    events = [json.loads(line) for line in (output / METRICS_FILE_NAME).read_text().splitlines()]
    return [e["payload"] for e in events if e.get("event") == "section" and e["name"] == name]


def test_class_balanced_batches_draw_the_classes_equally(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = configured(tiny_model_dir, small_data, {"balance": {"sampler": "class-balanced"}})
    recipe = Recipe(config, tmp_path / "run", job_name="test", env={})
    recipe.setup()
    try:
        assert recipe.data is not None
        labels = np.asarray(recipe.data.train["labels"][:])
        drawn = np.concatenate([batch["labels"].numpy() for batch in recipe.train_loader])
    finally:
        recipe.cleanup()
    share = np.bincount(labels, minlength=2) / len(labels)
    drawn_share = np.bincount(drawn, minlength=2) / len(drawn)
    assert abs(share[0] - share[1]) > 0.2  # the data is imbalanced ...
    spread = 4 * np.sqrt(0.25 / len(drawn))
    assert abs(drawn_share[0] - 0.5) < spread  # ... the batches are not
    assert len(drawn) == len(labels)


def test_a_restart_reads_the_prepared_data_from_the_cache(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = configured(
        tiny_model_dir, small_data, {"augmentation": {"multiple": 1}}, training={"epochs": 1}
    )
    outputs = []
    for _ in range(2):
        log = StringIO()
        recipe = Recipe(
            config, tmp_path / "run", job_name="test", env={}, console=Console(file=log, width=500)
        )
        recipe.setup()
        assert recipe.data is not None
        outputs.append((log.getvalue(), recipe.data.train_texts))
        recipe.cleanup()
    assert "read from" not in outputs[0][0]
    assert f"prepared rows read from {tmp_path / 'run' / 'cache'}" in outputs[1][0]
    assert outputs[1][1] == outputs[0][1]


def test_the_data_section_of_a_run_holds_the_report(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = configured(
        tiny_model_dir, small_data, {"balance": {"resample": "oversample"}}, training={"epochs": 1}
    )
    recipe = Recipe(config, tmp_path / "run", job_name="test", env={})
    recipe.setup()
    result = recipe.train()
    recipe.cleanup()
    (status,) = sections(tmp_path / "run", "dataValidation")
    counts = status["classCounts"]
    assert counts["negative"] == counts["positive"]
    assert status["added"]["oversampled"] == abs(
        result.report["data"]["classes"]["train"]["in"]["negative"]
        - result.report["data"]["classes"]["train"]["in"]["positive"]
    )
    assert result.report["data"]["lengths"]["train"]["count"] == sum(counts.values())


def test_too_many_dropped_rows_fail_with_the_counts_in_the_status(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    train, _ = small_data
    config = make_config(
        tiny_model_dir,
        (train, train),  # every training row is also a validation row: all leak
    )
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json(by_alias=True))
    output = tmp_path / "run"
    termination_log = tmp_path / "termination-log"
    env = {"KUBETUNE_TERMINATION_LOG": str(termination_log)}
    code = main(["--config", str(config_file), "--output", str(output)], env=env)
    assert code == EXIT_INVALID_INPUT
    record = json.loads(termination_log.read_text())
    assert record["exitCode"] == EXIT_INVALID_INPUT
    assert "maxDroppedFraction" in record["message"]
    (status,) = sections(output, "dataValidation")
    assert status["passed"] is False
    assert "maxDroppedFraction" in status["message"]
    assert "320" in status["message"]
    assert not (output / "report.json").exists()


@pytest.mark.parametrize("setting", [{"resample": "undersample"}, {"sampler": "class-balanced"}])
def test_balance_settings_validate_in_a_manifest(setting: dict[str, str]) -> None:
    config = TrainingConfig.model_validate(
        {"model": {"source": "m"}, "data": {"train": {"source": "t.csv"}, "balance": setting}}
    )
    assert config.data.balance.is_set()
