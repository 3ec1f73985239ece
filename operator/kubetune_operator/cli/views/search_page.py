"""search.html: the page a person opens to see what a hyperparameter search found.

A search's trials table (status.trials of a parent FineTuneJob, or OUTPUT/search.json of
`kubetune run`) is a list of numbers nobody reads as a list: which trial won, whether the
search was still improving, which parameter mattered and where in its range the good trials
lie. `render_search_html` draws it as one page from the trials and the search spec alone, so
`kubetune run` rewrites it after every trial and `kubetune status NAME --html` draws the
same page from a cluster's parent: the trials table with the best trial marked, the objective
over trial number with the best-so-far line, one slice plot per parameter (a log axis for a
log-scaled range, categories for choices) and Optuna's fANOVA importance.

Like the run's report.html, the page must open wherever a folder can be browsed, offline and
from file://, so it is self-contained: an inline stylesheet that matches report.html's, charts
as inline SVG drawn here (the operator package has no matplotlib), no JavaScript, nothing
fetched. Every value from the data (parameter values, notes, the job's name) reaches the page
through `h()`, which escapes it; the Content-Security-Policy forbids scripts as a second guard.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kubetune_operator.api.v1alpha1 import FineTuneJobSpec, SearchParameter, TrialStatus
from kubetune_operator.search import (
    FINISHED_STATES,
    SearchError,
    TrialLike,
    best_trial,
    objective_metric,
    search_outcome,
    study_from_trials,
    total_trials,
)
from kubetune_trainer.formatting import fmt_number, value_text
from kubetune_trainer.report.page import (
    BASE_STYLE,
    Markup,
    Section,
    badge,
    document,
    facts,
    join,
    tag,
)

SEARCH_HTML: Final = "search.html"
MIN_TRIALS_FOR_IMPORTANCE: Final = 3
"""fANOVA fits a forest on the completed trials; with fewer it says nothing useful."""
MAX_LABEL_CHARS: Final = 32
"""Chart labels are clipped to this many characters (the tables and tooltips show them whole)."""

COMPLETE_COLOUR, PRUNED_COLOUR, FAILED_COLOUR = "#2563eb", "#ea580c", "#dc2626"
BEST_COLOUR, GRID_COLOUR, AXIS_COLOUR, MUTED_COLOUR = "#16a34a", "#e5e7eb", "#9ca3af", "#6b7280"
STATE_TONE: Final = {
    "Complete": "good",
    "Pruned": "warn",
    "Failed": "bad",
    "Stopped": "warn",
    "Running": "neutral",
    "Pending": "neutral",
}
OUTCOME_TONE: Final = {"Succeeded": "good", "Failed": "bad", "Running": "neutral"}

STYLE: Final = (
    BASE_STYLE
    + """
