"""`kubetune run` of a job with spec.search: real tiny trials on CPU, the trials table on
disk, resume, failure limits, parallel trials and `kubetune report` on the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kubetune_operator.cli.app import app
from kubetune_operator.cli.local import runs
from tests.tiny import lay_out_tiny_job, tiny_job_manifest

runner = CliRunner()

GRID = """\
    algorithm: grid
    parameters:
      - {path: training.learningRate, type: float, values: [0.0001, 0.01]}
      - {path: training.epochs, type: int, values: [1, 2]}
    objective: {metric: loss}
    maxTrials: 4
"""


@pytest.fixture
def job_folder(tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]) -> Path:
    return lay_out_tiny_job(tmp_path, tiny_model_dir, small_data)


def write_job(folder: Path, search: str) -> Path:
    path = folder / "job.yaml"
    path.write_text(tiny_job_manifest(epochs=1, batch=32, search=search))
    return path


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["run", *args], terminal_width=240, env={"COLUMNS": "240"})
    return result.exit_code, result.output


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the runs trained in this process (each still trains for real)."""
    trained: list[str] = []
    real = runs.run_in_process

    def counted(run: runs.LocalRun) -> dict[str, Any]:
        trained.append(run.name)
        return real(run)

    monkeypatch.setattr(runs, "run_in_process", counted)
    monkeypatch.setattr("kubetune_operator.cli.local.searches.run_in_process", counted)
    return trained


def trial_reports(out: Path) -> dict[int, dict[str, Any]]:
    return {
        int(path.parent.name.removeprefix("trial-")): json.loads(path.read_text())
        for path in out.glob("trial-*/report.json")
    }


def test_grid_runs_every_point_picks_the_best_and_resumes(
    job_folder: Path, trainings: list[str]
) -> None:
    manifest = write_job(job_folder, GRID)
    code, output = run(str(manifest))
    assert code == 0, output
    out = job_folder / "out"
    reports = trial_reports(out)
    assert sorted(reports) == [0, 1, 2, 3]
    assert sorted(trainings) == [f"tiny-trial-{n}" for n in range(4)]
    points = {
        (r["config"]["training"]["learningRate"], r["config"]["training"]["epochs"])
        for r in reports.values()
    }
    assert points == {(0.0001, 1), (0.0001, 2), (0.01, 1), (0.01, 2)}
    assert all(r["config"]["training"]["batchSize"] == 32 for r in reports.values())

    loss = {n: r["bestMetrics"]["loss"] for n, r in reports.items()}
    best = min(sorted(loss), key=lambda n: loss[n])  # the lowest number among equals
    search = json.loads((out / "search.json").read_text())
    assert [t["state"] for t in search["trials"]] == ["Complete"] * 4
    assert [t["objective"] for t in search["trials"]] == [loss[n] for n in range(4)]
    assert search["bestTrial"]["number"] == best
    assert search["progress"]["step"] == 4

    report = json.loads((out / "report.json").read_text())
    assert report["succeeded"] is True
    assert report["bestTrial"]["name"] == f"tiny-trial-{best}"
    assert report["artifacts"]["bestTrialReport"] == str(out / f"trial-{best}/report.json")
    assert (out / "model").resolve() == (out / f"trial-{best}/model").resolve()
    assert (out / "model/config.json").exists()
    assert report["artifacts"]["mergedModel"] == ""  # no LoRA trial, no merged/ to link
    assert not (out / "merged").exists()
    assert set(report["importance"]) == {"training.learningRate", "training.epochs"}
    assert sum(report["importance"].values()) == pytest.approx(1.0)
    assert f"tiny-trial-{best}" in output
    assert "trials" in output

    # An interrupted search: the last trial was running when it stopped.
    search["trials"][3]["state"] = "Running"
    search["trials"][3]["objective"] = None
    (out / "search.json").write_text(json.dumps(search))
    (out / "report.json").unlink()
    shutil.rmtree(out / "trial-3")
    finished = {n: (out / f"trial-{n}/report.json").stat().st_mtime_ns for n in range(3)}
    trainings.clear()
    code, output = run(str(manifest))
    assert code == 0, output
    assert trainings == ["tiny-trial-3"]
    assert "Resuming" in output
    assert {n: (out / f"trial-{n}/report.json").stat().st_mtime_ns for n in range(3)} == finished
    assert json.loads((out / "search.json").read_text())["trials"][3]["state"] == "Complete"

    code, output = run(str(manifest))  # a finished search is not run again
    assert code == 1
    assert "already holds a finished run" in output


