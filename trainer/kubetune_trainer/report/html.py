"""report.html: the page a person opens to see what a fine-tune did.

report.json holds every number of a run, but nobody reads a loss curve as a list of pairs.
This module draws the report as one HTML page: the outcome, the curves, the diagnosis, what
the data checks did, the freezing schedule, the learning-rate range test, the versions and
the config. `render_html` is a pure function of report.json's content, so the page can be
rebuilt from any saved report and tested without a training run.

The page must open wherever an output directory can be browsed (a file:// URL, a PVC
browser, an artifact store, offline), so it is one self-contained file: a small inline
stylesheet, charts as inline SVG drawn by matplotlib (report/charts.py, shared with
search.html), no JavaScript, nothing fetched.

Data rows are untrusted input (a training file can hold anything), and so are labels,
column names and the job's name. Every value reaches the page through `h()`, which formats
numbers and escapes everything else; markup built here is a `Markup`, the only thing `h()`
passes through. The page's Content-Security-Policy forbids scripts as a second guard.

A section (or a part of one) whose data the report lacks is left out, never shown empty:
reports of language models, failed runs and older trainers all render.

Numbers: counts (ints) get thousands separators (12,345); every other number shows 4
significant digits (0.6543, 12,350, 5.337e-5); durations read as 0.2041 s, 3 min 07 s,
2 h 05 min; a missing or non-finite value is an en dash.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from kubetune_trainer.formatting import MISSING, finite_number, fmt_number
from kubetune_trainer.report.charts import PALETTE, chart, chart_text, horizontal_bars, number_ticks
from kubetune_trainer.report.page import (
    BASE_STYLE,
    Markup,
    Section,
    badge,
    document,
    facts,
    h,
    join,
    tag,
)

MAX_CLASSES_CHARTED = 40
"""The class chart shows at most this many classes (the largest); the table lists all."""
MAX_POINTS = 2000
"""A curve is thinned to about this many points: a long run's chart stays small."""
PHASES = (("in", "in"), ("out", "out"))
"""A split's rows as they came in and as they went out to the model."""
GROUP_COLOURS: Final = (*PALETTE, "#db2777", "#7c4a1e", "#111827")
"""One line per layer group: the page's colours plus pink, brown and black (ten)."""
GROUP_LINE_STYLES: Final = ("-", "--", ":", "-.")
"""Once the colours run out the next groups are dashed, then dotted, then dash-dotted."""
LEGEND_ROWS = 16
"""A legend of more entries than this gets another column."""
IN_COLOUR, OUT_COLOUR, BEST_COLOUR = "#93c5fd", "#1d4ed8", "#6b7280"
VERDICT_TONE = {
    "Healthy": "good",
    "Overfitting": "warn",
    "Underfitting": "warn",
    "Inconclusive": "neutral",
    "Diverged": "bad",
}
AUDIT_TONE = {"Passed": "good", "Failed": "bad", "InsufficientData": "warn"}
NOT_JUDGED_STYLE: dict[str, Any] = {"color": "#e5e7eb", "hatch": "//", "edgecolor": "#6b7280"}
"""Groups left out of the gaps (too few rows, or the missing group): grey and hatched."""
PASSED_MARKS = {True: "\u2713", False: "\u2717"}
"""A gated metric's outcome in the tables (an ungated one shows the en dash)."""
MAX_CONFUSION_CLASSES = 30
"""The confusion matrix is drawn for at most this many classes; more get the table only."""
TOWARD_RGB, AGAINST_RGB = (22, 163, 74), (220, 38, 38)
"""Attribution highlights: toward the predicted class green, against it red."""
MAX_AUDIT_PANELS = 6
"""A sensitive column's chart draws at most this many positive classes (the table has all)."""

STYLE = (
    BASE_STYLE
    + """
h4{font-size:13px;margin:16px 0 6px;color:var(--muted)}
td.text{white-space:pre-wrap;word-break:break-word;max-width:640px;font-family:ui-monospace,
SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
tr.failed td{color:#991b1b;font-weight:600}
.tokens-grid{display:flex;flex-wrap:wrap;gap:4px 24px}
.example{border:1px solid var(--line);border-radius:6px;padding:6px 12px;margin:8px 0}
.example.error{border-left:4px solid #dc2626}
.highlighted span{border-radius:3px;padding:0 1px;white-space:pre-wrap}
ul{margin:6px 0;padding-left:22px}
details{margin:12px 0}summary{cursor:pointer;font-weight:600}
pre{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:12px;
overflow:auto;font-size:12px}
"""
)


# --- numbers ------------------------------------------------------------------------------


def fmt_seconds(seconds: float) -> str:
    """0.2041 s, 59.5 s, 3 min 07 s, 2 h 05 min."""
    if not math.isfinite(seconds):
        return MISSING
    if seconds < 60:
        return f"{fmt_number(seconds)} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def fmt_count_change(before: int, after: int) -> str:
    """+40, \u22123 (a minus sign) or 0: how a split's row count changed."""
    change = after - before
    return f"+{change:,}" if change > 0 else f"\u2212{-change:,}" if change < 0 else "0"


def _words(key: str) -> str:
    """setupSeconds -> setup; evaluationSeconds -> evaluation; dataLoadSeconds -> data load."""
    stem = re.sub(r"Seconds$", "", key)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", stem).lower()


# --- building blocks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A table row with a CSS class (plain rows are sequences of cells)."""

    cells: Sequence[object]
    css: str


class TextCell(str):
    """A cell of data text (a row of the training file): monospaced, whitespace kept."""


def table(
    headers: Sequence[object], rows: Iterable[Sequence[object] | Row], **attributes: str
) -> Markup:
    """A table; numeric cells are right-aligned."""
    head = tag("thead", tag("tr", *(tag("th", header) for header in headers)))
    body = tag("tbody", *(_row(row) for row in rows))
    return tag("table", head, body, **attributes)


def _row(row: Sequence[object] | Row) -> Markup:
    if isinstance(row, Row):
        return tag("tr", *(_cell(cell) for cell in row.cells), class_=row.css)
    return tag("tr", *(_cell(cell) for cell in row))


def _cell(value: object) -> Markup:
    if finite_number(value) is not None:
        return tag("td", value, class_="num")
    if isinstance(value, TextCell):
        return tag("td", value, class_="text")
    return tag("td", value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: object) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else []


# --- charts -------------------------------------------------------------------------------


def thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Every k-th point (and the last) so that about MAX_POINTS remain."""
    stride = max(1, math.ceil(len(points) / MAX_POINTS))
    kept = list(points[::stride])
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _plot(ax: Axes, points: Sequence[tuple[float, float]], **style: Any) -> None:
    if points:
        xs, ys = zip(*thin(points), strict=True)
        ax.plot(xs, ys, **style)


# --- the page -----------------------------------------------------------------------------


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page for a report.json's content."""
    sections = [
        section
        for section in (
            curves_section(report),
            diagnosis_section(report),
            evaluation_section(report),
            generation_section(report),
            bias_section(report),
            attributions_section(report),
            data_section(report),
            freezing_section(report),
            range_test_section(report),
            run_section(report),
        )
        if section is not None
    ]
    nav = tag("nav", *(tag("a", s.title, href=f"#{s.anchor}") for s in sections))
    main = tag("main", header(report), nav, *(section.html() for section in sections))
    return document(f"{report.get('job') or 'fine-tune'} \u00b7 kubetune report", STYLE, main)


# --- header -------------------------------------------------------------------------------


OUTCOME_BADGES: Final = {
    "succeeded": ("succeeded", "good"),
    "failed": ("failed", "bad"),
    "budgetExceeded": ("stopped: GPU budget spent", "warn"),
    "interrupted": ("interrupted: resumes from its checkpoint", "warn"),
}
"""report.json's `outcome` as the header's badge (older reports have only `succeeded`)."""


def header(report: Mapping[str, Any]) -> Markup:
    """Job name, outcome, when, the best result and where it is, size and timings."""
    succeeded = report.get("succeeded")
    title = [tag("h1", report.get("job") or "fine-tune")]
    outcome = OUTCOME_BADGES.get(str(report.get("outcome")))
    if outcome is not None:
        title.append(badge(*outcome))
    elif isinstance(succeeded, bool):
        title.append(badge("succeeded" if succeeded else "failed", "good" if succeeded else "bad"))
    finished = report.get("finishedAt")
    subtitle = tag("p", f"finished {finished}", class_="sub") if finished else Markup("")
    return tag(
        "header", tag("div", *title), subtitle, facts(_run_facts(report)), _best_metrics(report)
    )