td.name{white-space:nowrap}
td.note{max-width:420px;word-break:break-word;color:var(--muted)}
tr.failed td{color:#991b1b}
figcaption{font-weight:600;font-size:13px;margin:0 0 4px}
svg.chart{max-width:100%;height:auto;display:block;font-size:11px}
.legend{list-style:none;padding:0;margin:4px 0 0;font-size:12px;color:var(--muted)}
.legend li{display:inline-block;margin-right:14px}
.k-complete{color:#2563eb}.k-pruned{color:#ea580c}.k-failed{color:#dc2626}.k-best{color:#16a34a}
"""
)


# --- safe HTML ----------------------------------------------------------------------------


def clipped(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "\u2026"


# --- importance ---------------------------------------------------------------------------


def parameter_importance(
    spec: FineTuneJobSpec, trials: Sequence[TrialLike]
) -> tuple[dict[str, float] | None, str]:
    """Optuna's fANOVA importance of each parameter for the objective, or None and why not."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    completed = sum(t.state == "Complete" and t.objective is not None for t in _trials(trials))
    if completed < MIN_TRIALS_FOR_IMPORTANCE:
        return None, f"needs {MIN_TRIALS_FOR_IMPORTANCE} completed trials ({completed} completed)"
    assert spec.search is not None
    evaluator = FanovaImportanceEvaluator(seed=spec.search.seed)
    try:
        study = study_from_trials(spec, trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importance = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as error:
        return None, f"not computed: {_first_line(error)}"
    return {name: float(value) for name, value in importance.items()}, "fANOVA"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- the trials as the charts see them ----------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """One trial in a chart: its state, and the value drawn (None: on the bottom edge)."""

    number: int
    state: str
    value: float | None


def _trials(trials: Sequence[TrialLike]) -> list[TrialStatus]:
    records = [t if isinstance(t, TrialStatus) else _validated(t) for t in trials]
    return sorted(records, key=lambda t: t.number)


def _validated(raw: Mapping[str, Any]) -> TrialStatus:
    try:
        return TrialStatus.model_validate(dict(raw))
    except ValueError as error:
        raise SearchError(f"status.trials: {_first_line(error)}") from None


def _step_key(step: str) -> float:
    try:
        return float(step)
    except ValueError:
        return math.inf


def drawn_value(trial: TrialStatus) -> float | None:
    """What a chart plots: a complete trial's objective, a pruned one's last intermediate
    value (as Optuna records a pruned trial), None for a failed trial."""
    if trial.state == "Complete":
        return _finite(trial.objective)
    if trial.state == "Pruned" and trial.intermediate:
        return _finite(trial.intermediate[max(trial.intermediate, key=_step_key)])
    return None


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def chart_marks(trials: Sequence[TrialStatus]) -> list[Mark]:
    """The finished trials, each with the value it is drawn at (running and stopped ones are
    not drawn); a complete trial without an objective counts as failed, as the study counts it."""
    marks = []
    for trial in trials:
        if trial.state not in FINISHED_STATES or trial.state == "Stopped":
            continue
        value = drawn_value(trial)
        state = "Failed" if trial.state == "Complete" and value is None else trial.state
        marks.append(Mark(trial.number, state, value))
    return marks


def best_so_far(trials: Sequence[TrialStatus], maximize: bool) -> list[tuple[int, float]]:
    """(trial number, best objective of the complete trials up to it), from the first one."""
    points: list[tuple[int, float]] = []
    best: float | None = None
    for trial in trials:
        value = drawn_value(trial) if trial.state == "Complete" else None
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        if best is not None:
            points.append((trial.number, best))
    return points


# --- scales and ticks ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Data values to pixels along one axis, linear or log."""

    low: float
    high: float
    start: float
    end: float
    log: bool = False
    whole: bool = False
    """Ticks at whole numbers only (trial numbers: there is no trial 0.5)."""

    def __call__(self, value: float) -> float:
        low, high, at = self.low, self.high, value
        if self.log:
            low, high, at = math.log10(low), math.log10(high), math.log10(value)
        fraction = 0.5 if high == low else (at - low) / (high - low)
        return self.start + fraction * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.whole:
            return whole_ticks(self.low, self.high)
        return log_ticks(self.low, self.high) if self.log else linear_ticks(self.low, self.high)

    def label(self, value: float) -> str:
        """A tick's text: a whole number as it is (trial 1000, not 1,000), else 4 digits."""
        return str(round(value)) if self.whole else fmt_number(value)


def linear_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) from low to high."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def whole_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Whole numbers in [low, high], 1, 2 or 5 times a power of ten apart and never closer
    than 1: trial 0 alone for one trial, 0, 1, 2 for three, 0, 10, ... 40 for fifty."""
    first, last = math.ceil(low - 1e-9), math.floor(high + 1e-9)
    if last < first:
        return []
    raw = max((last - first) / count, 1.0)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    start = math.ceil(first / step) * step
    return [float(tick) for tick in range(start, last + 1, step)]


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten in [low, high]; 1-2-5 steps within a narrower range; else the ends."""
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [
            m * 10.0**k
            for k in decades
            for m in mantissas
            if low * (1 - 1e-9) <= m * 10.0**k <= high * (1 + 1e-9)
        ]
        if len(ticks) >= 2:
            return ticks
    return [low, high]


def padded(values: Sequence[float], log: bool = False) -> tuple[float, float]:
    """A data range with a margin, so no point sits on the frame."""
    low, high = min(values), max(values)
    if log:
        factor = (high / low) ** 0.06 if high > low else 1.5
        return low / factor, high * factor
    margin = (high - low) * 0.08 if high > low else (abs(low) * 0.1 or 1.0)
    return low - margin, high + margin


# --- SVG charts ---------------------------------------------------------------------------


WIDTH, HEIGHT = 520, 300
LEFT, RIGHT, TOP, BOTTOM = 66, WIDTH - 16, 12, HEIGHT - 46


@dataclass(frozen=True)
class Frame:
    """A chart's x axis (a scale, or categories) and y scale."""

    y: Scale
    x: Scale | None = None
    categories: tuple[str, ...] = ()

    def category_x(self, index: int) -> float:
        band = (RIGHT - LEFT) / max(len(self.categories), 1)
        return LEFT + (index + 0.5) * band


def svg_chart(chart_id: str, title: str, body: Sequence[Markup], height: int = HEIGHT) -> Markup:
    """An inline <svg> of the given elements, titled for screen readers."""
    return tag(
        "svg",
        tag("title", title),
        *body,
        class_="chart",
        id=chart_id,
        role="img",
        aria_label=title,
        viewBox=f"0 0 {WIDTH} {height}",
        width=WIDTH,
        height=height,
        xmlns="http://www.w3.org/2000/svg",
    )


def figure(caption: str, svg: Markup, *after: Markup) -> Markup:
    return tag("figure", tag("figcaption", caption), svg, *after)


def axes(frame: Frame, x_label: str, y_label: str) -> list[Markup]:
    """Grid lines, tick labels, the frame and the axis titles."""
    parts = [_y_tick(frame.y, value) for value in frame.y.ticks()]
    if frame.x is not None:
        parts += [_x_tick(frame.x(value), frame.x.label(value)) for value in frame.x.ticks()]
    else:
        band = (RIGHT - LEFT) / max(len(frame.categories), 1)
        limit = max(int(band / 6.5), 3)
        parts += [
            _x_tick(frame.category_x(i), clipped(name, limit), name)
            for i, name in enumerate(frame.categories)
        ]
    parts += [
        _line(LEFT, BOTTOM, RIGHT, BOTTOM, AXIS_COLOUR),
        _line(LEFT, TOP, LEFT, BOTTOM, AXIS_COLOUR),
        _text((LEFT + RIGHT) / 2, HEIGHT - 8, clipped(x_label, 60), anchor="middle"),
        tag(
            "text",
            clipped(y_label, 40),
            x=14,
            y=(TOP + BOTTOM) / 2,
            transform=f"rotate(-90 14 {(TOP + BOTTOM) / 2:.2f})",
            text_anchor="middle",
            fill=MUTED_COLOUR,
        ),
    ]
    return parts


def _y_tick(scale: Scale, value: float) -> Markup:
    y = scale(value)
    return join(
        [
            _line(LEFT, y, RIGHT, y, GRID_COLOUR),
            _text(LEFT - 6, y + 4, fmt_number(value), anchor="end"),
        ]
    )


def _x_tick(x: float, label: str, full: str | None = None) -> Markup:
    text = _text(x, BOTTOM + 16, label, anchor="middle", tooltip=full)
    return join([_line(x, TOP, x, BOTTOM, GRID_COLOUR), text])


def _line(x1: float, y1: float, x2: float, y2: float, colour: str) -> Markup:
    return tag("line", x1=float(x1), y1=float(y1), x2=float(x2), y2=float(y2), stroke=colour)


def _text(x: float, y: float, text: str, anchor: str, tooltip: str | None = None) -> Markup:
    children = [tag("title", tooltip)] if tooltip and tooltip != text else []
    return tag(
        "text", *children, text, x=float(x), y=float(y), text_anchor=anchor, fill=MUTED_COLOUR
    )


def marker(mark: Mark, x: float, y: float, tooltip: str) -> Markup:
    """A complete trial as a filled circle, a pruned one as a hollow triangle, a failed one
    as a cross on the bottom edge; the tooltip names the trial."""
    title = tag("title", tooltip)
    if mark.state == "Complete":
        return tag(
            "circle",
            title,
            class_="point complete",
            cx=x,
            cy=y,
            r=4.5,
            fill=COMPLETE_COLOUR,
            fill_opacity="0.85",
        )
    if mark.state == "Pruned":
        path = f"M{x:.2f},{y - 5:.2f}L{x + 4.5:.2f},{y + 3.5:.2f}L{x - 4.5:.2f},{y + 3.5:.2f}Z"
        return tag(
            "path",
            title,
            class_="point pruned",
            d=path,
            fill="#fff",
            stroke=PRUNED_COLOUR,
            stroke_width="1.6",
        )
    down = f"M{x - 4:.2f},{y - 4:.2f}L{x + 4:.2f},{y + 4:.2f}"
    up = f"M{x - 4:.2f},{y + 4:.2f}L{x + 4:.2f},{y - 4:.2f}"
    path = down + up
    return tag("path", title, class_="point failed", d=path, stroke=FAILED_COLOUR, stroke_width="2")


def _tooltip(mark: Mark, metric: str, extra: str = "") -> str:
    value = value_text(mark.value)
    shown = {
        "Complete": f"{metric} {value}",
        "Pruned": f"pruned, last {metric} {value}",
    }.get(mark.state, "failed: no objective")
    return f"trial {mark.number}{extra}: {shown}"


def _y_of(frame: Frame, mark: Mark) -> float:
    return BOTTOM if mark.value is None else frame.y(mark.value)


def _best_ring(x: float, y: float) -> Markup:
    return tag(
        "circle",
        class_="best-mark",
        cx=x,
        cy=y,
        r=8.5,
        fill="none",
        stroke=BEST_COLOUR,
        stroke_width="2",
    )


def _y_scale(values: Sequence[float]) -> Scale:
    low, high = padded(values)
    return Scale(low, high, BOTTOM, TOP)


def objective_chart(
    trials: Sequence[TrialStatus], metric: str, maximize: bool, best: int | None
) -> Markup | None:
    """The objective of every finished trial over trial number, and the best-so-far line."""
    marks = chart_marks(trials)
    values = [m.value for m in marks if m.value is not None]
    if not values:
        return None
    last = max(t.number for t in trials)
    frame = Frame(_y_scale(values), Scale(-0.5, last + 0.5, LEFT, RIGHT, whole=True))
    assert frame.x is not None
    body = axes(frame, "trial", metric)
    line = best_so_far(trials, maximize)
    if line:
        body.append(_best_so_far_line(frame, line, last))
    for mark in marks:
        x, y = frame.x(mark.number), _y_of(frame, mark)
        body.append(marker(mark, x, y, _tooltip(mark, metric)))
        if mark.number == best:
            body.append(_best_ring(x, y))
    title = f"{metric} of each trial, and the best so far"
    return figure(
        f"Objective over trials ({'higher' if maximize else 'lower'} is better)",
        svg_chart("chart-objective", title, body),
        legend(best_line=True),
    )


def _best_so_far_line(frame: Frame, line: list[tuple[int, float]], last: int) -> Markup:
    """A step line: the best value holds until a trial beats it, out to the last trial."""
    assert frame.x is not None
    points: list[str] = []
    for index, (number, value) in enumerate(line):
        if index and value != line[index - 1][1]:
            points.append(f"{frame.x(number):.2f},{frame.y(line[index - 1][1]):.2f}")
        points.append(f"{frame.x(number):.2f},{frame.y(value):.2f}")
    points.append(f"{frame.x(last):.2f},{frame.y(line[-1][1]):.2f}")
    return tag(
        "polyline",
        class_="best-so-far",
        points=" ".join(points),
        fill="none",
        stroke=BEST_COLOUR,
        stroke_width="2",
    )


def legend(best_line: bool) -> Markup:
    items = [
        ("k-complete", "\u25cf", "complete"),
        ("k-pruned", "\u25b3", "pruned (last reported value)"),
        ("k-failed", "\u2715", "failed (no objective; on the bottom edge)"),
        ("k-best", "\u25ef", "best trial"),
    ]
    if best_line:
        items.append(("k-best", "\u2500", "best so far"))
    return tag(
        "ul",
        *(tag("li", tag("span", symbol, class_=css), " ", text) for css, symbol, text in items),
        class_="legend",
    )


def slice_chart(
    index: int,
    parameter: SearchParameter,
    trials: Sequence[TrialStatus],
    metric: str,
    best: int | None,
) -> Markup:
    """The objective against one parameter's value, one mark per finished trial."""
    placed = _placed(parameter, trials)
    values = [m.value for m, _ in placed if m.value is not None]
    y = _y_scale(values or [0.0])
    categorical = parameter.type == "categorical"
    frame = _slice_frame(parameter, [raw for _, raw in placed], y)
    scale_note = " (log scale)" if parameter.log else ""
    body = axes(frame, f"{parameter.path}{scale_note}", metric)
    seen: dict[str, int] = {}
    for mark, raw in placed:
        if categorical:
            x = frame.category_x(frame.categories.index(raw)) + _spread(seen, raw)
        else:
            assert frame.x is not None
            x = frame.x(float(raw))
        y_pixel = _y_of(frame, mark)
        where = f" ({parameter.path}={value_text(raw)})"
        body.append(marker(mark, x, y_pixel, _tooltip(mark, metric, where)))
        if mark.number == best:
            body.append(_best_ring(x, y_pixel))
    title = f"{metric} against {parameter.path}"
    return figure(parameter.path, svg_chart(f"chart-slice-{index}", title, body))


def _placed(parameter: SearchParameter, trials: Sequence[TrialStatus]) -> list[tuple[Mark, Any]]:
    """The finished trials with a value for the parameter that its axis can show."""
    params = {t.number: t.params for t in trials}
    placed: list[tuple[Mark, Any]] = []
    for mark in chart_marks(trials):
        raw = params[mark.number].get(parameter.path)
        if parameter.type == "categorical":
            if raw is not None:
                placed.append((mark, str(raw)))
            continue
        number = _finite(raw)
        if number is not None and (number > 0 or not parameter.log):
            placed.append((mark, number))
    return placed


def _slice_frame(parameter: SearchParameter, raws: Sequence[Any], y: Scale) -> Frame:
    if parameter.type == "categorical":
        names = list(dict.fromkeys([*parameter.choices, *(str(raw) for raw in raws)]))
        return Frame(y, categories=tuple(names))
    bounds = [b for b in (parameter.min, parameter.max) if b is not None]
    domain = [float(v) for v in (*bounds, *parameter.values, *raws)]
    if parameter.log:
        domain = [v for v in domain if v > 0]
    low, high = padded(domain or [1.0], parameter.log)
    return Frame(y, Scale(low, high, LEFT, RIGHT, parameter.log))


def _spread(seen: dict[str, int], name: str) -> float:
    """Offsets for trials sharing a category (0, +6, -6, +12, ...), so none hides another."""
    count = seen.get(name, 0)
    seen[name] = count + 1
    side = 1 if count % 2 else -1
    return side * 6.0 * ((count + 1) // 2 % 6)


def importance_chart(importance: Mapping[str, float]) -> Markup:
    """Horizontal bars, the most important parameter first."""
    ranked = sorted(importance.items(), key=lambda item: -item[1])
    row, label_end, bar_start = 26, 236, 244
    height = 16 + row * len(ranked)
    longest = max(ranked[0][1], 1e-12)
    span = RIGHT - 60 - bar_start
    body: list[Markup] = []
    for i, (path, value) in enumerate(ranked):
        y = 8 + i * row
        width = max(span * value / longest, 1.0)
        body += [
            _text(label_end, y + 14, clipped(path), anchor="end", tooltip=path),
            tag(
                "rect",
                tag("title", f"{path}: {fmt_number(value)}"),
                class_="bar",
                x=float(bar_start),
                y=float(y + 3),
                width=float(width),
                height=16.0,
                fill=COMPLETE_COLOUR,
                rx="2",
            ),
            _text(bar_start + width + 6, y + 15, fmt_number(value), anchor="start"),
        ]
    return svg_chart("chart-importance", "Parameter importance (fANOVA)", body, height)


# --- the page -----------------------------------------------------------------------------


def render_search_html(
    job: str,
    spec: FineTuneJobSpec,
    trials: Sequence[TrialLike],
    notes: Mapping[str, str] | None = None,
) -> str:
    """The whole page of a search: `spec` is the parent's (with search), `trials` its
    status.trials (models or the API's dicts), `notes` a remark per trial number (e.g. why
    it failed). Raises SearchError when the spec has no search or the trials are malformed."""
    search = spec.search
    if search is None:
        raise SearchError("spec.search: this job is not a search (it has no search section)")
    records = _trials(trials)
    metric, direction = objective_metric(spec)
    best = best_trial(spec, records)
    best_number = None if best is None else best.number
    importance, importance_note = parameter_importance(spec, records)
    sections = [
        Section("trials", "Trials", trials_table(records, spec, best_number, notes or {})),
        Section(
            "objective",
            "Objective over trials",
            objective_chart(records, metric, direction == "maximize", best_number)
            or _note("No trial has reported an objective yet."),
        ),
        Section(
            "slices",
            "Objective by parameter",
            _slices(search.parameters, records, metric, best_number),
        ),
        Section("importance", "Parameter importance", _importance(importance, importance_note)),
    ]
    nav = tag("nav", *(tag("a", s.title, href=f"#{s.anchor}") for s in sections))
    main = tag("main", header(job, spec, records), nav, *(s.html() for s in sections))
    return document(f"{job} \u00b7 kubetune search", STYLE, main)


def write_search_html(
    path: Path,
    job: str,
    spec: FineTuneJobSpec,
    trials: Sequence[TrialLike],
    notes: Mapping[str, str] | None = None,
) -> Path:
    """Render the page into `path` atomically."""
    return write_page(path, render_search_html(job, spec, trials, notes))


def write_page(path: Path, page: str) -> Path:
    """Write through a temporary file and a rename: a reader never sees half a page."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)
    return path


def header(job: str, spec: FineTuneJobSpec, records: Sequence[TrialStatus]) -> Markup:
    """The job, where the search stands, the objective, the best trial and the counts."""
    search = spec.search
    assert search is not None
    outcome = search_outcome(spec, records)
    metric, direction = objective_metric(spec)
    best = best_trial(spec, records)
    counts = {state: sum(t.state == state for t in records) for state in STATE_TONE}
    items: list[tuple[object, object]] = [
        ("objective", f"{direction} {metric}"),
        (f"best {metric}", value_text(None if best is None else best.objective)),
        ("best trial", None if best is None else best.name),
        (
            "finished",
            f"{sum(counts[s] for s in FINISHED_STATES)} of {total_trials(search)}",
        ),
        ("algorithm", search.algorithm),
        *((state.lower(), n) for state, n in counts.items() if n),
    ]
    title = tag(
        "div",
        tag("h1", job),
        badge(outcome.phase.lower(), OUTCOME_TONE[outcome.phase]),
    )
    return tag(
        "header",
        title,
        tag("p", f"hyperparameter search \u00b7 {outcome.message}", class_="sub"),
        facts(items),
        _best_params(best.params if best else None),
    )


def _best_params(params: Mapping[str, Any] | None) -> Markup:
    if not params:
        return Markup("")
    rows = [tag("tr", tag("td", path), _cell(value)) for path, value in params.items()]
    head = tag("thead", tag("tr", tag("th", "parameter"), tag("th", "best trial's value")))
    return join([tag("h3", "Best trial"), tag("table", head, tag("tbody", *rows))])


def trials_table(
    records: Sequence[TrialStatus],
    spec: FineTuneJobSpec,
    best: int | None,
    notes: Mapping[str, str],
) -> Markup:
    """One row per trial: number (★ for the best), name, state, values, objective, note."""
    if not records:
        return _note("No trial has started yet.")
    assert spec.search is not None
    metric, _ = objective_metric(spec)
    declared = [p.path for p in spec.search.parameters]
    paths = list(dict.fromkeys([*declared, *(p for t in records for p in t.params)]))
    headers = ["#", "trial", "state", *paths, metric, "note"]
    head = tag("thead", tag("tr", *(tag("th", name) for name in headers)))
    rows = [_trial_row(t, paths, best, notes.get(str(t.number), "")) for t in records]
    return tag("table", head, tag("tbody", *rows), class_="trials")


def _trial_row(trial: TrialStatus, paths: Sequence[str], best: int | None, note: str) -> Markup:
    number = f"{trial.number} \u2605" if trial.number == best else str(trial.number)
    cells = [
        tag("td", number, class_="num"),
        tag("td", trial.name, class_="name"),
        tag("td", badge(trial.state, STATE_TONE[trial.state])),
        *(_cell(trial.params.get(path)) for path in paths),
        _cell(drawn_value(trial)),
        tag("td", note or _default_note(trial), class_="note"),
    ]
    css = (
        "best"
        if trial.number == best
        else {"Failed": "failed", "Pruned": "quiet", "Stopped": "quiet"}.get(trial.state, "")
    )
    return tag("tr", *cells, class_=css) if css else tag("tr", *cells)


def _default_note(trial: TrialStatus) -> str:
    if trial.state == "Pruned":
        return f"stopped after {len(trial.intermediate)} evaluations (value: the last one)"
    if trial.state == "Stopped":
        return "stopped unfinished: the search failed"
    return ""


def _cell(value: object) -> Markup:
    """A trial's value or objective in a table cell, as value_text shows it everywhere."""
    if _finite(value) is not None:
        return tag("td", value_text(value), class_="num")
    return tag("td", value_text(value))


def _slices(
    parameters: Sequence[SearchParameter],
    records: Sequence[TrialStatus],
    metric: str,
    best: int | None,
) -> Markup:
    if not any(m.value is not None for m in chart_marks(records)):
        return _note("The slice plots appear once a trial reports an objective.")
    charts = [slice_chart(i, p, records, metric, best) for i, p in enumerate(parameters)]
    return join([tag("div", *charts, class_="charts"), legend(best_line=False)])


def _importance(importance: Mapping[str, float] | None, note: str) -> Markup:
    if not importance:
        return _note(f"Parameter importance {note}.")
    explanation = tag(
        "p",
        "Optuna's fANOVA: the share of the objective's variance over the complete trials "
        "that each parameter explains (the shares add up to 1).",
        class_="sub",
    )
    return join([explanation, tag("figure", importance_chart(importance))])


def _note(text: str) -> Markup:
    return tag("p", text, class_="callout")
