"""report.html as a person sees it: a real tiny run writes it, headless Chromium opens it.

The unit tests check the page's markup; this one checks what a browser makes of the file
a real run left on disk: the sections and charts are in the browser's DOM, hostile data rows
stayed text (no <script> or <img> element), the browser logged nothing about the page, and
the screenshot shows a drawn page, not a blank one. A causal LM's page (its generation
table and its audit, from a report.json built by the audit's own code, no training run) is
measured as Chromium laid it out: each sampled prompt's row shows the prompt, its reference
and both completions side by side within the window, the long prompt wrapped in its cell.
"""

from __future__ import annotations

import csv
import subprocess
from itertools import pairwise
from pathlib import Path
from typing import Any

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


# --- a causal LM's report: the generation table and the audit, laid out ------------------

GENERATION_ROWS = [
    (
        "<|im_start|>user\ncapital of france?<|im_end|>\n<|im_start|>assistant\n",
        "paris",
        "the the",
        "paris",
    ),
    ("x" * 1000 + " last words", "yes", "", "no"),
    ("say it", "fine", SCRIPT, "fine"),
    ("and again", "fine", "fine fine", "fine"),
]
DIALECTS = ["standard", "regional", "standard", "regional"]
LAYOUT_PROBE = """<pre id="layout-probe"></pre><script>
const box = (e) => { const r = e.getBoundingClientRect(); const s = getComputedStyle(e);
  return {x: r.left, y: r.top, w: r.width, h: r.height, text: e.innerText,
          shown: s.display !== "none" && s.visibility === "visible"}; };
const rows = (css) => [...document.querySelectorAll(`table.${css} tbody tr`)]
  .map((tr) => [...tr.children].map(box));
document.getElementById("layout-probe").textContent = JSON.stringify({
  viewport: innerWidth, pageWidth: document.documentElement.scrollWidth,
  generation: rows("generation"), metrics: rows("bias-metrics"), groups: rows("lm-groups"),
  headings: [...document.querySelectorAll("#bias h3")].map((e) => e.innerText)});
</script>"""
"""Measures what Chromium laid out; added to a copy of the page, whose policy forbids scripts."""


def language_model_report() -> dict[str, object]:
    """report.json's generation table as training/generation.py keeps it, and the causal
    LM's audit built from it by lm_audit (generation metrics per dialect, stereotype pairs)."""
    from kubetune_trainer.config import BiasSpec
    from kubetune_trainer.examine.lm_audit import (
        generation_gap_metrics,
        language_model_audit,
        stereotype_result,
    )
    from kubetune_trainer.examine.lm_examine import generation_quality
    from kubetune_trainer.examine.lm_pairs import StereotypePairs

    generation = {
        "samples": len(GENERATION_ROWS),
        "maxNewTokens": 8,
        "before": {"metrics": {"exactMatch": 0.0, "tokenF1": 0.1, "rougeL": 0.1}},
        "after": {
            "step": 40,
            "checkpoint": "step-00000040",
            "metrics": {"exactMatch": 0.75, "tokenF1": 0.75, "rougeL": 0.75},
        },
        "rows": [
            {"row": i, "prompt": p, "reference": r, "before": b, "after": a}
            for i, (p, r, b, a) in enumerate(GENERATION_ROWS)
        ],
    }
    spec = BiasSpec(min_group_size=2)
    tables = generation_quality(generation, {"dialect": DIALECTS}, spec.min_group_size)
    pairs = StereotypePairs(
        ["she cooks", "he fixes"], ["he cooks", "she fixes"], ["gender"] * 2, "p.csv"
    )
    stereotypes = stereotype_result(pairs, np.array([0.5, -0.2]), np.array([0.1, 0.3]), 2)
    audit = language_model_audit(spec, stereotypes, tables, generation_gap_metrics(tables, spec))
    return {
        "job": "lm",
        "task": "causal-lm",
        "generation": generation,
        "biasAudit": audit.to_report(),
    }


