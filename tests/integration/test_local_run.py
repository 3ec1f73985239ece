"""`kubetune run` as a user meets it: a manifest in a folder, results on disk, clear refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubetune_operator.cli.app import app
from tests.integration.test_sigterm import ctrl_c_at_step, logged_steps, wait_for_a_logged_step
from tests.tiny import lay_out_tiny_job, tiny_job_manifest

runner = CliRunner()


@pytest.fixture
def job_folder(tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]) -> Path:
    """A folder as a user keeps it: the manifest beside its model and data (relative paths)."""
    lay_out_tiny_job(tmp_path, tiny_model_dir, small_data)
    (tmp_path / "job.yaml").write_text(tiny_job_manifest(epochs=1, batch=16))
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["run", *args], terminal_width=200)
    return result.exit_code, result.output


def test_run_resolves_paths_against_the_manifest_and_reports(job_folder: Path) -> None:
    code, output = run(str(job_folder / "job.yaml"))
    assert code == 0, output
    assert "✓ tiny finished" in output
    report = json.loads((job_folder / "out/report.json").read_text())
    assert report["succeeded"] is True
    assert report["config"]["data"]["train"]["source"] == str(job_folder / "data/train.csv")
    assert f"model          {job_folder / 'out/model'}" in output


def test_a_run_stopped_by_ctrl_c_continues_with_the_same_command(
    job_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        ctrl_c_at_step(patched, step=3, presses=1)
        code, output = run(str(job_folder / "job.yaml"))
    assert code == 130, output  # as a shell reports a command stopped by Ctrl-C
    assert "tiny interrupted (run it again to resume from its checkpoint)" in output
    (checkpoint,) = (job_folder / "out/checkpoints").iterdir()
    stopped = int(checkpoint.name.removeprefix("step-"))
    assert f"stopped at     step {stopped}" in output
    assert "diagnosis" not in output  # no verdict on unfinished curves
    assert "metrics  " not in output  # no evaluation yet: no empty line for it

    code, output = run(str(job_folder / "job.yaml"))

    assert code == 0, output
    assert "✓ tiny finished" in output
    first_start, second_start = logged_steps(job_folder / "out/metrics.jsonl")
    assert first_start[-1] == stopped
    assert second_start[0] == stopped + 1


def test_a_finished_run_is_not_overwritten_unless_asked(job_folder: Path) -> None:
    assert run(str(job_folder / "job.yaml"))[0] == 0
    code, output = run(str(job_folder / "job.yaml"))
    assert code == 1
    assert "already holds a finished run" in output
    assert "--overwrite" in output
    code, output = run(str(job_folder / "job.yaml"), "--overwrite")
    assert code == 0, output


def refusal(job_folder: Path) -> str:
    code, output = run(str(job_folder / "job.yaml"), "--output", str(job_folder / "refused"))
    assert code == 1
    assert "Traceback" not in output
    assert not (job_folder / "refused/report.json").exists()
    assert not (job_folder / "refused/model").exists()
    return " ".join(output.split())


def test_missing_data_file(job_folder: Path) -> None:
    (job_folder / "data/train.csv").unlink()
    assert "data.train.source:" in refusal(job_folder)
    assert "train.csv does not exist" in refusal(job_folder)


def test_unknown_column(job_folder: Path) -> None:
    text = (job_folder / "job.yaml").read_text().replace("maxLength: 32", "textColumn: review")
    (job_folder / "job.yaml").write_text(text)
    message = refusal(job_folder)
    assert "data.textColumn: column 'review' is not in" in message
    assert "(columns: text, label, dialect)" in message


def test_label_outside_the_declared_labels(job_folder: Path) -> None:
    train = job_folder / "data/train.csv"
    train.write_text(train.read_text().replace(",positive,", ",great,", 3))
    message = refusal(job_folder)
    assert "'great'" in message
    assert "model.labels" in message
    assert "3 rows" in message


def test_empty_dataset(job_folder: Path) -> None:
    (job_folder / "data/train.csv").write_text("text,label,dialect\n")
    assert "no rows" in refusal(job_folder)


def test_batch_size_larger_than_the_data(job_folder: Path) -> None:
    (job_folder / "job.yaml").write_text(tiny_job_manifest(epochs=1, batch=4096))
    message = refusal(job_folder)
    assert "training.batchSize" in message
    assert "4096" in message


def test_missing_model(job_folder: Path) -> None:
    shutil.rmtree(job_folder / "model")
    assert "model.source:" in refusal(job_folder)


def test_invalid_manifest_never_starts(job_folder: Path) -> None:
    (job_folder / "job.yaml").write_text(tiny_job_manifest(epochs=0, batch=16))
    assert "spec.training.epochs: must be >= 1 (got 0)" in refusal(job_folder)


def test_two_processes_under_accelerate_launch_make_one_report(job_folder: Path) -> None:
    executable = shutil.which("kubetune")
    assert executable
    result = subprocess.run(
        [executable, "run", str(job_folder / "job.yaml"), "--processes", "2"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((job_folder / "out/report.json").read_text())
    assert report["processes"] == 2
    assert report["steps"] == 10  # 320 rows, batches of 16 shared by two processes
    assert report["bestMetrics"]["accuracy"] > 0
    assert len(list(job_folder.glob("out/report.json"))) == 1


def test_ctrl_c_stops_a_run_of_two_processes_with_a_checkpoint(job_folder: Path) -> None:
    """Sent to `kubetune run` alone (a script's Ctrl-C; a terminal's reaches every process of
    its job), it is passed on to the launcher, whose elastic agent passes it on to the
    trainers: they stop at one logged step, with its checkpoint."""
    (job_folder / "job.yaml").write_text(tiny_job_manifest(epochs=3, batch=16))
    command = [str(shutil.which("kubetune")), "run", str(job_folder / "job.yaml")]
    run = subprocess.Popen(
        [*command, "--processes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for_a_logged_step(run, job_folder / "out/metrics.jsonl")
    os.killpg(run.pid, signal.SIGINT)
    output, _ = run.communicate(timeout=600)

    assert run.returncode == 130, output
    assert "tiny interrupted (run it again to resume from its checkpoint)" in output
    assert "kubetune launcher: stopped by SIGINT" in output
    assert "Traceback" not in output
    report = json.loads((job_folder / "out/report.json").read_text())
    assert report["outcome"] == "interrupted"
    assert report["steps"] < 30  # 3 epochs of 10 steps
    assert report["artifacts"]["lastCheckpoint"].endswith(f"step-{report['steps']:08d}")


def test_a_malformed_ledger_stops_both_processes_with_its_message(job_folder: Path) -> None:
    """Rank 0 reads cost.json for every process: all of them stop with its message, and no
    process is left waiting for rank 0 at the next collective."""
    (job_folder / "out").mkdir()
    (job_folder / "out/cost.json").write_text("{not json")
    result = subprocess.run(
        [
            str(shutil.which("kubetune")),
            "run",
            str(job_folder / "job.yaml"),
            "--processes",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    output = " ".join((result.stdout + result.stderr).split())
    assert output.count("cost.json is not a GPU-hour ledger") == 1, output[-3000:]
    # Both processes refuse: whichever the launcher saw end first gives the code.
    assert re.search(r"kubetune launcher: trainer process [01] exited with code 3", output)
    assert "the trainer refused its input" in output
    assert "Traceback" not in output
    assert (job_folder / "out/cost.json").read_text() == "{not json"
    assert not (job_folder / "out/report.json").exists()


def test_a_claim_output_needs_a_cluster_or_an_output_directory(job_folder: Path) -> None:
    text = (job_folder / "job.yaml").read_text().replace("uri: out", "uri: pvc://runs/tiny")
    (job_folder / "job.yaml").write_text(text)
    code, output = run(str(job_folder / "job.yaml"))
    assert code == 1
    assert "spec.output.uri: pvc://runs/tiny needs a cluster; pass --output DIR" in output
    assert run(str(job_folder / "job.yaml"), "--output", str(job_folder / "here"))[0] == 0
