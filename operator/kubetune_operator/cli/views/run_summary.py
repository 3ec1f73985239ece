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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from kubetune_operator.api.plain import mapping, mappings
from kubetune_operator.cli.views.terminal import (
    BIAS_VALUE_COLUMNS,
    Column,
    bias_parts,
    counts_text,
    diagnosis_line,
    facts,
    fmt,
    labelled,
    table,
)
from kubetune_trainer.formatting import MISSING, params_text, value_text
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON

SEARCH_HTML: Final = "search.html"
"""A search's page, beside its report.json (views/search_page.py draws it)."""
LABEL_WIDTH: Final = 15
"""The column where a labelled line's text starts."""
BIAS_COLUMNS: Final[tuple[Column, ...]] = (
    ("metric", lambda metric: str(metric.get("statusName") or metric.get("name"))),
    ("attribute", lambda metric: str(metric.get("attribute"))),
    ("positive label", lambda metric: str(metric.get("positiveLabel") or "all classes")),
    *BIAS_VALUE_COLUMNS,
)


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


def duration_seconds(report: Mapping[str, Any]) -> float | None:
    """Setup plus training (evaluations run inside training), or timings.totalSeconds."""
    timings = mapping(report.get("timings"))
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
    best = mapping(report.get("bestMetrics"))
    diagnosis = mapping(report.get("diagnosis"))
    audit = mapping(report.get("biasAudit"))
    data = mapping(report.get("data"))
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
            "message": mapping(data.get("quality")).get("message"),
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
        for k, v in mapping(value).items()
        if isinstance(v, int) and not isinstance(v, bool) and v
    }


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
    return labelled(name, shown, LABEL_WIDTH)


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
    return facts(rows)


def _diagnosis(diagnosis: Mapping[str, Any]) -> list[RenderableType]:
    line = diagnosis_line(diagnosis, LABEL_WIDTH)
    return [] if line is None else [line]


def _data(data: Mapping[str, Any]) -> list[RenderableType]:
    lines = []
    if data.get("message"):
        lines.append(labelled("data", escape(str(data["message"])), LABEL_WIDTH))
    for title, key in (("added", "added"), ("removed", "removed")):
        if data[key]:
            lines.append(f"  rows {title}:  {escape(counts_text(data[key]))}")
    if data.get("recommendation"):
        lines.append(f"  recommendation: {escape(str(data['recommendation']))}")
    return list(lines)


def _bias(report: Mapping[str, Any]) -> list[RenderableType]:
    parts = bias_parts(report, LABEL_WIDTH, BIAS_COLUMNS)
    return [Group(*parts)] if parts else []


def search_summary(report: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """A search's glance as plain data: outcome, objective, best trial, trials, importance,
    and where its page is."""
    search = mapping(report.get("search"))
    return {
        "job": report.get("job"),
        "kind": "search",
        "succeeded": report.get("succeeded"),
        "outcome": report.get("outcome"),
        "message": report.get("message"),
        "algorithm": search.get("algorithm"),
        "objective": dict(mapping(search.get("objective"))),
        "progress": dict(mapping(report.get("progress"))),
        "bestTrial": dict(mapping(report.get("bestTrial"))) or None,
        "bestModel": mapping(report.get("artifacts")).get("model") or None,
        "bestTrialReport": mapping(report.get("artifacts")).get("bestTrialReport") or None,
        "trials": [dict(t) for t in mappings(report.get("trials"))],
        "importance": dict(mapping(report.get("importance"))) or None,
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
    rows = [
        ("algorithm", str(glance["algorithm"] or MISSING)),
        ("objective", f"{objective.get('direction', '')} {objective.get('metric', '')}".strip()),
        ("trials", f"{fmt(progress.get('step'))} of {fmt(progress.get('totalSteps'))} finished"),
    ]
    parts += [facts(rows), _trials_table(glance, mapping(report.get("messages")))]
    parts += _best_trial(glance) + _importance(glance)
    parts.append(_page_line(SEARCH_HTML, Path(glance["searchHtml"])))
    return parts


def _trials_table(glance: Mapping[str, Any], messages: Mapping[str, Any]) -> Table:
    trials = glance["trials"]
    best = mapping(glance["bestTrial"]).get("number")
    paths = list(dict.fromkeys(p for t in trials for p in mapping(t.get("params"))))
    metric = str(glance["objective"].get("metric") or "objective")
    rows = [
        [
            f"{t.get('number')}{' ★' if t.get('number') == best else ''}",
            str(t.get("state")),
            *(value_text(mapping(t.get("params")).get(p)) for p in paths),
            value_text(t.get("objective")),
            str(messages.get(str(t.get("number")), "")),
        ]
        for t in trials
    ]
    return table("trials", ["trial", "state", *paths, metric, "note"], rows)


def _best_trial(glance: Mapping[str, Any]) -> list[RenderableType]:
    best = mapping(glance["bestTrial"])
    if not best:
        return [labelled("best trial", "[red]none completed[/]", LABEL_WIDTH)]
    metric = glance["objective"].get("metric") or "objective"
    params = params_text(mapping(best.get("params")))
    lines: list[RenderableType] = [
        labelled(
            "best trial",
            f"{escape(str(best.get('name')))} "
            f"({escape(str(metric))} {escape(value_text(best.get('objective')))})",
            LABEL_WIDTH,
        ),
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
        return [labelled("parameter importance", escape(str(note)), LABEL_WIDTH)]
    ranked = sorted(importance.items(), key=lambda item: -float(item[1]))
    rows = [[str(path), fmt(float(value))] for path, value in ranked]
    return [table("parameter importance (fANOVA)", ["parameter", "importance"], rows)]