def test_report_on_a_search_folder_prints_the_trials(job_folder: Path) -> None:
    manifest = write_job(
        job_folder,
        """\
    algorithm: random
    parameters:
      - {path: training.learningRate, type: float, min: 0.0001, max: 0.01, log: true}
    maxTrials: 3
    seed: 7
""",
    )
    code, output = run(str(manifest))
    assert code == 0, output
    out = job_folder / "out"
    search = json.loads((out / "search.json").read_text())
    rates = [t["params"]["training.learningRate"] for t in search["trials"]]
    assert len(rates) == 3 == len(set(rates))
    assert all(0.0001 <= rate <= 0.01 for rate in rates)
    reports = trial_reports(out)
    assert [reports[n]["config"]["training"]["learningRate"] for n in range(3)] == rates

    result = runner.invoke(app, ["report", str(out)], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    assert "tiny ✓ succeeded" in result.output
    assert "random" in result.output
    assert "3 of 3 finished" in result.output
    for trial in search["trials"]:
        assert f"{trial['objective']:.4g}" in result.output
    best = search["bestTrial"]
    assert f"best trial     {best['name']}" in result.output
    assert str(out / "model") in result.output
    assert "parameter importance" in result.output

    summary = json.loads(runner.invoke(app, ["report", str(out), "--json"]).output)
    assert summary["kind"] == "search"
    assert summary["bestTrial"]["number"] == best["number"]
    assert len(summary["trials"]) == 3


def test_failed_trials_stop_the_search_at_max_failed_trials(job_folder: Path) -> None:
    # Every batch size here exceeds the 320 rows: the spec allows it, the trainer refuses it.
    manifest = write_job(
        job_folder,
        """\
    algorithm: random
    parameters:
      - {path: training.batchSize, type: int, min: 2000, max: 4000}
    maxTrials: 4
    maxFailedTrials: 1
""",
    )
    code, output = run(str(manifest))
    assert code == 1
    assert "Traceback" not in output
    text = " ".join(output.split())
    assert "2 trials failed; search.maxFailedTrials is 1" in text
    assert "training.batchSize" in text
    search = json.loads((job_folder / "out/search.json").read_text())
    assert [t["state"] for t in search["trials"]] == ["Failed", "Failed"]
    assert "training.batchSize" in search["messages"]["0"]
    assert not (job_folder / "out/model").exists()
    report = json.loads((job_folder / "out/report.json").read_text())
    assert report["succeeded"] is False
    assert report["bestTrial"] is None


def test_parallel_trials_run_as_subprocesses(job_folder: Path) -> None:
    manifest = write_job(
        job_folder,
        """\
    algorithm: grid
    parameters:
      - {path: training.learningRate, type: float, values: [0.001, 0.01]}
    maxTrials: 2
    parallelism: 2
""",
    )
    code, output = run(str(manifest), "--parallel", "4")
    assert code == 0, output
    assert "2 at a time" in output  # capped by search.parallelism
    out = job_folder / "out"
    reports = trial_reports(out)
    assert sorted(r["config"]["training"]["learningRate"] for r in reports.values()) == [
        0.001,
        0.01,
    ]
    assert all((out / f"trial-{n}/trainer.log").exists() for n in range(2))
    search = json.loads((out / "search.json").read_text())
    assert [t["state"] for t in search["trials"]] == ["Complete", "Complete"]


def test_a_changed_spec_is_not_resumed_into_an_old_search(job_folder: Path) -> None:
    manifest = write_job(job_folder, GRID)
    out = job_folder / "out"
    out.mkdir()
    (out / "search.json").write_text(
        json.dumps({"fingerprint": "0123456789abcdef", "trials": [], "messages": {}})
    )
    code, output = run(str(manifest))
    assert code == 1
    assert "holds a search of another spec" in " ".join(output.split())
    assert not (out / "trial-0").exists()
