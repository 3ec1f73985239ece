"""runPolicy.maxGpuHours end to end: a real tiny run stops at its budget, with a checkpoint,
a report and exit code 5, and a resumed run continues the GPU-hour count, also past a
crash (cost.json) and across the folds of a cross-validation.

The one seam: this machine has no GPU, and a CPU run holds none (its GPU-hours are 0, so no
budget can trip). The tests tell the recipe that its one process holds one GPU
(`Recipe.gpus`); the clock, the checkpoints, the report and the exit code are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_trainer.__main__ import main
from kubetune_trainer.config import EXIT_BUDGET_EXCEEDED, TrainingConfig
from kubetune_trainer.cost import LEDGER_FILE
from kubetune_trainer.training.recipe import Recipe
from tests.integration.test_sigterm import finished_event


def write_config(
    folder: Path, model: Path, data: tuple[Path, Path], **sections: dict[str, Any]
) -> Path:
    spec: dict[str, Any] = {
        "model": {"source": str(model), "labels": ["negative", "positive"]},
        "data": {
            "train": {"source": str(data[0])},
            "validation": {"source": str(data[1])},
            "maxLength": 32,
        },
        "training": {"maxSteps": 8, "batchSize": 16, "learningRate": 5e-3},
        "output": {"uri": str(folder / "out"), "saveModel": False},
    }
    for name, section in sections.items():
        spec[name] = {**spec.get(name, {}), **section}
    config = TrainingConfig.model_validate(spec, by_name=False)
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
    finished = finished_event(out / "metrics.jsonl")
    assert finished["outcome"] == "budgetExceeded"
    assert finished["message"] == record["message"]


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


CRASH_AFTER_A_CHECKPOINT = """
import os, signal, sys
from kubetune_trainer.__main__ import main
from kubetune_trainer.training.recipe import Recipe

log_step = Recipe._log_step

def log_step_then_die_at_step_6(self):
    reason = log_step(self)
    if self.state.step == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return reason

Recipe.gpus = property(lambda self: 1)
Recipe._log_step = log_step_then_die_at_step_6
sys.exit(main(sys.argv[1:]))
"""
"""A trainer holding one GPU that is killed (as by the OOM killer) once step 6 is logged."""


def test_the_hours_past_the_last_checkpoint_of_a_killed_start_are_counted(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    """The killed start's checkpoint (step 4) holds fewer GPU-hours than it used; cost.json
    holds them up to step 6. The next start runs on the CPU, which adds no GPU-hour, so its
    final count is exactly what the killed start used: the ledger's, not the checkpoint's."""
    config = write_config(tmp_path, tiny_model_dir, small_data, output={"checkpointEverySteps": 4})
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_A_CHECKPOINT, "--config", str(config)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004"]
    at_checkpoint = checkpoint_gpu_hours(out / "checkpoints/step-00000004")
    ledger = json.loads((out / LEDGER_FILE).read_text())
    assert ledger["attempts"] == 1
    assert ledger["gpuHours"] > at_checkpoint > 0

    code, _ = run(config, tmp_path, "1.0")

    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 8
    assert report["cost"]["gpuHours"] == ledger["gpuHours"]
    assert json.loads((out / LEDGER_FILE).read_text()) == {
        "gpuHours": ledger["gpuHours"],
        "attempts": 2,
    }


@pytest.mark.usefixtures("one_gpu")
def test_one_budget_covers_every_fold_of_a_cross_validation(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    """Each fold's count starts from the folds before it, so the budget compares (and the
    reports show) the hours of the whole cross-validation; the summary's cost is the last
    fold's, not a sum that would count the first fold three times."""
    config = write_config(
        tmp_path, tiny_model_dir, small_data, evaluation={"crossValidation": {"folds": 3}}
    )
    code, _ = run(config, tmp_path, "1.0")

    assert code == 0
    out = tmp_path / "out"
    folds = [json.loads((out / f"fold-{k}/report.json").read_text()) for k in range(3)]
    hours = [fold["cost"]["gpuHours"] for fold in folds]
    assert 0 < hours[0] < hours[1] < hours[2]
    for k in (1, 2):
        first_step = first_logged_gpu_hours(out / f"fold-{k}/metrics.jsonl")
        assert hours[k - 1] < first_step < hours[k]
    assert json.loads((out / "report.json").read_text())["cost"] == {"gpuHours": hours[2]}
    ledgers = [json.loads((out / f"fold-{k}" / LEDGER_FILE).read_text()) for k in range(3)]
    # Each fold's ledger holds its own hours (read a moment after its report's count).
    assert sum(ledger["gpuHours"] for ledger in ledgers) == pytest.approx(hours[2], rel=1e-3)


def first_logged_gpu_hours(metrics: Path) -> float:
    for line in metrics.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if event["event"] == "step":
            return float(event["gpuHours"])
    raise AssertionError(f"no logged step in {metrics}")
