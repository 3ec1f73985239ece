"""runPolicy.maxGpuHours end to end: a real tiny run stops at its budget, with a checkpoint,
a report and exit code 5, and a resumed run continues the GPU-hour count.

The one seam: this machine has no GPU, and a CPU run holds none (its GPU-hours are 0, so no
budget can trip). The tests tell the recipe that its one process holds one GPU
(`Recipe.gpus`); the clock, the checkpoints, the report and the exit code are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_trainer.__main__ import main
from kubetune_trainer.config import EXIT_BUDGET_EXCEEDED, TrainingConfig
from kubetune_trainer.recipe import Recipe


def write_config(folder: Path, model: Path, data: tuple[Path, Path]) -> Path:
    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "labels": ["negative", "positive"]},
            "data": {
                "train": {"source": str(data[0])},
                "validation": {"source": str(data[1])},
                "maxLength": 32,
            },
            "training": {"maxSteps": 8, "batchSize": 16, "learningRate": 5e-3},
            "output": {"uri": str(folder / "out"), "saveModel": False},
        },
        by_name=False,
    )
    path = folder / "config.json"
    path.write_text(config.model_dump_json(exclude_none=True))
    return path


def run(config: Path, folder: Path, max_gpu_hours: str) -> tuple[int, dict[str, Any]]:
    log = folder / "termination-log"
    env = {"KUBETUNE_MAX_GPU_HOURS": max_gpu_hours, "KUBETUNE_TERMINATION_LOG": str(log)}
    code = main(["--config", str(config), "--job-name", "budget"], env=env)
    return code, json.loads(log.read_text()) if log.exists() else {}


def checkpoint_gpu_hours(checkpoint: Path) -> float:
    (state_file,) = checkpoint.glob("custom_checkpoint_*.pkl")
    state: dict[str, Any] = torch.load(state_file, weights_only=False)
    return float(state["gpu_hours"])


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Recipe, "gpus", property(lambda self: 1))


@pytest.mark.usefixtures("one_gpu")
def test_a_spent_budget_stops_with_a_checkpoint_a_report_and_exit_code_5(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = write_config(tmp_path, tiny_model_dir, small_data)
    code, record = run(config, tmp_path, "1e-9")  # 3.6 microseconds of one GPU

    assert code == EXIT_BUDGET_EXCEEDED == 5
    assert record["exitCode"] == 5
    assert record["message"].startswith("the GPU budget is spent: ")
    assert "runPolicy.maxGpuHours is 1e-09; stopped at step 1 of 8" in record["message"]
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["succeeded"] is False
    assert report["steps"] == 1  # the first logged step found the budget spent
    assert report["cost"]["gpuHours"] > 1e-9
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]
    assert 0 < checkpoint_gpu_hours(out / "checkpoints/step-00000001") <= report["cost"]["gpuHours"]
    assert not (out / "model").exists()


@pytest.mark.usefixtures("one_gpu")
def test_a_resumed_run_continues_the_count_and_finishes_within_a_larger_budget(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = write_config(tmp_path, tiny_model_dir, small_data)
    assert run(config, tmp_path, "1e-9")[0] == 5
    stopped = checkpoint_gpu_hours(tmp_path / "out/checkpoints/step-00000001")

    code, _ = run(config, tmp_path, "1.0")

    assert code == 0
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["succeeded"] is True
    assert report["steps"] == 8
    assert report["cost"]["gpuHours"] > stopped  # the first start's hours are in the count
    assert checkpoint_gpu_hours(tmp_path / "out/checkpoints/step-00000008") > stopped


def test_a_cpu_run_holds_no_gpu_and_never_trips_a_budget(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = write_config(tmp_path, tiny_model_dir, small_data)
    code, _ = run(config, tmp_path, "1e-9")
    assert code == 0
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["cost"] == {"gpuHours": 0.0}


def test_a_malformed_budget_is_bad_input_naming_the_variable(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = write_config(tmp_path, tiny_model_dir, small_data)
    code, record = run(config, tmp_path, "two hours")
    assert code == 3
    assert record["message"].startswith("KUBETUNE_MAX_GPU_HOURS must be a positive number")
