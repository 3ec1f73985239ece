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
from file://, and it is drawn the same way: report.html's stylesheet, and charts that
matplotlib draws as inline SVG (kubetune_trainer.report.charts), no JavaScript, nothing
fetched. Only the CLI draws it, never the operator pod, so matplotlib is fine here: the
`report` extra installs it. Every value from the data (parameter values, notes, the job's
name) reaches the page through `h()`, which escapes it, or a chart through `chart_text`;
the Content-Security-Policy forbids scripts as a second guard.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

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
    validated_trial,
)
from kubetune_trainer.formatting import finite_number, first_line, fmt_number, value_text
from kubetune_trainer.report.charts import (
    PALETTE,
    Hover,
    chart,
    chart_text,
    horizontal_bars,
    number_ticks,
)
from kubetune_trainer.report.files import write_text_atomically
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

MIN_TRIALS_FOR_IMPORTANCE: Final = 3
"""fANOVA fits a forest on the completed trials; with fewer it says nothing useful."""
CHART_SIZE: Final = (5.6, 3.8)
"""Inches: report.html's curves' width (two side by side on a wide screen), with room for
the legend under the plot."""

COMPLETE_COLOUR, PRUNED_COLOUR, BEST_COLOUR, FAILED_COLOUR = (PALETTE[i] for i in (0, 1, 2, 4))
MARK_STYLES: Final[Mapping[str, Mapping[str, Any]]] = {
    "Complete": {"marker": "o", "markersize": 6, "color": COMPLETE_COLOUR, "alpha": 0.85},
    "Pruned": {
        "marker": "^",
        "markersize": 6.5,
        "markerfacecolor": "white",
        "markeredgecolor": PRUNED_COLOUR,
        "markeredgewidth": 1.4,
    },
    "Failed": {"marker": "x", "markersize": 6, "color": FAILED_COLOUR, "markeredgewidth": 1.8},
}
"""A complete trial is a filled circle, a pruned one a hollow triangle, a failed one a cross."""
MARK_LEGEND: Final = {
    "Complete": "complete",
    "Pruned": "pruned (last reported value)",
    "Failed": "failed (no objective; on the bottom edge)",
}
BEST_RING: Final[Mapping[str, Any]] = {
    "marker": "o",
    "markersize": 12,
    "markerfacecolor": "none",
    "markeredgecolor": BEST_COLOUR,
    "markeredgewidth": 1.8,
}
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
"""
)


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
        return None, f"not computed: {first_line(error)}"
    return {name: float(value) for name, value in importance.items()}, "fANOVA"


# --- the trials as the charts see them ----------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """One trial in a chart: its state, and the value drawn (None: on the bottom edge)."""

    number: int
    state: str
    value: float | None


def _trials(trials: Sequence[TrialLike]) -> list[TrialStatus]:
    records = [t if isinstance(t, TrialStatus) else validated_trial(t) for t in trials]
    return sorted(records, key=lambda t: t.number)


def _step_key(step: str) -> float:
    try:
        return float(step)
    except ValueError:
        return math.inf


def drawn_value(trial: TrialStatus) -> float | None:
    """What a chart plots: a complete trial's objective, a pruned one's last intermediate
    value (as Optuna records a pruned trial), None for a failed trial."""
    if trial.state == "Complete":
        return finite_number(trial.objective)
    if trial.state == "Pruned" and trial.intermediate:
        return finite_number(trial.intermediate[max(trial.intermediate, key=_step_key)])
    return None


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


# --- ticks --------------------------------------------------------------------------------


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


# --- charts -------------------------------------------------------------------------------


def _mark_hovers(
    placed: Sequence[tuple[Mark, Any]], metric: str, best: int | None, path: str = ""
) -> dict[str, Hover]:
    """Each mark's class and tooltip (with its value of `path`, on a slice), keyed by the
    gid it is drawn with; and the best trial's ring."""
    hovers = {
        f"trial-{mark.number}": Hover(
            f"point {mark.state.lower()}",
            _tooltip(mark, metric, f" ({path}={value_text(raw)})" if path else ""),
        )
        for mark, raw in placed
    }
    if best is not None:
        hovers["best-mark"] = Hover("best-mark", f"trial {best}: the best")
    return hovers


