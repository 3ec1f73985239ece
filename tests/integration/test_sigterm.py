"""SIGTERM end to end: a real tiny run, stopped the way Kubernetes stops a pod, saves a
checkpoint at the step it stopped, says so in report.json, metrics.jsonl, the console and
its termination log, exits with 143, and the next start resumes from that checkpoint and
finishes.

The runs are subprocesses (`python -m kubetune_trainer`, as a pod runs it, or through
`kubetune_trainer.launch` for the launcher's part) and get a real SIGTERM once their first
step is in metrics.jsonl. No periodic checkpoint is configured and the stop comes before
the first evaluation, so every checkpoint found was saved because of the signal.

A SIGTERM after the last step (the final phase) is sent by the run itself, from the real
function that starts the part of the final phase under test, to its own process: the
signal, its handler and the stop are the real ones, at a point no timing could hit. Ctrl-C
(SIGINT) in a terminal is sent the same way: once, it stops the run like SIGTERM; twice, at
once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.__main__ import main
from kubetune_trainer.config import EXIT_CTRL_C, EXIT_INTERRUPTED, TrainingConfig
from kubetune_trainer.examine import final_model
from kubetune_trainer.training.recipe import Recipe
from tests.integration.test_trainer import make_config

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


def finished_event(metrics: Path) -> dict[str, Any]:
    """The last start's "finished" event in metrics.jsonl."""
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    (finished, *_) = [e for e in reversed(events) if e["event"] == "finished"]
    return finished


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
    assert f"training interrupted: {record['message']}" in output
    finished = finished_event(out / "metrics.jsonl")
    assert (finished["outcome"], finished["succeeded"]) == ("interrupted", False)
    assert finished["message"] == record["message"]

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

    assert code == EXIT_INTERRUPTED, output
    record = json.loads(log.read_text())
    assert record["exitCode"] == 143
    stopped = json.loads((tmp_path / "out/report.json").read_text())["steps"]
    assert record["message"].startswith(f"stopped by SIGTERM at step {stopped} of {MAX_STEPS}")
    assert [p.name for p in (tmp_path / "out/checkpoints").iterdir()] == [f"step-{stopped:08d}"]


FINAL_STEPS = 8


def final_phase_config(folder: Path, model: Path, data: tuple[Path, Path]) -> Path:
    """A short run whose final phase has every part: the final evaluation, the bias audit,
    the attributions and the model's save."""
    config = make_config(
        model,
        data,
        training={"maxSteps": FINAL_STEPS},
        evaluation={"attributions": {"sampleSize": 4, "steps": 2, "topTokens": 2}},
        bias={"minGroupSize": 10},
        output={"uri": str(folder / "out")},
    )
    path = folder / "config.json"
    path.write_text(config.model_dump_json(exclude_none=True))
    return path


