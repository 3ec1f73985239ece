"""`kubetune report RUN_DIR`: a finished run's report.json, read in the terminal.

report.html is the full picture; this is the glance after `kubetune run` or a `kubectl cp`
of an output volume: the outcome, the best metrics, the diagnosis, what the data checks
did, the bias audit, and where the page is. It reads report.json as plain JSON, so the
CLI needs neither torch nor the trainer; a missing or broken file is a message, never a
traceback. Every string of the report is untrusted (data rows, labels, group names) and
reaches rich escaped. A search's folder (report.json with kind "search", written by
`kubetune run` of a job with spec.search) shows its trials, best trial and the importance
of each parameter instead, and its page is search.html.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from kubetune_trainer.formatting import MISSING, params_text, value_text
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON

SEARCH_HTML: Final = "search.html"
"""A search's page, beside its report.json (views/search_page.py draws it)."""
VERDICT_STYLE = {"Passed": "green", "Failed": "red", "InsufficientData": "yellow"}


class ReportError(Exception):
    """report.json cannot be read; the message names the file and says why."""


def load_report(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/report.json's content (a JSON object)."""
    path = run_dir / REPORT_JSON
    if run_dir.is_file():
        raise ReportError(f"{run_dir}: is a file; give the run's output directory")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(
            f"{path}: no such file (is {run_dir} a run's output directory?)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: cannot be read ({error})") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path}: not JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    if not isinstance(content, dict):
        raise ReportError(f"{path}: must hold a JSON object (got {type(content).__name__})")
    _check_is_a_run_report(content, path)
    return content


def _check_is_a_run_report(content: Mapping[str, Any], path: Path) -> None:
    """Every run and search report names its job and says whether it succeeded; a file
    without them (cut short, or another tool's report.json) cannot be summarised."""
    if not isinstance(content.get("job"), str) or not isinstance(content.get("succeeded"), bool):
        raise ReportError(
            f"{path}: not a kubetune report (it needs the text field job and the true/false "
            "field succeeded)"
        )


def html_path(run_dir: Path) -> Path:
    """Where the run's report.html is (whether or not it was drawn)."""
    return (run_dir / REPORT_HTML).resolve()


def page_path(report: Mapping[str, Any], run_dir: Path) -> Path:
    """The folder's HTML page: a search's search.html, else the run's report.html."""
    if not is_search(report):
        return html_path(run_dir)
    return (run_dir / SEARCH_HTML).resolve()


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def fmt(value: object) -> str:
    """4 significant digits, ints with separators, missing as an en dash (as report.html)."""
    if isinstance(value, bool) or value is None:
        return MISSING if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else MISSING
    return str(value)


def passed_mark(passed: object) -> str:
    """✓ passed, ✗ failed, the en dash when not gated or not measured."""
    if passed is True:
        return "✓"
    return "✗" if passed is False else MISSING


def duration_seconds(report: Mapping[str, Any]) -> float | None:
    """Setup plus training (evaluations run inside training), or timings.totalSeconds."""
    timings = _mapping(report.get("timings"))
    if isinstance(timings.get("totalSeconds"), int | float):
        return float(timings["totalSeconds"])
    parts = [timings.get(key) for key in ("setupSeconds", "trainSeconds")]
    numbers = [float(p) for p in parts if isinstance(p, int | float)]
    return sum(numbers) if numbers else None


def is_search(report: Mapping[str, Any]) -> bool:
    """Whether the report is a hyperparameter search's rather than one run's."""
    return report.get("kind") == "search"


OUTCOME_MARKS: Final = {
    "succeeded": "[green]✓ succeeded[/]",
    "failed": "[red]✗ failed[/]",
    "interrupted": "[yellow]■ interrupted[/] (stopped by SIGTERM or Ctrl-C; checkpoint kept)",
    "budgetExceeded": "[yellow]■ stopped[/] (runPolicy.maxGpuHours spent; checkpoint kept)",
    "stalled": "[red]■ stalled[/] (no progress for runPolicy.stallTimeout; stopped)",
}
"""The heading's mark for report.json's `outcome` (older reports have only `succeeded`)."""