def _tooltip(mark: Mark, metric: str, extra: str = "") -> str:
    value = value_text(mark.value)
    shown = {
        "Complete": f"{metric} {value}",
        "Pruned": f"pruned, last {metric} {value}",
    }.get(mark.state, "failed: no objective")
    return f"trial {mark.number}{extra}: {shown}"


def _draw_marks(ax: Axes, placed: Sequence[tuple[Mark, float]], best: int | None) -> None:
    """A mark per trial at (x, its value), a failed one on the bottom edge, the best ringed;
    the legend names each state once."""
    named: set[str] = set()
    for mark, x in placed:
        on_edge = mark.value is None
        at = ([x], [0.0 if mark.value is None else mark.value])
        transform = ax.get_xaxis_transform() if on_edge else ax.transData
        label = MARK_LEGEND[mark.state] if mark.state not in named else "_nolegend_"
        named.add(mark.state)
        style = MARK_STYLES[mark.state]
        placing: dict[str, Any] = {
            "linestyle": "none",
            "transform": transform,
            "clip_on": not on_edge,
        }
        ax.plot(*at, gid=f"trial-{mark.number}", label=label, **placing, **style)
        if mark.number == best:
            ax.plot(*at, gid="best-mark", label="best trial", **placing, **BEST_RING)


def _label_axes(ax: Axes, metric: str, x_label: str, title: str) -> None:
    """The objective up the side, the title and x label, and the legend of the marks."""
    number_ticks(ax.yaxis)
    ax.set(title=title, xlabel=x_label, ylabel=chart_text(metric))
    ax.figure.legend(loc="outside lower center", ncols=3, fontsize=7)  # off the marks


