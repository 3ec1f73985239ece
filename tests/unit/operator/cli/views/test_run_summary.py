"""`kubetune report RUN_DIR` on report.json files written here: what it prints, its JSON, and
its messages for a missing or broken file (never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kubetune_operator.cli import app as cli
from kubetune_operator.cli.app import app
from kubetune_operator.cli.views import run_summary

runner = CliRunner()
WIDE = {"COLUMNS": "240"}
"""rich reads the terminal width from COLUMNS: tables are not folded in the tests."""
MISSING = "\u2013"
SCRIPT = "[bold red]<script>alert(1)</script>[/]"


def report() -> dict[str, Any]:
    """A report.json as a finished 2-class run with a failed bias audit writes it."""
    return {
        "job": "sentiment-ft",
        "succeeded": True,
        "primaryMetric": "accuracy",
        "bestMetrics": {"accuracy": 0.8312345, "f1Macro": 0.79, "loss": 0.52},
        "bestCheckpoint": "step-00000080",
        "diagnosis": {
            "verdict": "Overfitting",
            "evidence": ["validation loss rose 11.5% from its minimum 0.520 at step 80"],
            "suggestion": "Regularize more: raise regularization.weightDecay.",
        },
        "biasAudit": {
            "verdict": "Failed",
            "worstGroup": "dialect=regional",
            "message": "Failed: demographicParityRatio 0.500 < 0.8 for dialect",
            "positiveLabels": ["positive"],
            "metrics": [
                {
                    "statusName": "demographicParityRatio",
                    "name": "demographicParityRatio",
                    "attribute": "dialect",
                    "positiveLabel": "positive",
                    "value": 0.5,
                    "threshold": 0.8,
                    "passed": False,
                    "reason": "",
                },
                {
                    "statusName": "accuracyDifference",
                    "name": "accuracyDifference",
                    "attribute": "dialect",
                    "positiveLabel": None,
                    "value": 0.1,
                    "threshold": None,
                    "passed": None,
                    "reason": "",
                },
            ],
            "attributes": [],
            "evidence": [],
            "counterfactual": None,
        },
        "data": {
            "quality": {"message": "2186 of 2250 rows kept: 52 duplicates dropped"},
            "added": {"augmented": 320, "synthetic": 0, "oversampled": 100},
            "removed": {"undersampled": 30},
            "recommendation": "Oversample neutral (data.balance.strategy oversample).",
        },
        "steps": 1200,
        "timings": {"setupSeconds": 4.5, "trainSeconds": 187.6, "evaluationSeconds": 20.0},
        "artifacts": {"model": "/out/model", "report": "/out/report.json"},
    }


def write(run_dir: Path, content: Any) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(content), encoding="utf-8")
    return run_dir


def test_report_prints_the_summary_metrics_diagnosis_data_and_bias(tmp_path: Path) -> None:
    run_dir = write(tmp_path / "run", report())
    (run_dir / "report.html").write_text("<html></html>", encoding="utf-8")
    result = runner.invoke(app, ["report", str(run_dir)], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.output.splitlines()]
    assert lines[0] == "sentiment-ft ✓ succeeded"
    shown = result.output
    for expected in (
        "best accuracy  0.8312",
        "steps          1,200",
        "duration       192.1 s",
        "Overfitting: Regularize more: raise regularization.weightDecay.",
        "2186 of 2250 rows kept: 52 duplicates dropped",
        "rows added:  320 augmented, 100 oversampled",
        "rows removed:  30 undersampled",
        "recommendation: Oversample neutral (data.balance.strategy oversample).",
        "Failed: demographicParityRatio 0.500 < 0.8 for dialect",
        "worst group: dialect=regional",
        f"report.html    {(run_dir / 'report.html').resolve()}",
    ):
        assert expected in shown, expected
    assert "(not written)" not in shown
    rows = [line.split() for line in lines]
    assert ["accuracy", "f1Macro", "loss"] in rows
    assert ["0.8312", "0.79", "0.52"] in rows
    assert ["demographicParityRatio", "dialect", "positive", "0.5", "0.8", "✗"] in rows
    assert ["accuracyDifference", "dialect", "all", "classes", "0.1", MISSING, MISSING] in rows


def test_report_json_prints_the_summary_as_data(tmp_path: Path) -> None:
    run_dir = write(tmp_path / "run", report())
    result = runner.invoke(app, ["report", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "job": "sentiment-ft",
        "succeeded": True,
        "outcome": None,
        "primaryMetric": "accuracy",
        "best": 0.8312345,
        "steps": 1200,
        "durationSeconds": 192.1,
        "bestMetrics": {"accuracy": 0.8312345, "f1Macro": 0.79, "loss": 0.52},
        "diagnosis": {
            "verdict": "Overfitting",
            "suggestion": "Regularize more: raise regularization.weightDecay.",
        },
        "data": {
            "message": "2186 of 2250 rows kept: 52 duplicates dropped",
            "added": {"augmented": 320, "oversampled": 100},
            "removed": {"undersampled": 30},
            "recommendation": "Oversample neutral (data.balance.strategy oversample).",
        },
        "biasAudit": {
            "verdict": "Failed",
            "message": "Failed: demographicParityRatio 0.500 < 0.8 for dialect",
            "worstGroup": "dialect=regional",
        },
        "reportHtml": str((run_dir / "report.html").resolve()),
    }


def test_a_bare_report_prints_without_the_parts_it_lacks(tmp_path: Path) -> None:
    run_dir = write(tmp_path / "run", {"job": "bare", "succeeded": False})
    result = runner.invoke(app, ["report", str(run_dir)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "bare ✗ failed" in result.output


@pytest.mark.parametrize(
    ("outcome", "heading"),
    [
        ("interrupted", "stopped ■ interrupted (stopped by SIGTERM or Ctrl-C; checkpoint kept)"),
        (
            "budgetExceeded",
            "stopped ■ stopped (runPolicy.maxGpuHours spent; checkpoint kept)",
        ),
    ],
)
def test_a_run_stopped_with_a_checkpoint_is_not_called_failed(
    tmp_path: Path, outcome: str, heading: str
) -> None:
    content = {"job": "stopped", "succeeded": False, "outcome": outcome}
    run_dir = write(tmp_path / "run", content)
    result = runner.invoke(app, ["report", str(run_dir)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == heading
    assert "(not written)" in result.output
    for absent in ("diagnosis", "bias audit", "data ", "Traceback"):
        assert absent not in result.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "report.json: no such file"),
        ("{not json", "report.json: not JSON (line 1, column 2"),
        ("[1, 2]", "report.json: must hold a JSON object (got list)"),
        (b"\xff\xfe", "report.json: cannot be read"),
        ("{}", "report.json: not a kubetune report (it needs the text field job and the"),
        ('{"job": "x", "succeeded": "yes"}', "report.json: not a kubetune report"),
    ],
)
def test_a_missing_or_broken_report_is_a_message_and_exit_1(
    tmp_path: Path, content: str | bytes | None, expected: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if isinstance(content, str):
        (run_dir / "report.json").write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        (run_dir / "report.json").write_bytes(content)
    result = runner.invoke(app, ["report", str(run_dir)], env=WIDE)
    assert result.exit_code == 1
    assert expected in result.output
    assert str(run_dir / "report.json") in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_open_opens_the_runs_page_in_the_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = write(tmp_path / "run", report())
    (run_dir / "report.html").write_text("<html></html>", encoding="utf-8")
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    result = runner.invoke(app, ["report", str(run_dir), "--open"])
    assert result.exit_code == 0, result.output
    assert opened == [(run_dir / "report.html").resolve().as_uri()]


def test_open_without_a_page_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = write(tmp_path / "run", report())
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    result = runner.invoke(app, ["report", str(run_dir), "--open"], env=WIDE)
    assert result.exit_code == 1
    assert "report.html: no such file" in result.output
    assert opened == []


def test_hostile_strings_are_printed_as_they_are(tmp_path: Path) -> None:
    content = report()
    content["job"] = SCRIPT
    content["biasAudit"]["worstGroup"] = SCRIPT
    content["biasAudit"]["metrics"][0]["attribute"] = SCRIPT
    content["data"]["quality"]["message"] = SCRIPT
    run_dir = write(tmp_path / "run", content)
    result = runner.invoke(app, ["report", str(run_dir)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.output.count(SCRIPT) == 4


def test_emoji_codes_are_printed_as_they_are(tmp_path: Path) -> None:
    content = report()
    content["job"] = ":x:"
    content["biasAudit"]["worstGroup"] = "dialect=:x:"
    content["biasAudit"]["metrics"][0]["attribute"] = ":x:"
    content["data"]["quality"]["message"] = "row 3: 'awful :x: lamp'"
    run_dir = write(tmp_path / "run", content)
    result = runner.invoke(app, ["report", str(run_dir)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.output.count(":x:") == 4
    assert "\N{CROSS MARK}" not in result.output


def test_the_run_summary_ends_with_the_bias_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    cli._print_summary(report())
    shown = capsys.readouterr().out
    assert shown.splitlines()[-1].split() == [
        "bias",
        "audit",
        "Failed:",
        "demographicParityRatio",
        "0.500",
        "<",
        "0.8",
        "for",
        "dialect",
    ]


def test_the_run_summary_names_a_stop_with_a_checkpoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli._print_summary({**report(), "succeeded": False, "outcome": "interrupted"})
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "✗ sentiment-ft interrupted (run it again to resume from its checkpoint)"


def test_the_run_summary_has_no_bias_line_without_an_audit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    content = report()
    content["biasAudit"] = None
    cli._print_summary(content)
    assert "bias audit" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("timings", "seconds"),
    [
        ({"setupSeconds": 1.5, "trainSeconds": 10.0, "evaluationSeconds": 3.0}, 11.5),
        ({"totalSeconds": 42.0, "trainSeconds": 10.0}, 42.0),
        ({}, None),
    ],
)
def test_duration_is_setup_plus_training(timings: dict[str, float], seconds: float | None) -> None:
    assert run_summary.duration_seconds({"timings": timings}) == seconds


def test_report_on_a_file_instead_of_a_run_directory_says_so(tmp_path: Path) -> None:
    report = write(tmp_path / "run", {"job": "x", "succeeded": True}) / "report.json"
    result = runner.invoke(app, ["report", str(report)], env=WIDE)
    assert result.exit_code == 1
    assert f"{report}: is a file; give the run's output directory" in result.output
