"""SIGTERM end to end: a real tiny run, stopped the way Kubernetes stops a pod, saves a
checkpoint at the step it stopped, says so in report.json and its termination log, exits
with 143, and the next start resumes from that checkpoint and finishes.

The runs are subprocesses (`python -m kubetune_trainer`, as a pod runs it, or through
`kubetune_trainer.launch` for the launcher's part) and get a real SIGTERM once their first
step is in metrics.jsonl. No periodic checkpoint is configured and the stop comes before
the first evaluation, so every checkpoint found was saved because of the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubetune_trainer.config import EXIT_INTERRUPTED, TrainingConfig

MAX_STEPS = 160
"""One epoch of 320 rows in batches of 2: every step is logged, the one evaluation is at the end."""
TRAINER = [sys.executable, "-m", "kubetune_trainer"]
LAUNCHER = [
    *(sys.executable, "-m", "kubetune_trainer.launch", "--cpu", "--num_machines", "1"),
    *("--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
    *("-m", "kubetune_trainer"),
]


def write_config(folder: Path, model: Path, data: tuple[Path, Path]) -> Path:
    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "labels": ["negative", "positive"]},
            "data": {
                "train": {"source": str(data[0])},
                "validation": {"source": str(data[1])},
                "maxLength": 32,
            },
            "training": {"maxSteps": MAX_STEPS, "batchSize": 2, "learningRate": 5e-3},
            "output": {
                "uri": str(folder / "out"),
                "saveModel": False,
                "checkpointEverySteps": 1_000_000,
            },
        },
        by_name=False,
    )
    path = folder / "config.json"
    path.write_text(config.model_dump_json(exclude_none=True))
    return path


def start(command: list[str], config: Path, log: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "KUBETUNE_TERMINATION_LOG": str(log),
        "PYTHONPATH": os.pathsep.join(sys.path),
        "COLUMNS": "1000",  # the console's lines unwrapped, paths whole
    }
    return subprocess.Popen(
        [*command, "--config", str(config), "--job-name", "sigterm"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group, as a container's PID 1 is: the launcher signals its group.
        start_new_session=True,
    )


def wait_for_a_logged_step(process: subprocess.Popen[str], metrics: Path) -> None:
    while process.poll() is None:
        if metrics.exists() and '"event": "step"' in metrics.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"the run ended before its first step: {process.communicate()[0]}")


def stop_after_a_logged_step(command: list[str], config: Path, log: Path) -> tuple[int, str]:
    process = start(command, config, log)
    wait_for_a_logged_step(process, config.parent / "out/metrics.jsonl")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def logged_steps(metrics: Path) -> list[list[int]]:
    """The logged steps of each start, in order (each start begins with a "started" event)."""
    starts: list[list[int]] = []
    for line in metrics.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if event["event"] == "started":
            starts.append([])
        elif event["event"] == "step":
            starts[-1].append(event["step"])
    return starts


def test_sigterm_saves_a_checkpoint_at_the_step_it_stopped_and_the_next_start_resumes(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = write_config(tmp_path, tiny_model_dir, small_data)
    log = tmp_path / "termination-log"

    code, output = stop_after_a_logged_step(TRAINER, config, log)

    assert code == EXIT_INTERRUPTED == 143, output
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    stopped = report["steps"]
    assert 1 <= stopped < MAX_STEPS
    assert report["outcome"] == "interrupted"
    assert report["succeeded"] is False
    checkpoint = f"step-{stopped:08d}"
    assert [p.name for p in (out / "checkpoints").iterdir()] == [checkpoint]
    assert report["artifacts"]["lastCheckpoint"] == str(out / "checkpoints" / checkpoint)
    assert not (out / "model").exists()
    assert "biasAudit" not in report
    record = json.loads(log.read_text())
    assert record == {
        "exitCode": 143,
        "message": f"stopped by SIGTERM at step {stopped} of {MAX_STEPS}; "
        f"checkpoint {checkpoint} saved",
    }
    assert logged_steps(out / "metrics.jsonl")[0][-1] == stopped

    resumed = start(TRAINER, config, log)
    output, _ = resumed.communicate(timeout=300)

    assert resumed.returncode == 0, output
    assert f"Resuming from {out / 'checkpoints' / checkpoint}" in output
    second_start = logged_steps(out / "metrics.jsonl")[1]
    assert second_start[0] == stopped + 1
    assert second_start[-1] == MAX_STEPS
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "succeeded"
    assert report["succeeded"] is True
    assert report["steps"] == MAX_STEPS


def test_the_launcher_passes_sigterm_on_to_the_trainer(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    """accelerate's launcher of one process has no SIGTERM handler: as a container's PID 1
    it would drop the signal, elsewhere it would die of it and leave the trainer running.
    kubetune_trainer.launch hands it to the trainer, which stops with its checkpoint."""
    config = write_config(tmp_path, tiny_model_dir, small_data)
    log = tmp_path / "termination-log"

    code, output = stop_after_a_logged_step(LAUNCHER, config, log)

    assert code == 1, output  # accelerate's launcher reports any failed child as 1
    record = json.loads(log.read_text())
    assert record["exitCode"] == 143
    stopped = json.loads((tmp_path / "out/report.json").read_text())["steps"]
    assert record["message"].startswith(f"stopped by SIGTERM at step {stopped} of {MAX_STEPS}")
    assert [p.name for p in (tmp_path / "out/checkpoints").iterdir()] == [f"step-{stopped:08d}"]
