"""search.html as a person sees it: headless Chromium opens a page of hand-made trials.

The unit tests check the page's markup; this one checks what a browser makes of it: the
sections and the charts are in the browser's DOM, hostile strings stayed text, the browser
logged nothing about the page, and the screenshot shows the charts' marks in their colours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kubetune_operator.api.v1alpha1 import FineTuneJobSpec
from kubetune_operator.cli.views import search_page
from tests.html_elements import Elements
from tests.integration.test_report_browser import browse, chromium, page_messages

pytestmark = pytest.mark.browser

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
SCHEDULERS = ["linear", "cosine", "constant"]


def searched_spec(sentiment: dict[str, Any]) -> FineTuneJobSpec:
    search = {
        "parameters": [
            {
                "path": "training.learningRate",
                "type": "float",
                "min": 1e-5,
                "max": 1e-2,
                "log": True,
            },
            {"path": "training.scheduler", "type": "categorical", "choices": SCHEDULERS},
            {"path": "training.epochs", "type": "int", "min": 1, "max": 5},
        ],
        "objective": {"metric": "accuracy"},
        "maxTrials": 12,
    }
    return FineTuneJobSpec.model_validate({**sentiment["spec"], "search": search})


def trials() -> list[dict[str, Any]]:
    """Eight complete trials, one pruned, one failed, one running."""
    records = []
    for n in range(11):
        state = {8: "Pruned", 9: "Failed", 10: "Running"}.get(n, "Complete")
        params = {
            "training.learningRate": 10 ** (-5 + 3 * n / 10),
            "training.scheduler": SCHEDULERS[n % 3],
            "training.epochs": 1 + n % 5,
        }
        record: dict[str, Any] = {"number": n, "name": f"job-trial-{n}", "state": state}
        record["params"] = params
        if state == "Complete":
            record["objective"] = 0.6 + 0.03 * n - 0.004 * n * n
        if state == "Pruned":
            record["intermediate"] = {"10": 0.55, "20": 0.58}
        records.append(record)
    return records


def near(pixels: np.ndarray, colour: str, tolerance: int = 40) -> int:
    """How many pixels are within `tolerance` of the colour (anti-aliasing blurs edges)."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).sum(axis=2) < tolerance).sum())


def test_chromium_renders_the_search_page(tmp_path: Path, sentiment: dict[str, Any]) -> None:
    binary = chromium()
    page = search_page.write_search_html(
        tmp_path / "search.html", SCRIPT, searched_spec(sentiment), trials(), {"9": IMG}
    )

    dumped = browse(binary, page, tmp_path / "profile-dom", "--dump-dom")
    assert page_messages(dumped.stderr, page) == []
    dom = Elements(dumped.stdout)
    assert dom.ids("section") == ["trials", "objective", "slices", "importance"]
    assert dom.ids("svg") == [
        "chart-objective",
        "chart-slice-0",
        "chart-slice-1",
        "chart-slice-2",
        "chart-importance",
    ]
    tags = [name for name, _ in dom.tags]
    assert {"script", "img", "iframe", "object", "embed"}.isdisjoint(tags)
    assert tags.count("tr") == 1 + 11 + 1 + 3  # trials head and rows, best trial head and rows
    marks = [attrs.get("class") for name, attrs in dom.tags if name == "g"]
    assert marks.count("point complete") == 4 * 8  # the complete trials in each of four charts
    text = "".join(dom.text)
    assert text.count(SCRIPT) == 2  # the title and the heading
    assert IMG in text

    shot = tmp_path / "shot.png"
    drawn = browse(
        binary, page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,3200"
    )
    assert page_messages(drawn.stderr, page) == []
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (3200, 1280, 3)
    assert (pixels.min(axis=2) < 245).mean() > 0.03  # not a white page
    assert near(pixels, search_page.COMPLETE_COLOUR) > 2000  # complete marks and importance bars
    assert near(pixels, search_page.BEST_COLOUR) > 300  # the best-so-far line and best rings
    assert near(pixels, search_page.PRUNED_COLOUR) > 30  # the pruned trial's triangles
    assert near(pixels, search_page.FAILED_COLOUR) > 30  # the failed trial's crosses
