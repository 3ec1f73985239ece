"""The README's main command, end to end: the sentiment example fine-tunes the pretrained
all-MiniLM-L6-v2 on CPU and beats the majority class by a wide margin."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_readme_example_runs_and_learns(tmp_path: Path) -> None:
    executable = shutil.which("kubetune")
    assert executable
    result = subprocess.run(
        [executable, "run", str(REPO / "examples/sentiment/job.yaml"), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "✓ sentiment finished" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    accuracy = report["bestMetrics"]["accuracy"]
    assert accuracy > report["data"]["majorityRate"] + 0.15
    rows = report["data"]["rows"]
    assert (rows["train_in"], rows["validation_in"]) == (3000, 600)
    quality = report["data"]["quality"]
    assert quality["rowsOut"] == {"train": rows["train_out"], "validation": rows["validation_out"]}
    assert rows["train_out"] + rows["validation_out"] < 3600
    assert set(quality["dropped"]) == {"duplicates", "conflictingLabels", "leakage"}
    assert report["diagnosis"]["verdict"] in ("Healthy", "Overfitting")
    audit = report["biasAudit"]  # the planted annotator bias against the regional dialect
    assert audit["verdict"] == "Failed"
    assert audit["worstGroup"] == "dialect=regional"
    (ratio,) = [m for m in audit["metrics"] if m["statusName"] == "demographicParityRatio"]
    assert ratio["value"] < 0.8
    assert audit["counterfactual"]["flips"] > 0
    assert re.search(r"bias audit +Failed: demographicParityRatio", result.stdout)
    assert (tmp_path / "report.html").stat().st_size > 10_000
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_counterfactual_augmentation_closes_the_dialect_gap(tmp_path: Path) -> None:
    """debiased.yaml gives every training review a twin with the dialect words swapped."""
    executable = shutil.which("kubetune")
    assert executable
    manifest = REPO / "examples/sentiment/debiased.yaml"
    result = subprocess.run(
        [executable, "run", str(manifest), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["added"]["augmented"] > 2000
    assert report["bestMetrics"]["accuracy"] > report["data"]["majorityRate"] + 0.15
    audit = report["biasAudit"]
    assert audit["verdict"] == "Passed"
    (ratio,) = [m for m in audit["metrics"] if m["statusName"] == "demographicParityRatio"]
    assert ratio["value"] >= 0.8
    assert audit["counterfactual"]["flipRate"] < 0.05