def laid_out(binary: str, page: Path, folder: Path) -> dict[str, object]:
    """What Chromium laid out of `page`: the probe added to a copy without the page's policy."""
    import html
    import json
    import re

    text = page.read_text(encoding="utf-8")
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
    probed = folder / "probed.html"
    probed.write_text(text.replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")
    dumped = browse(
        binary, probed, folder / "profile-layout", "--dump-dom", "--window-size=1280,2000"
    )
    assert page_messages(dumped.stderr, probed) == []
    found = re.search(r'<pre id="layout-probe">(.*?)</pre>', dumped.stdout, re.S)
    assert found is not None
    result: dict[str, object] = json.loads(html.unescape(found.group(1)))
    return result


def test_chromium_lays_out_a_language_model_report(tmp_path: Path) -> None:
    from kubetune_trainer.report.html import PROMPT_TAIL_CHARS
    from kubetune_trainer.report.summary import write_reports

    binary = chromium()
    write_reports(tmp_path, language_model_report())
    page = tmp_path / "report.html"
    dumped = browse(binary, page, tmp_path / "profile-dom", "--dump-dom")
    assert page_messages(dumped.stderr, page) == []
    dom = Elements(dumped.stdout)
    assert {"generation", "bias"} <= set(dom.ids("section"))
    assert {name for name, _ in dom.tags}.isdisjoint({"script", "img"})  # completions are text

    layout: Any = laid_out(binary, page, tmp_path)
    assert layout["pageWidth"] <= layout["viewport"]  # nothing pushes the page sideways
    rows = layout["generation"]
    expected_prompts = [
        p if len(p) <= PROMPT_TAIL_CHARS else "\u2026" + p[-PROMPT_TAIL_CHARS:]
        for p, *_ in GENERATION_ROWS
    ]
    assert [[cell["text"] for cell in row[1:3]] for row in rows] == [
        [prompt, reference]
        for prompt, (_, reference, _, _) in zip(expected_prompts, GENERATION_ROWS, strict=True)
    ]
    assert [row[3]["text"] for row in rows] == [b or "" for _, _, b, _ in GENERATION_ROWS]
    assert [row[4]["text"] for row in rows] == [a for *_, a in GENERATION_ROWS]
    for row in rows:  # row, prompt, reference, before, after: side by side, on the page
        assert len(row) == 5
        assert all(cell["shown"] and cell["h"] > 0 for cell in row)
        assert all(cell["w"] > 0 for cell in row[:3])
        lefts = [cell["x"] for cell in row]
        assert lefts == sorted(lefts)
        assert all(a["x"] + a["w"] <= b["x"] + 0.5 for a, b in pairwise(row))
        assert row[-1]["x"] + row[-1]["w"] <= layout["viewport"]
    tops = [row[0]["y"] for row in rows]
    assert tops == sorted(tops)
    long_prompt = rows[1][1]
    assert long_prompt["h"] > 3 * rows[2][1]["h"]  # 400 characters wrap inside the cell
    assert long_prompt["w"] <= 640 + 2 * 10  # td.text's max-width and its padding

    names = [row[0]["text"] for row in layout["metrics"]]
    assert names == [
        "stereotypeShareDeviation",
        *[f"{m}{g}" for m in ("exactMatch", "tokenF1", "rougeL") for g in ("Difference", "Ratio")],
    ]
    assert all(cell["shown"] and cell["h"] > 0 for row in layout["metrics"] for cell in row)
    assert [h for h in layout["headings"] if "generation sample" in h] == [
        f"{m} per group of dialect, over the generation sample"
        for m in ("exactMatch", "tokenF1", "rougeL")
    ]
    group_rows = [[cell["text"] for cell in row] for row in layout["groups"]]
    assert group_rows[:2] == [["regional", "2", "0.5"], ["standard", "2", "1"]]  # exactMatch