def sigterm_first(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` that first sends SIGTERM to this process (its handler only sets a flag)."""

    def signalled(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return function(*args, **kwargs)

    return signalled


def run_in_process(config: Path, folder: Path) -> tuple[int, dict[str, Any]]:
    log = folder / "termination-log"
    env = {"KUBETUNE_TERMINATION_LOG": str(log)}
    code = main(["--config", str(config), "--job-name", "final"], env)
    return code, json.loads(log.read_text()) if log.exists() else {}


def final_evaluation_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate = Recipe.evaluate

    def evaluate_last_step(self: Recipe) -> Any:
        if self.state.step == FINAL_STEPS:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self)

    monkeypatch.setattr(Recipe, "evaluate", evaluate_last_step)


def audit_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(final_model, "_audit_bias", sigterm_first(final_model._audit_bias))


def attributions_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(final_model, "_explain", sigterm_first(final_model._explain))


@pytest.mark.parametrize(
    ("signal_during", "sections_done"),
    [
        (final_evaluation_signalled, set()),
        (audit_signalled, {"evaluation", "biasAudit"}),
        (attributions_signalled, {"evaluation", "biasAudit", "attributions"}),
    ],
)
def test_sigterm_in_the_final_phase_skips_the_rest_and_keeps_the_last_checkpoint(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    signal_during: Callable[[pytest.MonkeyPatch], None],
    sections_done: set[str],
) -> None:
    """The part that is running finishes, what comes after it (the next parts of the
    examination, the model's save) is skipped, and the run ends as interrupted with the
    checkpoint of its last step; the next start does the final phase again and saves."""
    config = final_phase_config(tmp_path, tiny_model_dir, small_data)
    with monkeypatch.context() as patched:
        signal_during(patched)
        code, record = run_in_process(config, tmp_path)

    out = tmp_path / "out"
    assert code == EXIT_INTERRUPTED, record
    checkpoint = f"step-{FINAL_STEPS:08d}"
    assert record["message"] == (
        f"stopped by SIGTERM at step {FINAL_STEPS} of {FINAL_STEPS}; checkpoint {checkpoint} saved"
    )
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "interrupted"
    assert {"evaluation", "biasAudit", "attributions"} & report.keys() == sections_done
    assert checkpoint in [p.name for p in (out / "checkpoints").iterdir()]
    assert not (out / "model").exists()
    assert [p.name for p in out.glob(".partial*")] == []
    assert finished_event(out / "metrics.jsonl")["outcome"] == "interrupted"

    code, record = run_in_process(config, tmp_path)

    assert code == 0, record
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "succeeded"
    assert {"evaluation", "biasAudit", "attributions"} <= report.keys()
    assert (out / "model/config.json").exists()


def test_sigterm_once_the_model_is_being_saved_ends_the_run_as_it_would_have_ended(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The save is not cut short (a half-written model is worse than none), and once the
    model is saved nothing is left to resume: the run ends as it would have."""
    config = final_phase_config(tmp_path, tiny_model_dir, small_data)
    monkeypatch.setattr(Recipe, "_save_model", sigterm_first(Recipe._save_model))

    code, record = run_in_process(config, tmp_path)

    assert code == 0, record
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "succeeded"
    assert report["artifacts"]["model"] == str(out / "model")
    assert (out / "model/config.json").exists()
    assert finished_event(out / "metrics.jsonl")["outcome"] == "succeeded"


def ctrl_c_at_step(monkeypatch: pytest.MonkeyPatch, step: int, presses: int) -> None:
    """Ctrl-C `presses` times right after optimizer step `step`, before it is logged."""
    after_step = Recipe._after_optimizer_step

    def pressed(self: Recipe) -> str | None:
        if self.state.step == step:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return after_step(self)

    monkeypatch.setattr(Recipe, "_after_optimizer_step", pressed)


def test_ctrl_c_stops_the_run_like_sigterm_with_a_checkpoint_to_continue_from(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = final_phase_config(tmp_path, tiny_model_dir, small_data)
    with monkeypatch.context() as patched:
        ctrl_c_at_step(patched, step=3, presses=1)
        code, record = run_in_process(config, tmp_path)

    assert code == EXIT_INTERRUPTED, record
    out = tmp_path / "out"
    stopped = json.loads((out / "report.json").read_text())["steps"]
    assert 3 <= stopped < FINAL_STEPS
    checkpoint = f"step-{stopped:08d}"
    assert record["message"] == (
        f"stopped by SIGINT at step {stopped} of {FINAL_STEPS}; checkpoint {checkpoint} saved"
    )
    assert [p.name for p in (out / "checkpoints").iterdir()] == [checkpoint]
    console = " ".join(capsys.readouterr().err.split())
    assert console.count("Ctrl-C: stopping at the next logged step with a checkpoint") == 1

    code, record = run_in_process(config, tmp_path)

    assert code == 0, record
    assert json.loads((out / "report.json").read_text())["outcome"] == "succeeded"


def test_ctrl_c_twice_stops_at_once_without_a_traceback(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = final_phase_config(tmp_path, tiny_model_dir, small_data)
    ctrl_c_at_step(monkeypatch, step=3, presses=2)

    code, record = run_in_process(config, tmp_path)

    assert code == EXIT_CTRL_C == 128 + signal.SIGINT, record
    assert record["message"] == (
        "interrupted by Ctrl-C: stopped at once, without saving a checkpoint"
    )
    out = tmp_path / "out"
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())
    assert not (out / "report.json").exists()
    console = capsys.readouterr().err
    assert "kubetune trainer: interrupted by Ctrl-C: stopped at once" in console
    assert "Traceback" not in console
