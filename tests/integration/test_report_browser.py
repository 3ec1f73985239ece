"""report.html as a person sees it: a real tiny run writes it, headless Chromium opens it.

The unit tests check the page's markup; this one checks what a browser makes of the file
a real run left on disk: the sections and charts are in the browser's DOM, hostile data rows
stayed text (no <script> or <img> element), the browser logged nothing about the page, and
the screenshot shows a drawn page, not a blank one.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kubetune_trainer.__main__ import run_training
from kubetune_trainer.config import TrainingConfig
from tests.conftest import required_program
from tests.html_elements import Elements

pytestmark = pytest.mark.browser

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
SECTIONS = ["curves", "diagnosis", "evaluation", "data", "freezing", "range-test", "run"]
CHARTS = [
    "chart-loss",
    "chart-metrics",
    "chart-learning-rate",
    "chart-confusion",
    "chart-classes",
    "chart-lengths",
    "chart-grad-norms",
    "chart-range-test",
]
BROWSER_TIMEOUT_S = 120


def chromium() -> str:
    return required_program("chromium", "chromium-browser", package="chromium")


def hostile_data(clean: tuple[Path, Path], folder: Path) -> tuple[Path, Path]:
    """The clean rows, and each hostile text twice: the duplicates rule shows them as examples."""
    with clean[0].open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    extra = [{**rows[0], "text": text} for text in (SCRIPT, IMG) for _ in range(2)]
    train = folder / "train.csv"
    with train.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + extra)
    return train, clean[1]


def tiny_config(model: Path, data: tuple[Path, Path]) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "labels": ["negative", "positive"]},
            "data": {
                "train": {"source": str(data[0])},
                "validation": {"source": str(data[1])},
                "maxLength": 32,
            },
            "training": {
                "epochs": 2,
                "batchSize": 32,
                "learningRate": 5e-3,
                "seed": 3,
                "findLearningRate": {"steps": 10, "apply": False},
            },
            "freezing": {"gradualUnfreezing": {"every": 1}},
            "evaluation": {"strategy": "steps", "everySteps": 5},
        },
        by_name=False,
    )


def browse(
    binary: str, page: Path, profile: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on the page with a throw-away profile; console output on stderr."""
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *arguments,
        page.as_uri(),
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=True
    )


def page_messages(stderr: str, page: Path) -> list[str]:
    """What Chromium said about the page: console messages and anything naming its URL."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or page.as_uri() in line]


def test_chromium_renders_the_report_of_a_real_run(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    binary = chromium()
    data = hostile_data(small_data, tmp_path)
    result = run_training(
        tiny_config(tiny_model_dir, data), tmp_path / "out", job_name=SCRIPT, env={}
    )
    assert result.succeeded
    page = tmp_path / "out" / "report.html"
    assert (tmp_path / "out" / "report.json").exists()

    dumped = browse(binary, page, tmp_path / "profile-dom", "--dump-dom")
    assert page_messages(dumped.stderr, page) == []
    dom = Elements(dumped.stdout)
    assert dom.ids("section") == SECTIONS
    assert dom.ids("svg") == CHARTS
    tags = {name for name, _ in dom.tags}
    assert tags.isdisjoint({"script", "img", "iframe", "object", "embed"})
    assert not [(name, key) for name, attrs in dom.tags for key in attrs if key.startswith("on")]
    text = "".join(dom.text)
    assert text.count(SCRIPT) >= 2  # the job's name in the title and the heading, the example
    assert IMG in text

    shot = tmp_path / "shot.png"
    drawn = browse(
        binary, page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000"
    )
    assert page_messages(drawn.stderr, page) == []
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (2000, 1280, 3)
    assert (pixels.min(axis=2) < 245).mean() > 0.03  # not a white page
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, tables and coloured curves, not a flat fill
