"""Stalled runs end to end: `kubetune run` stops a run that really hangs, and only such a run.

Each run is the real command in a subprocess (a stall ends the process that trains in
it), with the trainer's test hook KUBETUNE_TEST_HANG (kubetune_trainer/hang.py) making it
hang for real: rank 1 stops so that rank 0 blocks in a gloo all-reduce, the data loader
blocks, the evaluation loop blocks. The watchdog under test is the real one, on a short
runPolicy.stallTimeout; it names the phase the run was stuck in and the checkpoint to
continue from, and the same command then continues from that checkpoint and finishes
(the hook hangs once per output directory). A run whose evaluation is slow but beats after
every batch is never stopped, even when the evaluation lasts longer than the timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune_trainer.config import EXIT_STALLED
from tests.integration.test_sigterm import logged_steps
from tests.tiny import lay_out_tiny_job, tiny_job_manifest


def stall_job(folder: Path, stall_timeout: str, output: str) -> Path:
    """The tiny job (20 steps, one evaluation at the end) with its stallTimeout and output
    section."""
    manifest = tiny_job_manifest(epochs=1, batch=16).replace("output: {uri: out}", output)
    (folder / "job.yaml").write_text(f"{manifest}  runPolicy: {{stallTimeout: {stall_timeout}}}\n")
    return folder / "job.yaml"


@pytest.fixture
def job_folder(tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]) -> Path:
    lay_out_tiny_job(tmp_path, tiny_model_dir, small_data)
    return tmp_path


def kubetune_run(folder: Path, *options: str, hang: str) -> tuple[int, str]:
    """`kubetune run job.yaml` in `folder`, as a user types it, with the test hook set."""
    env = {
        **os.environ,
        "KUBETUNE_TEST_HANG": hang,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "COLUMNS": "1000",  # lines unwrapped, paths whole
    }
    command = [sys.executable, "-m", "kubetune_operator", "run", "job.yaml", *options]
    done = subprocess.run(
        command,
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def assert_stopped_then_continued(
    folder: Path, phase: str, *options: str, hang: str, timeout: str = "15s"
) -> None:
    code, output = kubetune_run(folder, *options, hang=hang)

    assert code == EXIT_STALLED, output
    (checkpoint,) = sorted((folder / "out/checkpoints").iterdir())[-1:]
    again = " ".join(["kubetune run job.yaml", *options])
    assert (
        f"while {phase} (runPolicy.stallTimeout {timeout}): the run was stopped; continue from "
        f"its last checkpoint {checkpoint} with: {again}"
    ) in output
    assert "Traceback" not in output
    report = json.loads((folder / "out/report.json").read_text())
    assert (report["outcome"], report["stall"]["phase"]) == ("stalled", phase)
    assert report["stall"]["lastCheckpoint"] == str(checkpoint)

    code, output = kubetune_run(folder, *options, hang=hang)

    assert code == 0, output
    assert f"Resuming from {checkpoint}" in output
    assert json.loads((folder / "out/report.json").read_text())["outcome"] == "succeeded"
    _, second_start = logged_steps(folder / "out/metrics.jsonl")
    assert second_start[0] == int(checkpoint.name.removeprefix("step-")) + 1


def test_a_run_stuck_in_its_data_loader_is_stopped_and_continues(job_folder: Path) -> None:
    stall_job(job_folder, "15s", "output: {uri: out, checkpointEverySteps: 1}")
    assert_stopped_then_continued(job_folder, "Training", hang="dataloader")


def test_a_run_stuck_in_evaluation_is_stopped_and_continues(job_folder: Path) -> None:
    stall_job(job_folder, "15s", "output: {uri: out, checkpointEverySteps: 3}")
    assert_stopped_then_continued(job_folder, "Evaluating", hang="evaluation")


@pytest.mark.slow  # two runs of two processes that import torch each, on gloo
def test_a_rank_stuck_in_a_collective_is_stopped_and_the_group_continues(
    job_folder: Path,
) -> None:
    stall_job(job_folder, "15s", "output: {uri: out, checkpointEverySteps: 1}")
    assert_stopped_then_continued(job_folder, "Training", "--processes", "2", hang="collective")


def test_a_slow_evaluation_that_still_beats_is_not_stopped(job_folder: Path) -> None:
    # 80 validation rows in batches of 32: three batches of 4 s each, beyond the 10 s timeout
    stall_job(job_folder, "10s", "output: {uri: out}")

    code, output = kubetune_run(job_folder, hang="slow-evaluation:4")

    assert code == 0, output
    report = json.loads((job_folder / "out/report.json").read_text())
    assert report["outcome"] == "succeeded"
    assert report["timings"]["evaluationSeconds"] > 10  # slept 12 s: longer than the timeout
