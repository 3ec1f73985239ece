"""The run report's artifacts and files, in a real output folder."""

from __future__ import annotations

from pathlib import Path

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON
from kubetune_trainer.report.progress import RunInfo
from kubetune_trainer.report.run import RunReport


def report(output: Path, *, writer: bool) -> RunReport:
    config = TrainingConfig.model_validate(
        {
            "model": {"source": "file:///models/unused", "labels": ["a", "b"]},
            "data": {"train": {"source": "file:///data/unused.csv"}},
            "output": {"uri": str(output)},
        },
        by_name=False,
    )
    return RunReport(config, "job", output, output / "model", output / "merged", 1, writer=writer)


def test_the_artifacts_name_only_what_is_there(tmp_path: Path) -> None:
    reported = report(tmp_path, writer=True)
    assert reported.artifacts(None) == {
        "outputUri": str(tmp_path),
        "model": "",
        "mergedModel": "",
        "report": str(tmp_path / REPORT_JSON),
        "reportHtml": str(tmp_path / REPORT_HTML),
        "lastCheckpoint": "",
    }
    (tmp_path / "model").mkdir()
    (tmp_path / "merged").mkdir()
    checkpoint = tmp_path / "checkpoints/step-00000004"
    artifacts = reported.artifacts(checkpoint)
    assert artifacts["model"] == str(tmp_path / "model")
    assert artifacts["mergedModel"] == str(tmp_path / "merged")
    assert artifacts["lastCheckpoint"] == str(checkpoint)


def test_only_the_writer_writes_the_report(tmp_path: Path) -> None:
    content = {"job": "job", "succeeded": True}
    report(tmp_path / "other", writer=False).write(content)
    assert not (tmp_path / "other").exists()
    writer = tmp_path / "rank0"
    writer.mkdir()
    report(writer, writer=True).write(content)
    assert (writer / REPORT_JSON).exists()


def test_the_run_info_names_the_job_and_its_plan(tmp_path: Path) -> None:
    info = report(tmp_path, writer=True).run_info("team-a", 3, 60, 20)
    assert info == RunInfo(
        job_name="job",
        namespace="team-a",
        epochs=3,
        total_steps=60,
        steps_per_epoch=20,
        output_dir=tmp_path,
        num_processes=1,
        primary_metric="accuracy",
    )