def objective_chart(
    trials: Sequence[TrialStatus], metric: str, maximize: bool, best: int | None
) -> Markup | None:
    """The objective of every finished trial over trial number, and the best-so-far line."""
    marks = chart_marks(trials)
    if not any(m.value is not None for m in marks):
        return None
    last = max(t.number for t in trials)
    line = best_so_far(trials, maximize)
    placed = [(mark, float(mark.number)) for mark in marks]

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        if line:
            xs = [number for number, _ in line] + [last]
            ys = [value for _, value in line] + [line[-1][1]]
            ax.plot(
                xs,
                ys,
                drawstyle="steps-post",  # the best holds until a trial beats it
                color=BEST_COLOUR,
                linewidth=1.6,
                gid="best-so-far",
                label="best so far",
            )
        _draw_marks(ax, placed, best)
        ax.set_xlim(-0.5, last + 0.5)
        ax.xaxis.set_major_locator(FixedLocator(whole_ticks(-0.5, last + 0.5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda number, _: str(round(number))))
        direction = "higher" if maximize else "lower"
        _label_axes(ax, metric, "trial", f"Objective over trials ({direction} is better)")

    hovers = _mark_hovers(placed, metric, best)
    hovers["best-so-far"] = Hover("best-so-far", f"the best {metric} so far")
    title = f"{metric} of each trial, and the best so far"
    return chart("chart-objective", title, draw, CHART_SIZE, hovers)


def slice_chart(
    index: int,
    parameter: SearchParameter,
    trials: Sequence[TrialStatus],
    metric: str,
    best: int | None,
) -> Markup:
    """The objective against one parameter's value, one mark per finished trial."""
    placed = _placed(parameter, trials)
    categories = _categories(parameter, [raw for _, raw in placed])
    seen: dict[str, int] = {}
    at = [
        (mark, categories.index(raw) + _spread(seen, raw) if categories else float(raw))
        for mark, raw in placed
    ]
    scale_note = " (log scale)" if parameter.log else ""

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        _draw_marks(ax, at, best)
        if categories:
            ax.set_xticks(range(len(categories)), [chart_text(name) for name in categories])
            ax.set_xlim(-0.5, len(categories) - 0.5)
        else:
            _value_axis(ax, parameter, [raw for _, raw in placed])
        x_label = f"{chart_text(parameter.path)}{scale_note}"
        _label_axes(ax, metric, x_label, chart_text(parameter.path))

    hovers = _mark_hovers(placed, metric, best, parameter.path)
    title = f"{metric} against {parameter.path}"
    return chart(f"chart-slice-{index}", title, draw, CHART_SIZE, hovers)


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
        number = finite_number(raw)
        if number is not None and (number > 0 or not parameter.log):
            placed.append((mark, number))
    return placed


def _categories(parameter: SearchParameter, raws: Sequence[Any]) -> list[str]:
    """A categorical parameter's choices, then any other value a trial had; [] for numbers."""
    if parameter.type != "categorical":
        return []
    return list(dict.fromkeys([*parameter.choices, *(str(raw) for raw in raws)]))


def _value_axis(ax: Axes, parameter: SearchParameter, raws: Sequence[float]) -> None:
    """A numeric parameter's axis over its whole range, logarithmic for a log-scaled one."""
    bounds = [b for b in (parameter.min, parameter.max) if b is not None]
    domain = [float(v) for v in (*bounds, *parameter.values, *raws)]
    if parameter.log:
        domain = [v for v in domain if v > 0]
        ax.set_xscale("log")
    low, high = padded(domain or [1.0], parameter.log)
    ax.set_xlim(low, high)
    if parameter.log:
        ax.xaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif parameter.type == "int":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    number_ticks(ax.xaxis)


def _spread(seen: dict[str, int], name: str) -> float:
    """Offsets for trials sharing a category (0, +0.04, -0.04, +0.08, ... of the gap between
    two categories), so none hides another."""
    count = seen.get(name, 0)
    seen[name] = count + 1
    side = 1 if count % 2 else -1
    return side * 0.04 * ((count + 1) // 2 % 6)


def importance_chart(importance: Mapping[str, float]) -> Markup:
    """Horizontal bars, the most important parameter first."""
    ranked = sorted(importance.items(), key=lambda item: -item[1])

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        bars = horizontal_bars(ax, [path for path, _ in ranked], [v for _, v in ranked])
        for number, bar in enumerate(bars):
            bar.set_gid(f"bar-{number}")
            bar.set_color(COMPLETE_COLOUR)
        ax.bar_label(bars, [fmt_number(value) for _, value in ranked], padding=3)
        number_ticks(ax.xaxis)
        ax.set(title="Parameter importance (fANOVA)", xlabel="share of the objective's variance")

    hovers = {
        f"bar-{number}": Hover("bar", f"{path}: {fmt_number(value)}")
        for number, (path, value) in enumerate(ranked)
    }
    height = min(1.2 + 0.3 * len(ranked), 12)
    return chart("chart-importance", "Parameter importance (fANOVA)", draw, (6.4, height), hovers)


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
    """Render the page into `path` atomically: a reader never sees half a page."""
    write_text_atomically(path, render_search_html(job, spec, trials, notes))
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
    if finite_number(value) is not None:
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
    return tag("div", *charts, class_="charts")


def _importance(importance: Mapping[str, float] | None, note: str) -> Markup:
    if not importance:
        return _note(f"Parameter importance {note}.")
    explanation = tag(
        "p",
        "Optuna's fANOVA: the share of the objective's variance over the complete trials "
        "that each parameter explains (the shares add up to 1).",
        class_="sub",
    )
    return join([explanation, importance_chart(importance)])


def _note(text: str) -> Markup:
    return tag("p", text, class_="callout")