def summary(report: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The glance as plain data (what `--json` prints)."""
    if is_search(report):
        return search_summary(report, run_dir)
    metric = report.get("primaryMetric")
    best = _mapping(report.get("bestMetrics"))
    diagnosis = _mapping(report.get("diagnosis"))
    audit = _mapping(report.get("biasAudit"))
    data = _mapping(report.get("data"))
    return {
        "job": report.get("job"),
        "succeeded": report.get("succeeded"),
        "outcome": report.get("outcome"),
        "primaryMetric": metric,
        "best": best.get(str(metric)) if metric else None,
        "steps": report.get("steps"),
        "durationSeconds": duration_seconds(report),
        "bestMetrics": dict(best),
        "diagnosis": {
            "verdict": diagnosis.get("verdict"),
            "suggestion": diagnosis.get("suggestion"),
        },
        "data": {
            "message": _mapping(data.get("quality")).get("message"),
            "added": _counts(data.get("added")),
            "removed": _counts(data.get("removed")),
            "recommendation": data.get("recommendation"),
        },
        "biasAudit": (
            {
                "verdict": audit.get("verdict"),
                "message": audit.get("message"),
                "worstGroup": audit.get("worstGroup"),
            }
            if audit.get("verdict")
            else None
        ),
        "reportHtml": str(html_path(run_dir)),
    }


def _counts(value: object) -> dict[str, int]:
    return {
        str(k): v
        for k, v in _mapping(value).items()
        if isinstance(v, int) and not isinstance(v, bool) and v
    }


def bias_line(report: Mapping[str, Any]) -> str | None:
    """The audit's verdict and message as rich markup, or None when the run had no audit."""
    audit = _mapping(report.get("biasAudit"))
    verdict = audit.get("verdict")
    if not verdict:
        return None
    style = VERDICT_STYLE.get(str(verdict), "bold")
    message = str(audit.get("message") or "").removeprefix(f"{verdict}: ")
    return f"[{style}]{escape(str(verdict))}[/]: {escape(message)}".rstrip(": ")


def renderables(report: Mapping[str, Any], run_dir: Path) -> list[RenderableType]:
    """What `kubetune report` prints, top to bottom."""
    if is_search(report):
        return search_renderables(report, run_dir)
    glance = summary(report, run_dir)
    parts: list[RenderableType] = [_heading(glance), _facts(glance)]
    best = glance["bestMetrics"]
    if best:
        parts.append(table("best metrics", list(best), [[fmt(v) for v in best.values()]]))
    parts += _diagnosis(glance["diagnosis"]) + _data(glance["data"]) + _bias(report)
    parts.append(_page_line(REPORT_HTML, Path(glance["reportHtml"])))
    return parts


def _page_line(name: str, page: Path) -> str:
    shown = escape(str(page)) if page.exists() else f"{escape(str(page))} [dim](not written)[/]"
    return f"[bold]{name}[/]    {shown}"


def _heading(glance: Mapping[str, Any]) -> str:
    outcome = glance["outcome"] or {True: "succeeded", False: "failed"}.get(glance["succeeded"])
    mark = OUTCOME_MARKS.get(str(outcome), "")
    return f"[bold]{escape(str(glance['job'] or 'fine-tune'))}[/] {mark}".rstrip()


def _facts(glance: Mapping[str, Any]) -> Table:
    seconds = glance["durationSeconds"]
    rows = [
        (f"best {glance['primaryMetric']}", fmt(glance["best"])),
        ("steps", fmt(glance["steps"])),
        ("duration", MISSING if seconds is None else f"{seconds:.1f} s"),
    ]
    grid = Table.grid(padding=(0, 2))
    for name, value in rows:
        grid.add_row(f"[bold]{escape(name)}[/]", escape(value))
    return grid


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A borderless titled table of escaped plain-text cells (shared with `kubetune status`)."""
    drawn = Table(title=escape(title), title_justify="left", header_style="bold", box=None)
    for header in headers:
        drawn.add_column(escape(str(header)), overflow="fold")  # narrow terminals lose nothing
    for row in rows:
        drawn.add_row(*(escape(cell) for cell in row))
    return drawn


def _diagnosis(diagnosis: Mapping[str, Any]) -> list[RenderableType]:
    if not diagnosis.get("verdict"):
        return []
    line = f"[bold]diagnosis[/]      {escape(str(diagnosis['verdict']))}"
    if diagnosis.get("suggestion"):
        line += f": {escape(str(diagnosis['suggestion']))}"
    return [line]


def _data(data: Mapping[str, Any]) -> list[RenderableType]:
    lines = []
    if data.get("message"):
        lines.append(f"[bold]data[/]           {escape(str(data['message']))}")
    for title, key in (("added", "added"), ("removed", "removed")):
        if data[key]:
            counts = ", ".join(f"{n:,} {name}" for name, n in data[key].items())
            lines.append(f"  rows {title}:  {escape(counts)}")
    if data.get("recommendation"):
        lines.append(f"  recommendation: {escape(str(data['recommendation']))}")
    return list(lines)


def _bias(report: Mapping[str, Any]) -> list[RenderableType]:
    line = bias_line(report)
    if line is None:
        return []
    audit = _mapping(report.get("biasAudit"))
    parts: list[RenderableType] = [f"[bold]bias audit[/]     {line}"]
    if audit.get("worstGroup"):
        parts.append(f"  worst group: {escape(str(audit['worstGroup']))}")
    metrics = [m for m in _sequence(audit.get("metrics")) if isinstance(m, Mapping)]
    if metrics:
        headers = ["metric", "attribute", "positive label", "value", "threshold", "passed"]
        rows = [
            [
                str(m.get("statusName") or m.get("name")),
                str(m.get("attribute")),
                str(m.get("positiveLabel") or "all classes"),
                fmt(m.get("value")),
                fmt(m.get("threshold")),
                passed_mark(m.get("passed")),
            ]
            for m in metrics
        ]
        parts.append(table("bias metrics", headers, rows))
    return [Group(*parts)]


def search_summary(report: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """A search's glance as plain data: outcome, objective, best trial, trials, importance,
    and where its page is."""
    search = _mapping(report.get("search"))
    return {
        "job": report.get("job"),
        "kind": "search",
        "succeeded": report.get("succeeded"),
        "outcome": report.get("outcome"),
        "message": report.get("message"),
        "algorithm": search.get("algorithm"),
        "objective": dict(_mapping(search.get("objective"))),
        "progress": dict(_mapping(report.get("progress"))),
        "bestTrial": dict(_mapping(report.get("bestTrial"))) or None,
        "bestModel": _mapping(report.get("artifacts")).get("model") or None,
        "bestTrialReport": _mapping(report.get("artifacts")).get("bestTrialReport") or None,
        "trials": [dict(t) for t in _sequence(report.get("trials")) if isinstance(t, Mapping)],
        "importance": dict(_mapping(report.get("importance"))) or None,
        "importanceNote": report.get("importanceNote"),
        "searchHtml": str(page_path(report, run_dir)),
    }


def search_renderables(report: Mapping[str, Any], run_dir: Path) -> list[RenderableType]:
    """What `kubetune report` prints for a search: outcome, trials, best trial, importance,
    and where its page is."""
    glance = search_summary(report, run_dir)
    objective = glance["objective"]
    progress = glance["progress"]
    parts: list[RenderableType] = [_heading(glance)]
    if glance["message"]:
        parts.append(escape(str(glance["message"])))
    facts = [
        ("algorithm", str(glance["algorithm"] or MISSING)),
        ("objective", f"{objective.get('direction', '')} {objective.get('metric', '')}".strip()),
        ("trials", f"{fmt(progress.get('step'))} of {fmt(progress.get('totalSteps'))} finished"),
    ]
    grid = Table.grid(padding=(0, 2))
    for name, value in facts:
        grid.add_row(f"[bold]{escape(name)}[/]", escape(value))
    parts += [grid, _trials_table(glance, _mapping(report.get("messages")))]
    parts += _best_trial(glance) + _importance(glance)
    parts.append(_page_line(SEARCH_HTML, Path(glance["searchHtml"])))
    return parts


def _trials_table(glance: Mapping[str, Any], messages: Mapping[str, Any]) -> Table:
    trials = glance["trials"]
    best = _mapping(glance["bestTrial"]).get("number")
    paths = list(dict.fromkeys(p for t in trials for p in _mapping(t.get("params"))))
    metric = str(glance["objective"].get("metric") or "objective")
    rows = [
        [
            f"{t.get('number')}{' ★' if t.get('number') == best else ''}",
            str(t.get("state")),
            *(value_text(_mapping(t.get("params")).get(p)) for p in paths),
            value_text(t.get("objective")),
            str(messages.get(str(t.get("number")), "")),
        ]
        for t in trials
    ]
    return table("trials", ["trial", "state", *paths, metric, "note"], rows)


def _best_trial(glance: Mapping[str, Any]) -> list[RenderableType]:
    best = _mapping(glance["bestTrial"])
    if not best:
        return ["[bold]best trial[/]     [red]none completed[/]"]
    metric = glance["objective"].get("metric") or "objective"
    params = params_text(_mapping(best.get("params")))
    lines: list[RenderableType] = [
        f"[bold]best trial[/]     {escape(str(best.get('name')))} "
        f"({escape(str(metric))} {escape(value_text(best.get('objective')))})",
        f"  params:  {escape(params)}",
    ]
    for name, key in (("model", "bestModel"), ("report", "bestTrialReport")):
        if glance[key]:
            lines.append(f"  {name}:  {escape(str(glance[key]))}")
    return lines


def _importance(glance: Mapping[str, Any]) -> list[RenderableType]:
    importance = glance["importance"]
    if not importance:
        note = glance["importanceNote"] or "not computed"
        return [f"[bold]parameter importance[/]  {escape(str(note))}"]
    ranked = sorted(importance.items(), key=lambda item: -float(item[1]))
    rows = [[str(path), fmt(float(value))] for path, value in ranked]
    return [table("parameter importance (fANOVA)", ["parameter", "importance"], rows)]