def _run_facts(report: Mapping[str, Any]) -> list[tuple[object, object]]:
    metric = report.get("primaryMetric")
    best = _mapping(report.get("bestMetrics"))
    items: list[tuple[object, object]] = []
    if metric and metric in best:
        items.append((f"best {metric}", best[metric]))
    for label, key in (
        ("best checkpoint", "bestCheckpoint"),
        ("steps", "steps"),
        ("processes", "processes"),
    ):
        if report.get(key) not in (None, ""):
            items.append((label, report[key]))
    cost = _mapping(report.get("cost"))
    if finite_number(cost.get("gpuHours")) is not None:
        items.append(("GPU-hours", cost["gpuHours"]))
    if finite_number(cost.get("amount")) is not None:
        items.append(("cost", f"{cost['amount']:,.2f} {cost.get('currency') or ''}".strip()))
    for key, seconds in _mapping(report.get("timings")).items():
        if finite_number(seconds) is not None:
            items.append((_words(key), fmt_seconds(seconds)))
    return items + _throughput_facts(_mapping(report.get("throughput")))


def _throughput_facts(throughput: Mapping[str, Any]) -> list[tuple[object, object]]:
    """The run's mean tokens/s, and its MFU where the GPU's peak is known."""
    items: list[tuple[object, object]] = []
    tokens_per_second = finite_number(throughput.get("tokensPerSecond"))
    if tokens_per_second is not None:
        items.append(("tokens/s", f"{tokens_per_second:,.0f}"))
    mfu = finite_number(throughput.get("mfu"))
    if mfu is not None:
        items.append(("MFU", f"{mfu:.1%}"))
    return items


def _best_metrics(report: Mapping[str, Any]) -> Markup:
    best = _mapping(report.get("bestMetrics"))
    if not best:
        return Markup("")
    return join([tag("h3", "Best evaluation"), table(list(best), [list(best.values())])])


# --- curves -------------------------------------------------------------------------------


def curves_section(report: Mapping[str, Any]) -> Section | None:
    """Training loss and every validation metric over steps, the best evaluation and the
    freezing schedule's changes marked."""
    curves = _mapping(report.get("curves"))
    losses = _pairs(_sequence(curves.get("trainLoss")))
    evaluations = [e for e in _sequence(curves.get("evaluations")) if isinstance(e, Mapping)]
    best = best_step(report)
    primary = str(report.get("primaryMetric") or "")
    marks = Marks(best, primary, schedule_changes(_freezing_log(report)))
    charts = []
    if losses or _series(evaluations, "loss"):
        charts.append(_loss_chart(losses, evaluations, marks))
    if _series(evaluations, REWARD_MARGIN):
        charts.append(_rewards_chart(evaluations, marks))
    metrics = [m for m in metric_names(evaluations) if m != "loss" and m not in REWARDS_CHARTED]
    if metrics:
        charts.append(_metrics_chart(metrics, evaluations, marks))
    rates = _pairs(_sequence(curves.get("learningRate")))
    if rates:
        charts.append(_learning_rate_chart(rates, marks.changes))
    if not charts:
        return None
    body = [tag("div", *charts, class_="charts"), _evaluations_table(evaluations, best)]
    return Section("curves", "Curves", join(body))


def _pairs(values: Sequence[Any]) -> list[tuple[float, float]]:
    """[[step, value], ...] as float pairs, pairs with a missing value left out."""
    pairs = []
    for pair in values:
        if isinstance(pair, list | tuple) and len(pair) == 2:
            x, y = finite_number(pair[0]), finite_number(pair[1])
            if x is not None and y is not None:
                pairs.append((x, y))
    return pairs


def _series(
    evaluations: Sequence[Mapping[str, Any]], metric: str, key: str = "metrics"
) -> list[tuple[float, float]]:
    values = [(e.get("step"), _mapping(e.get(key)).get(metric)) for e in evaluations]
    return _pairs(values)


def metric_names(evaluations: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every validation metric, in the order of first appearance."""
    names: dict[str, None] = {}
    for evaluation in evaluations:
        names.update(dict.fromkeys(_mapping(evaluation.get("metrics"))))
    return list(names)


def best_step(report: Mapping[str, Any]) -> int | None:
    """The step of the best checkpoint ("step-00000040" -> 40), if there is one."""
    match = re.search(r"(\d+)$", str(report.get("bestCheckpoint") or ""))
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Marks:
    """What the loss and metric charts mark besides their curves."""

    best: int | None
    """The step of the best checkpoint."""
    primary: str
    """The primary metric, starred at the best step."""
    changes: list[float]
    """The steps where the freezing schedule changed what trains."""


def _loss_chart(
    losses: list[tuple[float, float]], evaluations: Sequence[Mapping[str, Any]], marks: Marks
) -> Markup:
    validation = _series(evaluations, "loss")

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        _plot(ax, losses, label="training loss", linewidth=1.2)
        _plot(ax, validation, label="validation loss", marker="o", markersize=3.5)
        _mark_best(ax, marks.best, validation if marks.primary == "loss" else [])
        _mark_changes(ax, marks.changes)
        _steps_axis(ax)
        ax.set(title="Loss", xlabel="step", ylabel="loss")
        ax.legend()

    return chart("chart-loss", "Training and validation loss over steps", draw, (5.6, 3.3))


def _metrics_chart(
    metrics: list[str], evaluations: Sequence[Mapping[str, Any]], marks: Marks
) -> Markup:
    primary = marks.primary

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        for metric in metrics:
            width = 2.2 if metric == primary else 1.1
            points = _series(evaluations, metric)
            _plot(ax, points, label=chart_text(metric), linewidth=width, marker="o", markersize=3)
        if primary in metrics:
            training = _series(evaluations, primary, "trainMetrics")
            _plot(
                ax,
                training,
                label=chart_text(f"training {primary}"),
                linestyle="--",
                color="#64748b",
            )
        _mark_best(ax, marks.best, _series(evaluations, primary) if primary in metrics else [])
        _mark_changes(ax, marks.changes)
        _steps_axis(ax)
        ax.set(title="Validation metrics", xlabel="step", ylabel="value")
        figure.legend(loc="outside right upper", fontsize=7)

    return chart("chart-metrics", "Validation metrics over steps", draw, (5.6, 3.3))


REWARD_MARGIN = "rewardMargin"
REWARDS_CHARTED = (REWARD_MARGIN, "chosenReward", "rejectedReward")
"""A dpo run's rewards (training/preference_loss.py), charted apart from its other metrics:
they share a scale of their own, and the margin's two curves are what the diagnosis reads."""


def _rewards_chart(evaluations: Sequence[Mapping[str, Any]], marks: Marks) -> Markup:
    """A dpo run's validation rewards, and the training reward margin beside the validation
    one (a validation margin that stops growing while training's grows is overfitting)."""

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        for metric in REWARDS_CHARTED:
            width = 2.2 if metric == REWARD_MARGIN else 1.1
            points = _series(evaluations, metric)
            _plot(ax, points, label=chart_text(metric), linewidth=width, marker="o", markersize=3)
        training = _series(evaluations, REWARD_MARGIN, "trainMetrics")
        label = chart_text(f"training {REWARD_MARGIN}")
        _plot(ax, training, label=label, linestyle="--", color="#64748b")
        primary = marks.primary if marks.primary in REWARDS_CHARTED else None
        _mark_best(ax, marks.best, _series(evaluations, primary) if primary else [])
        _mark_changes(ax, marks.changes)
        _steps_axis(ax)
        ax.set(title="Rewards", xlabel="step", ylabel="beta x log-probability ratio")
        figure.legend(loc="outside right upper", fontsize=7)

    return chart("chart-rewards", "Preference rewards over steps", draw, (5.6, 3.3))


def _learning_rate_chart(rates: list[tuple[float, float]], changes: list[float]) -> Markup:
    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        _plot(ax, rates, label="learning rate", linewidth=1.4)
        _mark_changes(ax, changes)
        _steps_axis(ax)
        ax.set(title="Learning rate", xlabel="step", ylabel="rate (highest group)")
        ax.legend()

    return chart("chart-learning-rate", "The learning rate over steps", draw, (5.6, 3.3))


def _mark_changes(ax: Axes, changes: list[float]) -> None:
    """Dash-dotted lines where the freezing schedule changed what trains (the best
    checkpoint's line is dotted: the two often fall on the same evaluation)."""
    for index, step in enumerate(changes):
        label = "schedule change" if index == 0 else None
        ax.axvline(step, color="#64748b", linestyle="-.", linewidth=1, label=label)


def _freezing_log(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [entry for entry in _sequence(report.get("freezing")) if isinstance(entry, Mapping)]


def _steps_axis(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 7.5


def _mark_best(ax: Axes, best: int | None, primary: Sequence[tuple[float, float]]) -> None:
    """A dashed line at the best checkpoint's step, and a star on the primary metric there."""
    if best is None:
        return
    ax.axvline(best, color=BEST_COLOUR, linestyle=":", linewidth=1, label=f"best (step {best:,})")
    at_best = [value for step, value in primary if step == best]
    if at_best:
        ax.plot([best], at_best[:1], marker="*", markersize=12, color="#f59e0b", linestyle="none")


def _evaluations_table(evaluations: Sequence[Mapping[str, Any]], best: int | None) -> Markup:
    names = metric_names(evaluations)
    if not evaluations or not names:
        return Markup("")
    rows = []
    for evaluation in evaluations:
        metrics = _mapping(evaluation.get("metrics"))
        cells = [evaluation.get("step"), evaluation.get("epoch"), *(metrics.get(n) for n in names)]
        rows.append(Row(cells, "best") if evaluation.get("step") == best else cells)
    summary = tag("summary", f"Every evaluation ({len(evaluations):,})")
    return tag("details", summary, table(["step", "epoch", *names], rows))


# --- diagnosis ----------------------------------------------------------------------------


def diagnosis_section(report: Mapping[str, Any]) -> Section | None:
    """The verdict on the curves, the observations behind it, and what to change."""
    diagnosis = _mapping(report.get("diagnosis"))
    verdict = diagnosis.get("verdict")
    evidence = [line for line in _sequence(diagnosis.get("evidence")) if line]
    suggestion = diagnosis.get("suggestion")
    if not (verdict or evidence or suggestion):
        return None
    body = []
    if verdict:
        body.append(tag("p", badge(str(verdict), VERDICT_TONE.get(str(verdict), "neutral"))))
    if evidence:
        body.append(tag("ul", *(tag("li", line) for line in evidence)))
    if suggestion:
        body.append(tag("div", tag("strong", "Suggestion: "), suggestion, class_="callout"))
    return Section("diagnosis", "Diagnosis", join(body))


# --- evaluation ---------------------------------------------------------------------------


def evaluation_section(report: Mapping[str, Any]) -> Section | None:
    """The best model's confusion matrix and its precision, recall and F1 per class."""
    evaluation = _mapping(report.get("evaluation"))
    labels = [str(label) for label in _sequence(evaluation.get("labels"))]
    matrix = confusion_matrix(evaluation.get("confusionMatrix"), len(labels))
    per_class = [c for c in _sequence(evaluation.get("perClass")) if isinstance(c, Mapping)]
    parts = []
    if matrix is not None and len(labels) <= MAX_CONFUSION_CLASSES:
        parts.append(confusion_chart(labels, matrix))
    elif matrix is not None:
        parts.append(tag("p", f"{len(labels):,} classes: too many to draw the confusion matrix."))
    if per_class:
        headers = ["class", "precision", "recall", "F1", "support"]
        rows = [
            [c.get("label"), c.get("precision"), c.get("recall"), c.get("f1"), c.get("support")]
            for c in per_class
        ]
        parts.append(table(headers, rows, class_="per-class"))
    return Section("evaluation", "Evaluation", join(parts)) if parts else None


GENERATION_ROWS_SHOWN: Final = 50
"""Prompts the generation table shows; report.json holds every sampled one."""
PROMPT_TAIL_CHARS: Final = 400
"""A longer prompt shows its end, where the model continues it."""


def generation_section(report: Mapping[str, Any]) -> Section | None:
    """evaluation.generation: the metrics of the completions before and after fine-tuning,
    and the sampled prompts with their reference and both completions."""
    generation = _mapping(report.get("generation"))
    rows = [row for row in _sequence(generation.get("rows")) if isinstance(row, Mapping)]
    if not rows:
        return None
    before = _mapping(_mapping(generation.get("before")).get("metrics"))
    after_pass = _mapping(generation.get("after"))
    after = _mapping(after_pass.get("metrics"))
    names = sorted({*before, *after})
    after_title = f"after ({after_pass['checkpoint']})" if after_pass.get("checkpoint") else "after"
    metrics = table(
        ["metric", "before fine-tuning", after_title],
        [[name, before.get(name), after.get(name)] for name in names],
        class_="generation-metrics",
    )
    shown = rows[:GENERATION_ROWS_SHOWN]
    note = (
        f"Greedy completions of {len(rows):,} validation prompts drawn at random (at most "
        f"{generation.get('maxNewTokens')} new tokens each)"
        + (f"; the first {len(shown)} are shown, report.json holds all." if shown != rows else ".")
    )
    completions = table(
        ["row", "prompt", "reference", "before", "after"],
        [
            [
                row.get("row"),
                TextCell(_prompt_tail(str(row.get("prompt", "")))),
                *(
                    TextCell(row[key]) if isinstance(row.get(key), str) else None
                    for key in ("reference", "before", "after")
                ),
            ]
            for row in shown
        ],
        class_="generation",
    )
    return Section("generation", "Generation", join([metrics, tag("p", note), completions]))


def _prompt_tail(prompt: str) -> str:
    if len(prompt) <= PROMPT_TAIL_CHARS:
        return prompt
    return "\u2026" + prompt[-PROMPT_TAIL_CHARS:]


def confusion_matrix(value: object, size: int) -> list[list[int]] | None:
    """The size x size matrix of counts, or None when it is not one."""
    rows = [_sequence(row) for row in _sequence(value)]
    if not size or len(rows) != size or any(len(row) != size for row in rows):
        return None
    if not all(isinstance(c, int) and not isinstance(c, bool) for row in rows for c in row):
        return None
    return [list(row) for row in rows]


def confusion_chart(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> Markup:
    """A heat map of counts, coloured by the share of each true class's rows."""
    shares = [[c / (sum(row) or 1) for c in row] for row in matrix]
    side = min(2.4 + 0.38 * len(labels), 12)
    names = [chart_text(label) for label in labels]

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        mesh = ax.pcolormesh(shares, cmap="Blues", vmin=0, vmax=1)
        # The colour scale's meaning goes on the colour bar, so that the title stays short
        # enough for the narrow figure of a few classes.
        figure.colorbar(mesh, ax=ax, label="share of the true class's rows", shrink=0.8)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                colour = "white" if shares[i][j] > 0.55 else "#111827"
                ax.text(
                    j + 0.5,
                    i + 0.5,
                    fmt_number(count),
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=8 if len(labels) <= 12 else 6,
                )
        ticks = [i + 0.5 for i in range(len(labels))]
        ax.set_xticks(ticks, names, rotation=45 if len(labels) > 4 else 0, ha="right")
        ax.set_yticks(ticks, names)
        ax.invert_yaxis()
        ax.grid(visible=False)
        ax.set(title="Confusion matrix", xlabel="predicted", ylabel="true")

    return chart("chart-confusion", "Confusion matrix", draw, (side + 1.8, side))


# --- attributions ------------------------------------------------------------------------


def attributions_section(report: Mapping[str, Any]) -> Section | None:
    """Which tokens moved the predictions, per class, per group and in examples; which layers
    mattered and how far fine-tuning moved each layer group."""
    found = _mapping(report.get("attributions"))
    if found.get("kind") == "causal-lm":
        return _prompt_attributions(found)
    parts = [
        _token_tables("Top tokens per class", "attr-class", _mapping(found.get("classes"))),
        _group_tokens(_mapping(found.get("groups"))),
        _examples_highlighted(found.get("examples")),
        _score_chart(
            "chart-layer-conductance",
            "Layer conductance",
            _named_scores(found.get("layerConductance"), "layer", "score"),
            "conductance",
        ),
        _score_chart(
            "chart-weight-change",
            "Relative weight change per layer group",
            _named_scores(found.get("weightChange"), "group", "relativeChange"),
            "relative change",
        ),
    ]
    body = join(part for part in parts if part)
    return Section("attributions", "Attributions", body) if body else None


def token_scores(value: object) -> list[tuple[str, float]]:
    """[{"token": t, "score": s}, ...] as pairs; entries without a finite score left out."""
    pairs = []
    for entry in map(_mapping, _sequence(value)):
        score = finite_number(entry.get("score"))
        if score is not None and entry.get("token") is not None:
            pairs.append((str(entry["token"]), score))
    return pairs


def _token_tables(title: str, css: str, tokens: Mapping[str, Any], level: str = "h3") -> Markup:
    tables = []
    for name, value in tokens.items():
        rows = token_scores(value)
        if rows:
            heading = tag("h4", name)
            tables.append(tag("div", heading, table(["token", "score"], rows, class_=css)))
    if not tables:
        return Markup("")
    return join([tag(level, title), tag("div", *tables, class_="tokens-grid")])


def _group_tokens(groups: Mapping[str, Any]) -> Markup:
    parts = [
        _token_tables(f"Top tokens per group of {column}", "attr-group", _mapping(by_group))
        for column, by_group in groups.items()
    ]
    return join(part for part in parts if part)


def token_colour(score: float, scale: float) -> str:
    """The highlight of a token: green toward the predicted class, red against, alpha by
    |score| / scale."""
    red, green, blue = TOWARD_RGB if score >= 0 else AGAINST_RGB
    alpha = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    return f"rgba({red},{green},{blue},{alpha:.3f})"


def highlighted(tokens: Sequence[tuple[str, float]]) -> Markup:
    """The tokens as spans whose background encodes their score (the text stays text)."""
    scale = max((abs(score) for _, score in tokens), default=0.0)
    spans = [
        tag("span", token, style=f"background:{token_colour(score, scale)}", title=h(score))
        for token, score in tokens
    ]
    spaced = [part for span in spans for part in (span, " ")][:-1]
    return tag("p", *spaced, class_="highlighted")


def _examples_highlighted(value: object) -> Markup:
    examples = [e for e in _sequence(value) if isinstance(e, Mapping)]
    shown = [_example(e) for e in examples if token_scores(e.get("tokens")) or e.get("text")]
    if not shown:
        return Markup("")
    legend = tag(
        "p",
        tag("span", "toward the predicted class", style=f"background:{token_colour(1, 1.25)}"),
        " ",
        tag("span", "against it", style=f"background:{token_colour(-1, 1.25)}"),
        " (stronger colour: larger share of the example's largest attribution)",
        class_="legend highlighted",
    )
    return join([tag("h3", "Examples"), legend, *shown])


def _example(example: Mapping[str, Any]) -> Markup:
    error = example.get("error") is True
    meta = f"label {h(example.get('label'))} \u00b7 predicted {h(example.get('predicted'))}"
    if finite_number(example.get("confidence")) is not None:
        meta += f" ({h(example['confidence'])})"
    tokens = token_scores(example.get("tokens"))
    body = highlighted(tokens) if tokens else tag("p", TextCell(example.get("text") or ""))
    mark = tag("strong", "error: ") if error else Markup("")
    meta_line = tag("p", mark, Markup(meta), class_="sub")
    return tag("div", meta_line, body, class_="example error" if error else "example")


def _named_scores(value: object, name_key: str, score_key: str) -> list[tuple[str, float]]:
    pairs = []
    for entry in map(_mapping, _sequence(value)):
        score = finite_number(entry.get(score_key))
        if score is not None:
            pairs.append((str(entry.get(name_key)), score))
    return pairs


def _score_chart(
    chart_id: str, title: str, scores: Sequence[tuple[str, float]], xlabel: str
) -> Markup:
    """Horizontal bars, one per name, in the given order (layers from the input up)."""
    if not scores:
        return Markup("")
    shown = list(scores[:MAX_CLASSES_CHARTED])

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        values = [score for _, score in shown]
        colours = [OUT_COLOUR if v >= 0 else "#dc2626" for v in values]
        bars = horizontal_bars(ax, [name for name, _ in shown], values)
        for bar, colour in zip(bars, colours, strict=True):
            bar.set_color(colour)
        ax.axvline(0, color="#6b7280", linewidth=0.8)
        ax.set(title=title, xlabel=xlabel)

    height = min(1.2 + 0.28 * len(shown), 12)
    return join([tag("h3", title), chart(chart_id, title, draw, (6.4, height))])


# --- bias audit --------------------------------------------------------------------------


def bias_section(report: Mapping[str, Any]) -> Section | None:
    """The audit's verdict, its gaps against the thresholds, each group's rates, and what
    swapping terms did (the shape of audit.BiasAudit.to_report)."""
    audit = _mapping(report.get("biasAudit"))
    if not audit.get("verdict"):
        return None
    if audit.get("kind") == "causal-lm":
        return _language_model_bias(audit)
    attributes = [a for a in _sequence(audit.get("attributes")) if isinstance(a, Mapping)]
    metrics = [m for m in _sequence(audit.get("metrics")) if isinstance(m, Mapping)]
    parts = [_audit_verdict(audit), _audit_metrics(metrics)]
    parts += [_audit_attribute(i, a, audit, metrics) for i, a in enumerate(attributes, 1)]
    parts += [_counterfactual(_mapping(audit.get("counterfactual"))), _audit_evidence(audit)]
    return Section("bias", "Bias audit", join(part for part in parts if part))


def _audit_verdict(audit: Mapping[str, Any]) -> Markup:
    verdict = str(audit["verdict"])
    parts = [tag("p", badge(verdict, AUDIT_TONE.get(verdict, "neutral")))]
    if audit.get("message"):
        parts.append(tag("p", tag("strong", audit["message"]), class_="audit-message"))
    if audit.get("worstGroup"):
        parts.append(tag("p", "Worst group: ", tag("strong", audit["worstGroup"])))
    return join(parts)


def passed_mark(passed: object) -> str:
    """\u2713 passed, \u2717 failed, the en dash when not gated or not measured."""
    return PASSED_MARKS.get(passed, MISSING) if isinstance(passed, bool) else MISSING


def _audit_metrics(metrics: Sequence[Mapping[str, Any]]) -> Markup:
    if not metrics:
        return Markup("")
    headers = ["metric", "attribute", "positive label", "value", "threshold", "passed", "reason"]
    rows = [_audit_metric_row(metric) for metric in metrics]
    return join([tag("h3", "Metrics"), table(headers, rows, class_="bias-metrics")])


def _audit_metric_row(metric: Mapping[str, Any]) -> Row:
    passed = metric.get("passed")
    cells = [
        metric.get("statusName") or metric.get("name"),
        metric.get("attribute"),
        metric.get("positiveLabel") or "all classes",
        metric.get("value"),
        metric.get("threshold"),
        passed_mark(passed),
        metric.get("reason") or "",
    ]
    if passed is True:
        return Row(cells, "passed")
    return Row(cells, "failed" if passed is False else "quiet")


@dataclass(frozen=True)
class GroupBar:
    """One group's bar in a fairness chart."""

    group: str
    selection_rate: float | None
    tpr: float | None
    judged: bool


def _audit_attribute(
    index: int,
    attribute: Mapping[str, Any],
    audit: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
) -> Markup:
    """One sensitive column: a chart of its groups' rates per positive class, and a table."""
    name = str(attribute.get("attribute"))
    groups = [g for g in _sequence(attribute.get("groups")) if isinstance(g, Mapping)]
    classes = [c for c in _sequence(attribute.get("classes")) if isinstance(c, Mapping)]
    judged = _judged_groups(groups, str(audit.get("missingGroup") or "(missing)"))
    panels = {
        str(c.get("positiveLabel")): _group_bars(c, judged) for c in classes[:MAX_AUDIT_PANELS]
    }
    panels = {label: bars for label, bars in panels.items() if bars}
    parts = [tag("h3", f"Sensitive column {name}")]
    if attribute.get("reason"):
        parts.append(tag("p", f"Not judged: {attribute['reason']}"))
    if panels:
        lines = {
            label: _threshold_lines(metrics, name, label, bars) for label, bars in panels.items()
        }
        parts.append(fairness_chart(f"chart-bias-{index}", name, panels, lines))
    if groups:
        parts.append(_audit_groups_table(name, groups, classes, judged))
    return join(parts)


def _judged_groups(groups: Sequence[Mapping[str, Any]], missing: str) -> dict[str, bool]:
    """Group -> takes part in the gaps (sufficient and not the missing group)."""
    return {
        str(g.get("group")): bool(
            g.get("judged", g.get("sufficient") and g.get("group") != missing)
        )
        for g in groups
    }


def _group_bars(positive: Mapping[str, Any], judged: Mapping[str, bool]) -> list[GroupBar]:
    rows = [g for g in _sequence(positive.get("groups")) if isinstance(g, Mapping)]
    return [
        GroupBar(
            str(row.get("group")),
            finite_number(row.get("selectionRate")),
            finite_number(row.get("tpr")),
            judged.get(str(row.get("group")), False),
        )
        for row in rows[:MAX_CLASSES_CHARTED]
    ]


ThresholdLine = tuple[float, str]
"""(rate, label): where a gated gap puts the lowest rate that still passes."""


def _threshold_lines(
    metrics: Sequence[Mapping[str, Any]], attribute: str, label: str, bars: Sequence[GroupBar]
) -> list[ThresholdLine]:
    """Demographic parity's thresholds as selection rates, from the highest judged group."""
    rates = [b.selection_rate for b in bars if b.judged and b.selection_rate is not None]
    if not rates:
        return []
    highest, lines = max(rates), []
    for metric in metrics:
        threshold = finite_number(metric.get("threshold"))
        if metric.get("attribute") != attribute or threshold is None:
            continue
        if metric.get("positiveLabel") not in (label, None):
            continue
        if metric.get("name") == "demographicParityRatio":
            words = "four-fifths" if threshold == 0.8 else fmt_number(threshold)
            lines.append((threshold * highest, f"{words} of the highest"))
        elif metric.get("name") == "demographicParityDifference":
            lines.append((highest - threshold, f"highest \u2212 {fmt_number(threshold)}"))
    return lines


def fairness_chart(
    chart_id: str,
    attribute: str,
    panels: Mapping[str, Sequence[GroupBar]],
    lines: Mapping[str, Sequence[ThresholdLine]],
) -> Markup:
    """Per group, the selection rate (and TPR) as bars, one panel per positive class; groups
    left out of the gaps grey and hatched; demographic parity's threshold as a line."""
    tallest = max(len(bars) for bars in panels.values())
    tpr = any(b.tpr is not None for bars in panels.values() for b in bars)
    height = 1.0 + len(panels) * (0.7 + 0.3 * tallest * (2 if tpr else 1))
    title = f"Rates per group of {chart_text(attribute)}"

    def draw(figure: Figure) -> None:
        axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
        for ax, (label, bars) in zip(axes, panels.items(), strict=True):
            _fairness_bars(ax, bars, tpr)
            for rate, words in lines.get(label, []):
                ax.axvline(rate, color="#dc2626", linestyle="--", linewidth=1, label=words)
            ax.set(title=panel_title(label, tpr), xlabel="rate", xlim=(0, 1.05))
            ax.grid(axis="y", visible=False)
            ax.legend(loc="lower right")
        figure.suptitle(title, fontsize=10, fontweight="bold")

    return chart(chart_id, title, draw, (7.6, min(height, 16)))


def panel_title(label: str, tpr: bool) -> str:
    """What a panel draws: how often each group is predicted the positive class `label`,
    among all its rows (selection rate) and, with TPR, among its rows labelled `label`."""
    rates = "selection rate and TPR" if tpr else "selection rate"
    return f"{rates} of '{chart_text(label)}' per group"


def _fairness_bars(ax: Axes, bars: Sequence[GroupBar], tpr: bool) -> None:
    series = [("selection rate", OUT_COLOUR, [b.selection_rate for b in bars])]
    if tpr:
        series.append(("TPR", IN_COLOUR, [b.tpr for b in bars]))
    width = 0.8 / len(series)
    labelled: set[str] = set()
    for offset, (name, colour, rates) in zip((-0.2, 0.2) if tpr else (0.0,), series, strict=True):
        for i, (bar, rate) in enumerate(zip(bars, rates, strict=True)):
            if rate is None:
                continue
            legend = name if bar.judged else f"{name} (not judged)"
            style: dict[str, Any] = {"color": colour} if bar.judged else NOT_JUDGED_STYLE
            ax.barh(
                i + offset,
                rate,
                height=width,
                label=None if legend in labelled else legend,
                **style,
            )
            labelled.add(legend)
    names = [chart_text(b.group) + ("" if b.judged else " (not judged)") for b in bars]
    ax.set_yticks(range(len(bars)), names)
    ax.invert_yaxis()


def _audit_groups_table(
    attribute: str,
    groups: Sequence[Mapping[str, Any]],
    classes: Sequence[Mapping[str, Any]],
    judged: Mapping[str, bool],
) -> Markup:
    """Each group's numbers: overall, then per positive class (TPR and FPR)."""
    several = len(classes) > 1
    headers = [attribute, "rows", "accuracy", "selection rate"]
    rows: list[Row] = []
    for positive in classes:
        label = str(positive.get("positiveLabel"))
        for group in (g for g in _sequence(positive.get("groups")) if isinstance(g, Mapping)):
            name = str(group.get("group"))
            cells = [name, group.get("count"), group.get("accuracy"), group.get("selectionRate")]
            cells += [group.get("tpr"), group.get("fpr"), "yes" if judged.get(name) else "no"]
            rows.append(
                Row(([label] if several else []) + cells, "" if judged.get(name) else "quiet")
            )
    if rows:
        headers += ["TPR", "FPR", "judged"]
        return table((["positive label"] if several else []) + headers, rows, class_="bias-groups")
    plain = [
        Row(
            [g.get("group"), g.get("count"), g.get("accuracy"), g.get("selectionRate")],
            "" if judged.get(str(g.get("group"))) else "quiet",
        )
        for g in groups
    ]
    return table(headers, plain, class_="bias-groups")


def _counterfactual(result: Mapping[str, Any]) -> Markup:
    """How often swapping terms flipped the prediction, overall and per pair."""
    if not result:
        return Markup("")
    changed, flips = result.get("changed"), result.get("flips")
    line = (
        f"Swapping terms changed {h(changed)} of {h(result.get('texts'))} audit texts; the "
        f"predicted class flipped in {h(flips)} (flip rate {h(result.get('flipRate'))})."
    )
    parts = [tag("h3", "Counterfactual swaps"), tag("p", Markup(line), class_="counterfactual")]
    pairs = [p for p in _sequence(result.get("pairs")) if isinstance(p, Mapping)]
    if pairs:
        headers = ["pair", "texts changed", "flips", "flip rate", "mean shift"]
        rows = [
            [
                f"{_attribute_prefix(p)}{p.get('term')} \u2194 {p.get('counterpart')}",
                p.get("texts"),
                p.get("flips"),
                p.get("flipRate"),
                p.get("meanShift"),
            ]
            for p in pairs
        ]
        parts.append(table(headers, rows, class_="counterfactual-pairs"))
        if result.get("meanShiftDirection"):
            parts.append(tag("p", f"Mean shift: {result['meanShiftDirection']}.", class_="sub"))
    return join(parts)


def _attribute_prefix(pair: Mapping[str, Any]) -> str:
    """'gender: ' for a pair that names its attribute (bias.counterfactuals[].attribute)."""
    return f"{pair['attribute']}: " if pair.get("attribute") else ""


def _audit_evidence(audit: Mapping[str, Any]) -> Markup:
    evidence = [line for line in _sequence(audit.get("evidence")) if line]
    if not evidence:
        return Markup("")
    return join([tag("h3", "Evidence"), tag("ul", *(tag("li", line) for line in evidence))])


# --- a causal LM's audit and attributions ---------------------------------------------------


def _language_model_bias(audit: Mapping[str, Any]) -> Section:
    """A causal LM's audit (lm_audit.LanguageModelAudit.to_report): the gated metrics, the
    stereotype preference per category before and after fine-tuning, the pairs that moved
    most, each group's validation loss and, with evaluation.generation, each group's
    generation metrics over the sampled rows."""
    metrics = [m for m in _sequence(audit.get("metrics")) if isinstance(m, Mapping)]
    rows = [_language_model_metric_row(m) for m in metrics]
    headers = ["metric", "category or column", "value", "threshold", "passed", "detail"]
    parts = [_audit_verdict(audit)]
    if rows:
        parts += [tag("h3", "Metrics"), table(headers, rows, class_="bias-metrics")]
    parts += [_stereotype_pairs(_mapping(audit.get("stereotypePairs")))]
    parts += [_group_quality(t) for t in _sequence(audit.get("groupQuality"))]
    parts.append(_audit_evidence(audit))
    return Section("bias", "Bias audit", join(part for part in parts if part))


def _language_model_metric_row(metric: Mapping[str, Any]) -> Row:
    passed = metric.get("passed")
    cells = [metric.get(key) for key in ("name", "attribute", "value", "threshold")]
    cells += [passed_mark(passed), metric.get("reason") or metric.get("detail") or ""]
    return Row(cells, "passed" if passed is True else "failed" if passed is False else "quiet")


def _stereotype_pairs(result: Mapping[str, Any]) -> Markup:
    categories = [c for c in _sequence(result.get("categories")) if isinstance(c, Mapping)]
    if not categories:
        return Markup("")
    line = (
        f"{h(result.get('pairs'))} sentence pairs from {h(result.get('origin'))}: the share in "
        "which the model finds the more stereotypical sentence likelier (0.5: no preference; "
        f"interval: {h(result.get('interval'))}; {h(result.get('tie'))})."
    )
    headers = ["category", "pairs", "share", "low", "high", "mean gap", "share before"]
    headers.append("mean gap before")
    keys = ["category", "pairs", "stereotypeShare", "low", "high", "meanGap"]
    keys += ["baseStereotypeShare", "baseMeanGap"]
    rows = [
        Row([c.get(k) for k in keys], "" if c.get("sufficient") else "quiet") for c in categories
    ]
    parts = [tag("h3", "Stereotype pairs"), tag("p", Markup(line), class_="sub")]
    parts.append(table(headers, rows, class_="stereotype-categories"))
    moved = [p for p in _sequence(result.get("moved")) if isinstance(p, Mapping)]
    if moved:
        keys = ["category", "more", "less", "baseGap", "gap", "change"]
        cells = [
            [TextCell(p[k]) if k in ("more", "less") else p.get(k) for k in keys] for p in moved
        ]
        heading = "Pairs whose log-likelihood gap fine-tuning moved most"
        gap_headers = [
            "category",
            "more stereotypical",
            "less",
            "gap before",
            "gap after",
            "change",
        ]
        parts += [tag("h3", heading), table(gap_headers, cells, class_="stereotype-moved")]
    return join(parts)


def _group_quality(value: object) -> Markup:
    found = _mapping(value)
    groups = [g for g in _sequence(found.get("groups")) if isinstance(g, Mapping)]
    if not groups:
        return Markup("")
    metric, attribute = found.get("metric"), str(found.get("attribute"))
    rows = [
        Row([g.get("group"), g.get("count"), g.get("value")], "" if g.get("judged") else "quiet")
        for g in groups
    ]
    measured = found.get("rows") or "validation rows"
    heading = f"{metric} per group of {attribute}, over the {measured}"
    return join([tag("h3", heading), table([attribute, "rows", metric], rows, class_="lm-groups")])


def _prompt_attributions(found: Mapping[str, Any]) -> Section | None:
    """Each sampled prompt, its tokens (a conversation's turns) coloured by how much they made
    the response likelier."""
    examples = [e for e in _sequence(found.get("examples")) if isinstance(e, Mapping)]
    shown = []
    for example in examples:
        tokens = token_scores(example.get("tokens"))
        response = tag("p", "Response: ", TextCell(example.get("response") or ""), class_="sub")
        body = highlighted(tokens) if tokens else tag("p", TextCell(example.get("prompt") or ""))
        shown.append(tag("div", body, response, class_="example"))
    if not shown:
        return None
    legend = tag(
        "p",
        tag("span", "made the response likelier", style=f"background:{token_colour(1, 1.25)}"),
        " ",
        tag("span", "less likely", style=f"background:{token_colour(-1, 1.25)}"),
        f" ({h(found.get('method'))})",
        class_="legend highlighted",
    )
    body = join([tag("h3", "Prompts and their responses"), legend, *shown])
    return Section("attributions", "Attributions", body)


# --- data ---------------------------------------------------------------------------------


def data_section(report: Mapping[str, Any]) -> Section | None:
    """What the data checks found and did, and what the model trained on."""
    data = _mapping(report.get("data"))
    parts = [
        _quality_message(data),
        _warnings(data),
        _rows_table(data),
        _balance(data),
        _quality_table(data),
        _examples(data),
        _classes(data),
        _lengths(data, report),
        _packing(data),
        _conversations(data),
        _tokens(data, report),
        _groups(data),
    ]
    body = join(part for part in parts if part)
    return Section("data", "Data", body) if body else None


def _quality(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(data.get("quality"))


def _quality_message(data: Mapping[str, Any]) -> Markup:
    message = _quality(data).get("message")
    return tag("p", tag("strong", message)) if message else Markup("")


def split_rows(data: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """{split: {"in": n, "out": n}} from data.rows ({"train_in": n, ...}) or the quality
    report's rowsIn/rowsOut."""
    found: dict[str, dict[str, int]] = {}
    for key, count in _mapping(data.get("rows")).items():
        split, _, phase = str(key).rpartition("_")
        if split and phase in ("in", "out") and isinstance(count, int):
            found.setdefault(split, {})[phase] = count
    quality = _quality(data)
    for phase, key in (("in", "rowsIn"), ("out", "rowsOut")):
        for split, count in _mapping(quality.get(key)).items():
            if isinstance(count, int):
                found.setdefault(str(split), {}).setdefault(phase, count)
    return found


def _rows_table(data: Mapping[str, Any]) -> Markup:
    rows = []
    for split, counts in split_rows(data).items():
        before, after = counts.get("in"), counts.get("out")
        change = (
            fmt_count_change(before, after) if before is not None and after is not None else None
        )
        rows.append([split, before, after, change])
    if not rows:
        return Markup("")
    return table(["split", "rows in", "rows out", "change"], rows, class_="rows")


def _quality_table(data: Mapping[str, Any]) -> Markup:
    results = [r for r in _sequence(_quality(data).get("results")) if isinstance(r, Mapping)]
    if not results:
        return Markup("")
    rows = [_quality_row(result) for result in results]
    headers = ["rule", "split", "mode", "matched", "dropped", "flagged"]
    return join([tag("h3", "Quality rules"), table(headers, rows, class_="quality")])


def _quality_row(result: Mapping[str, Any]) -> Row:
    mode, matched = result.get("mode"), result.get("matched")
    dropped = matched if mode == "drop" else None
    flagged = matched if mode == "warn" else None
    cells = [result.get("rule"), result.get("split"), mode, matched, dropped, flagged]
    return Row(cells, "" if matched else "quiet")


def _examples(data: Mapping[str, Any]) -> Markup:
    """A few of the rows each rule matched, as they are in their file (escaped), and which
    file that is."""
    results = map(_mapping, _sequence(_quality(data).get("results")))
    parts = [part for part in map(_rule_examples, results) if part]
    return join([tag("h3", "Example rows"), *parts]) if parts else Markup("")


def _rule_examples(result: Mapping[str, Any]) -> Markup:
    examples = [e for e in _sequence(result.get("examples")) if isinstance(e, Mapping)]
    if not examples:
        return Markup("")
    matched = fmt_number(result.get("matched") or 0)
    title = f"{result.get('rule')} \u00b7 {result.get('split')}: {len(examples):,} of {matched}"
    rows = [[e.get("row"), e.get("label"), TextCell(e.get("text") or "")] for e in examples]
    headers = ["row (from 0)", "label", "text"]
    if any("file" in e for e in examples):  # reports before the file was recorded lack it
        rows = [[e.get("file"), *row] for e, row in zip(examples, rows, strict=True)]
        headers = ["file", *headers]
    return join([tag("h4", title), table(headers, rows, class_="examples")])


BALANCE_LINES = {
    "imbalanceRatio": "Class imbalance ratio (largest class to smallest)",
    "majorityRate": "Majority-class rate in validation (the accuracy of always guessing it)",
}


def _warnings(data: Mapping[str, Any]) -> Markup:
    """What the data did not fail for but the reader must know (a class without rows)."""
    warnings = [str(w) for w in _sequence(data.get("warnings"))]
    label = tag("strong", "Warning: ")
    return join(tag("div", label, warning, class_="callout warning") for warning in warnings)


def _balance(data: Mapping[str, Any]) -> Markup:
    """Rows added and removed to balance the classes, the imbalance and the advice."""
    items = [tag("li", line) for line in _balance_lines(data)]
    parts = [tag("ul", *items, class_="balance")] if items else []
    recommendation = data.get("recommendation")
    if recommendation:
        advice = tag("strong", "Recommendation: ")
        parts.append(tag("div", advice, recommendation, class_="callout recommendation"))
    return join(parts)


def _balance_lines(data: Mapping[str, Any]) -> list[str]:
    lines = []
    for title, key in (("Rows added", "added"), ("Rows removed", "removed")):
        counts = {k: v for k, v in _mapping(data.get(key)).items() if isinstance(v, int) and v}
        if counts:
            lines.append(f"{title}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    for key, title in BALANCE_LINES.items():
        value = finite_number(data.get(key))
        if value and data.get("labels", True):  # a language model has no classes
            lines.append(f"{title}: {fmt_number(value)}")
    return lines


# --- data: classes, groups, lengths -----------------------------------------------------

SplitCounts = dict[str, dict[str, dict[str, int]]]
"""{split: {"in" | "out": {name: count}}}"""


def split_counts(value: object) -> SplitCounts:
    """The {split: {phase: {name: n}}} shape, anything else dropped."""
    found: SplitCounts = {}
    for split, phases in _mapping(value).items():
        for phase, counts in _mapping(phases).items():
            numbers = {str(k): v for k, v in _mapping(counts).items() if isinstance(v, int)}
            if phase in ("in", "out") and numbers:
                found.setdefault(str(split), {})[phase] = numbers
    return found


def class_counts(data: Mapping[str, Any]) -> SplitCounts:
    """data.classes, or else data.trainClassCounts (the training rows that went out)."""
    classes = split_counts(data.get("classes"))
    if classes:
        return classes
    return split_counts({"train": {"out": data.get("trainClassCounts")}})


def names_in_order(counts: SplitCounts, first: Sequence[object] = ()) -> list[str]:
    """`first` (e.g. the model's labels) that occur, then the other names as they come."""
    names: dict[str, None] = {}
    for phases in counts.values():
        for values in phases.values():
            names.update(dict.fromkeys(values))
    ordered = [str(name) for name in first if str(name) in names]
    return ordered + [name for name in names if name not in ordered]


def count_table(
    first_header: str, counts: SplitCounts, names: Sequence[str], **attributes: str
) -> Markup:
    """One row per name, one column per split and phase."""
    columns = [
        (split, phase)
        for split, phases in counts.items()
        for phase in ("in", "out")
        if phase in phases
    ]
    headers = [first_header, *(f"{split} {phase}" for split, phase in columns)]
    rows = [[name, *(counts[s][p].get(name, 0) for s, p in columns)] for name in names]
    return table(headers, rows, **attributes)


def _classes(data: Mapping[str, Any]) -> Markup:
    counts = class_counts(data)
    if not counts:
        return Markup("")
    names = names_in_order(counts, _sequence(data.get("labels")))
    parts = [
        tag("h3", "Classes"),
        class_chart(counts, names),
        count_table("class", counts, names, class_="classes"),
    ]
    return join(parts)


def class_chart(counts: SplitCounts, names: Sequence[str]) -> Markup:
    """Horizontal bars per class, one panel per split, rows in beside rows out."""
    shown = _largest(counts, names)
    more = f" ({len(shown)} largest of {len(names):,})" if len(shown) < len(names) else ""
    height = 1.3 + 0.32 * len(shown) * (2 if any(len(p) == 2 for p in counts.values()) else 1)

    def draw(figure: Figure) -> None:
        axes = figure.subplots(1, len(counts), sharey=True, squeeze=False)[0]
        for ax, (split, phases) in zip(axes, counts.items(), strict=True):
            _class_bars(ax, phases, shown)
            ax.set(title=chart_text(split), xlabel="rows")
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(range(len(shown)), [chart_text(n) for n in shown])
        axes[0].invert_yaxis()
        axes[-1].legend(loc="lower right")
        figure.suptitle(f"Rows per class{more}", fontsize=10, fontweight="bold")

    return chart("chart-classes", f"Rows per class{more}", draw, (7.6, min(height, 14)))


def _largest(counts: SplitCounts, names: Sequence[str]) -> list[str]:
    if len(names) <= MAX_CLASSES_CHARTED:
        return list(names)
    total = {n: sum(v.get(n, 0) for p in counts.values() for v in p.values()) for n in names}
    kept = set(sorted(names, key=lambda n: -total[n])[:MAX_CLASSES_CHARTED])
    return [name for name in names if name in kept]


def _class_bars(ax: Axes, phases: Mapping[str, Mapping[str, int]], names: Sequence[str]) -> None:
    both = len(phases) == 2
    width = 0.4 if both else 0.7
    for offset, (phase, colour) in zip(
        (-0.2, 0.2), (("in", IN_COLOUR), ("out", OUT_COLOUR)), strict=True
    ):
        if phase in phases:
            values = [phases[phase].get(name, 0) for name in names]
            positions = [i + (offset if both else 0) for i in range(len(names))]
            ax.barh(positions, values, height=width, color=colour, label=f"rows {phase}")


def _groups(data: Mapping[str, Any]) -> Markup:
    """Rows per value of each sensitive column, per split, in and out."""
    parts = []
    for column, value in _mapping(data.get("groups")).items():
        counts = split_counts(value)
        if counts:
            table_html = count_table(str(column), counts, names_in_order(counts), class_="groups")
            parts.append(join([tag("h4", f"Sensitive column {column}"), table_html]))
    return join([tag("h3", "Groups"), *parts]) if parts else Markup("")


LENGTH_STATS = ("count", "min", "mean", "p50", "p90", "p99", "max", "atMaxLength")
"""The length summary's columns; atMaxLength counts the rows cut to data.maxLength (or exactly
that long)."""


def _lengths(data: Mapping[str, Any], report: Mapping[str, Any]) -> Markup:
    """Text lengths in tokens per split: a histogram and the summary numbers."""
    lengths = {
        str(s): v for s, v in _mapping(data.get("lengths")).items() if isinstance(v, Mapping)
    }
    if not lengths:
        return Markup("")
    rows = [[split, *(stats.get(key) for key in LENGTH_STATS)] for split, stats in lengths.items()]
    histograms = {s: hist for s, stats in lengths.items() if (hist := histogram(stats))}
    max_length = finite_number(
        _mapping(_mapping(report.get("config")).get("data")).get("maxLength")
    )
    parts = [tag("h3", "Lengths in tokens")]
    if histograms:
        parts.append(length_chart(histograms, max_length))
    parts.append(table(["split", *LENGTH_STATS], rows, class_="lengths"))
    return join(parts)


def _packing(data: Mapping[str, Any]) -> Markup:
    """data.packing: how many sequences the training rows became and the padding it saved."""
    packing = _mapping(data.get("packing"))
    keys = ("rows", "sequences", "fill", "paddingBefore", "paddingAfter")
    numbers = [n for key in keys if (n := finite_number(packing.get(key))) is not None]
    if len(numbers) < len(keys):
        return Markup("")
    rows, sequences, fill, before, after = numbers
    return tag(
        "p",
        f"Packing: {rows:,.0f} training rows packed into {sequences:,.0f} sequences "
        f"({fill:.1%} full); padding per batch {before:.1%} unpacked, {after:.1%} packed.",
        class_="packing",
    )


_CONVERSATION_FIGURES = ("rows", "messages", "trainedMessages", "assistantTokenShare")
_CONVERSATION_HEADERS = (
    "split",
    "conversations",
    "messages",
    "turns",
    "assistant messages trained",
    "tokens in the loss",
)


def _conversations(data: Mapping[str, Any]) -> Markup:
    """data.messagesColumn: each split's conversations and messages, and the share of its
    tokens the loss counts (the assistant's)."""
    conversations = _mapping(data.get("conversations"))
    rows = [_conversation_row(split, _mapping(f)) for split, f in conversations.items()]
    shown = [row for row in rows if row is not None]
    return table(_CONVERSATION_HEADERS, shown, class_="conversations") if shown else Markup("")


def _conversation_row(split: str, figures: Mapping[str, Any]) -> list[object] | None:
    numbers = [
        n for key in _CONVERSATION_FIGURES if (n := finite_number(figures.get(key))) is not None
    ]
    if len(numbers) < len(_CONVERSATION_FIGURES):
        return None
    rows, messages, trained, share = numbers
    turns = finite_number(figures.get("turns"))  # reports before turns were counted lack it
    counts = [None if n is None else f"{n:,.0f}" for n in (rows, messages, turns, trained)]
    return [split, *counts, f"{share:.1%}"]


_TOKEN_SIDES = (("promptTokens", "prompt"), ("responseTokens", "response"))
_TOKEN_FIGURES = (
    "tokensPerEpoch",
    "lossTokensPerEpoch",
    "responsesCut",
    "responseTokensCut",
)
_TOKEN_HEADERS = (
    "split",
    "rows",
    *(f"{side} {stat}" for _, side in _TOKEN_SIDES for stat in ("p50", "p95", "max")),
    "tokens per epoch",
    "in the loss",
    "responses cut",
    "response tokens cut",
)


def _tokens(data: Mapping[str, Any], report: Mapping[str, Any]) -> Markup:
    """causal-lm: each split's prompt and response tokens, what an epoch reads and the loss
    counts, the responses data.maxLength cuts, and the run's totals."""
    tokens = _mapping(data.get("tokens"))
    splits = {str(s): _mapping(f) for s, f in _mapping(tokens.get("splits")).items()}
    rows = [[split, *_token_cells(figures)] for split, figures in splits.items()]
    if not rows:
        return Markup("")
    max_length = finite_number(
        _mapping(_mapping(report.get("config")).get("data")).get("maxLength")
    )
    parts = [tag("h3", "Tokens")]
    histograms = {
        (split, side): hist
        for split, figures in splits.items()
        for key, side in _TOKEN_SIDES
        if (hist := histogram(_mapping(figures.get(key))))
    }
    if histograms:
        parts.append(token_chart(histograms, max_length))
    parts.append(table(_TOKEN_HEADERS, rows, class_="tokens"))
    parts.append(_run_tokens(tokens))
    return join(parts)


def _token_cells(figures: Mapping[str, Any]) -> list[object]:
    sides = [_mapping(figures.get(key)) for key, _ in _TOKEN_SIDES]
    percentiles = [side.get(stat) for side in sides for stat in ("p50", "p95", "max")]
    return [figures.get("rows"), *percentiles, *(figures.get(key) for key in _TOKEN_FIGURES)]


def _run_tokens(tokens: Mapping[str, Any]) -> Markup:
    """The run's training tokens: what GPU-hours grow with and a managed API bills."""
    numbers = [finite_number(tokens.get(k)) for k in ("tokensPerRun", "lossTokensPerRun")]
    epochs = finite_number(tokens.get("epochs"))
    if None in numbers or epochs is None:
        return Markup("")
    read, in_loss = (n or 0.0 for n in numbers)
    at_most = "at most " if tokens.get("upperBound") else ""
    bound = " (training.maxSteps may stop it sooner)" if at_most else ""
    return tag(
        "p",
        f"Over the run: {at_most}{read:,.0f} training tokens read, {in_loss:,.0f} of them in "
        f"the loss, over {epochs:,.0f} epochs{bound}. GPU-hours grow with the tokens read; a "
        "managed fine-tuning API bills them.",
        class_="token-totals",
    )


def token_chart(
    histograms: Mapping[tuple[str, str], tuple[list[float], list[float]]],
    max_length: float | None,
) -> Markup:
    """Prompt and response tokens per row: one panel each, a line per split, with
    data.maxLength marked."""
    sides = [side for _, side in _TOKEN_SIDES if any(s == side for _, s in histograms)]

    def draw(figure: Figure) -> None:
        axes = figure.subplots(1, len(sides), squeeze=False)[0]
        for ax, side in zip(axes, sides, strict=True):
            for (split, shown), (edges, counts) in histograms.items():
                if shown == side:
                    total = sum(counts) or 1
                    shares = [c / total for c in counts]
                    ax.stairs(shares, edges, label=chart_text(split), linewidth=1.8)
            if max_length is not None:
                ax.axvline(max_length, color="#dc2626", linestyle="--", linewidth=1)
            ax.set(title=f"{side} tokens", xlabel="tokens", ylabel="share of rows")
            ax.legend()

    return chart("chart-tokens", "Prompt and response tokens per row", draw, (7.6, 3.0))


def histogram(stats: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """(edges, counts) when the histogram is well formed (k + 1 edges for k counts)."""
    hist = _mapping(stats.get("histogram"))
    edges = [finite_number(e) for e in _sequence(hist.get("edges"))]
    counts = [finite_number(c) for c in _sequence(hist.get("counts"))]
    if not counts or len(edges) != len(counts) + 1 or None in edges or None in counts:
        return None
    return [e for e in edges if e is not None], [c for c in counts if c is not None]


def length_chart(
    histograms: Mapping[str, tuple[list[float], list[float]]], max_length: float | None
) -> Markup:
    """Each split's share of rows per length bin, with data.maxLength marked."""

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        for split, (edges, counts) in histograms.items():
            total = sum(counts) or 1
            shares = [c / total for c in counts]
            ax.stairs(
                shares, edges, label=chart_text(split), linewidth=1.8
            )  # outlines: no muddy overlap
        if max_length is not None:
            ax.axvline(
                max_length,
                color="#dc2626",
                linestyle="--",
                linewidth=1,
                label=f"maxLength {fmt_number(max_length)}",
            )
        ax.set(title="Text length in tokens", xlabel="tokens", ylabel="share of rows")
        ax.legend()

    return chart("chart-lengths", "Text length in tokens per split", draw, (7.6, 3.0))


# --- freezing and the range test ---------------------------------------------------------


def freezing_section(report: Mapping[str, Any]) -> Section | None:
    """What trained in each epoch, at which peak learning rates, and each layer group's
    gradient norm over the steps, with the steps where the schedule changed marked."""
    log = _freezing_log(report)
    norms = layer_norm_series(_sequence(_mapping(report.get("curves")).get("layerGradNorms")))
    if not log and not norms:
        return None
    parts = []
    if norms:
        parts.append(grad_norm_chart(norms, schedule_changes(log)))
    if log:
        partial = any(_sequence(entry.get("partial")) for entry in log)
        headers = ["epoch", "from step", "trains (peak learning rate)", "frozen"]
        rows = [_freezing_row(entry, partial) for entry in log]
        columns = headers + (["partly frozen"] if partial else [])
        parts.append(table(columns, rows, class_="freezing"))
    return Section("freezing", "Freezing schedule", join(parts))


def layer_norm_series(entries: Sequence[Any]) -> dict[str, list[tuple[float, float]]]:
    """[[step, {group: norm}], ...] as one (step, norm) series per layer group."""
    series: dict[str, list[tuple[float, float]]] = {}
    for entry in entries:
        if not (isinstance(entry, list | tuple) and len(entry) == 2):
            continue
        step = finite_number(entry[0])
        for group, value in _mapping(entry[1]).items():
            norm = finite_number(value)
            if step is not None and norm is not None:
                series.setdefault(str(group), []).append((step, norm))
    return series


def schedule_changes(log: Sequence[Mapping[str, Any]]) -> list[float]:
    """The steps after the first where the set of trained layer groups changed."""
    changes, before = [], None
    for entry in log:
        trainable = tuple(str(g) for g in _sequence(entry.get("trainable")))
        step = finite_number(entry.get("step"))
        if before is not None and trainable != before and step is not None:
            changes.append(step)
        before = trainable
    return changes


def group_line_styles(count: int) -> list[tuple[str, str]]:
    """A (colour, line style) pair for each of `count` layer groups, all different for up to
    40 groups: each colour solid, then each colour dashed, and so on."""
    colours, styles = len(GROUP_COLOURS), len(GROUP_LINE_STYLES)
    return [
        (GROUP_COLOURS[i % colours], GROUP_LINE_STYLES[i // colours % styles]) for i in range(count)
    ]


def grad_norm_chart(norms: Mapping[str, list[tuple[float, float]]], changes: list[float]) -> Markup:
    """One line per layer group, in the model's order (the order the trainer records the
    groups in: embeddings first, head last), so the legend reads from input to output."""

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        styles = group_line_styles(len(norms))
        for (group, points), (colour, style) in zip(norms.items(), styles, strict=True):
            _plot(ax, points, label=chart_text(group), color=colour, linestyle=style, linewidth=1.1)
        _mark_changes(ax, changes)
        _steps_axis(ax)
        ax.set(
            title="Gradient norm per layer group", xlabel="step", ylabel="norm (before clipping)"
        )
        columns = math.ceil(len(norms) / LEGEND_ROWS) or 1
        figure.legend(loc="outside right upper", fontsize=7, ncols=columns)

    title = "Gradient norm of each layer group over steps, with the freezing schedule's changes"
    return chart("chart-grad-norms", title, draw, (6.4, 3.3))


def _freezing_row(entry: Mapping[str, Any], partial: bool) -> list[object]:
    rates = _mapping(entry.get("learningRates"))
    trains = ", ".join(
        f"{group} ({fmt_number(rates[group])})"
        if finite_number(rates.get(group)) is not None
        else str(group)
        for group in _sequence(entry.get("trainable"))
    )
    frozen = ", ".join(str(g) for g in _sequence(entry.get("frozen"))) or "nothing"
    row: list[object] = [entry.get("epoch"), entry.get("step"), trains, frozen]
    if partial:
        row.append(", ".join(str(g) for g in _sequence(entry.get("partial"))))
    return row


def range_test_section(report: Mapping[str, Any]) -> Section | None:
    """The learning-rate range test: smoothed loss against the rate, the suggestion marked."""
    test = _mapping(report.get("learningRateRangeTest"))
    rates, losses = _sequence(test.get("learningRates")), _sequence(test.get("losses"))
    points = [p for p in _pairs(list(zip(rates, losses, strict=False))) if p[0] > 0]
    if not points:
        return None
    suggestion = finite_number(test.get("suggestion"))
    finder = _mapping(
        _mapping(_mapping(report.get("config")).get("training")).get("findLearningRate")
    )
    body = [range_test_chart(points, suggestion)]
    if suggestion is not None:
        used = (
            "training used it"
            if finder.get("apply", True)
            else "recorded only (findLearningRate.apply is false)"
        )
        body.append(tag("p", f"Suggested learning rate {fmt_number(suggestion)}: {used}."))
    return Section("range-test", "Learning-rate range test", join(body))


def range_test_chart(points: list[tuple[float, float]], suggestion: float | None) -> Markup:
    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        _plot(ax, points, label="smoothed loss", linewidth=1.4)
        if suggestion is not None and suggestion > 0:
            ax.axvline(
                suggestion,
                color="#dc2626",
                linestyle="--",
                linewidth=1,
                label=f"suggested {fmt_number(suggestion)}",
            )
        ax.set_xscale("log")
        number_ticks(ax.xaxis)
        ax.xaxis.set_minor_formatter(NullFormatter())  # plain labels: mathtext is slow
        ax.set(title="Learning-rate range test", xlabel="learning rate (log scale)", ylabel="loss")
        ax.legend()

    return chart(
        "chart-range-test", "Loss against learning rate in the range test", draw, (6.4, 3.2)
    )


# --- versions, artifacts, config ---------------------------------------------------------


def run_section(report: Mapping[str, Any]) -> Section | None:
    """Library versions, where the outputs are, and the whole config (folded)."""
    parts = []
    versions = _mapping(report.get("versions"))
    if versions:
        parts += [
            tag("h3", "Versions"),
            table(
                ["package", "version"],
                [[k, str(v)] for k, v in versions.items()],
                class_="versions",
            ),
        ]
    artifacts = {k: v for k, v in _mapping(report.get("artifacts")).items() if v}
    if artifacts:
        parts += [
            tag("h3", "Artifacts"),
            table(
                ["artifact", "path"],
                [[k, str(v)] for k, v in artifacts.items()],
                class_="artifacts",
            ),
        ]
    config = report.get("config")
    if config:
        text = json.dumps(config, indent=2, ensure_ascii=False, default=str)
        parts.append(tag("details", tag("summary", "Config"), tag("pre", text), class_="config"))
    return Section("run", "Versions and config", join(parts)) if parts else None
