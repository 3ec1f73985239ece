"""What `kubetune status` and `kubetune report` print with, so the two glances agree.

A job's status (from the cluster) and a run's report.json (from a folder) say many of the
same things: metrics, verdicts, the bias audit. Both are untrusted plain data: a field of the
wrong type reads as absent, and every string reaches rich escaped. This module holds how
either is read and drawn; job_status.py and run_summary.py hold what each one shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from kubetune_operator.api.plain import mapping, mappings
from kubetune_trainer.formatting import MISSING, fmt_number

VERDICT_STYLE: Final = {"Passed": "green", "Failed": "red", "InsufficientData": "yellow"}
"""The bias audit's verdicts."""

Column = tuple[str, Callable[[Mapping[str, Any]], str]]
"""A table column: its header, and its cell of a record."""


def fmt(value: object) -> str:
    """A number as the pages write it (formatting.fmt_number), missing as an en dash, text
    as it is."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return fmt_number(value)


def passed_mark(passed: object) -> str:
    """✓ passed, ✗ failed, the en dash when not gated or not measured."""
    if passed is True:
        return "✓"
    return "✗" if passed is False else MISSING


def labelled(label: str, text: str, width: int) -> str:
    """A bold label and its text (rich markup), the text at column `width` where it fits."""
    return f"[bold]{label}[/]{' ' * max(width - len(label), 2)}{text}"


def facts(rows: Sequence[tuple[str, str]]) -> Table:
    """Name/value lines in two aligned columns, names in bold."""
    grid = Table.grid(padding=(0, 2))
    for name, value in rows:
        grid.add_row(f"[bold]{escape(name)}[/]", escape(value))
    return grid


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A borderless titled table of escaped plain-text cells."""
    drawn = Table(title=escape(title), title_justify="left", header_style="bold", box=None)
    for header in headers:
        drawn.add_column(escape(str(header)), overflow="fold")  # narrow terminals lose nothing
    for row in rows:
        drawn.add_row(*(escape(cell) for cell in row))
    return drawn


def counts_text(counts: Mapping[str, Any]) -> str:
    """Row counts per rule or class as `42 duplicates, 8 emptyText`."""
    return ", ".join(f"{fmt(n)} {name}" for name, n in counts.items())


def diagnosis_line(diagnosis: Mapping[str, Any], width: int, style: str = "") -> str | None:
    """The curves' verdict and the suggestion, or None before there is a verdict."""
    verdict = diagnosis.get("verdict")
    if not verdict:
        return None
    shown = escape(str(verdict))
    line = labelled("diagnosis", f"[{style}]{shown}[/]" if style else shown, width)
    if diagnosis.get("suggestion"):
        line += f": {escape(str(diagnosis['suggestion']))}"
    return line


def bias_line(holder: Mapping[str, Any]) -> str | None:
    """The audit's verdict and message as rich markup, or None when there was no audit."""
    audit = mapping(holder.get("biasAudit"))
    verdict = audit.get("verdict")
    if not verdict:
        return None
    style = VERDICT_STYLE.get(str(verdict), "bold")
    message = str(audit.get("message") or "").removeprefix(f"{verdict}: ")
    return f"[{style}]{escape(str(verdict))}[/]: {escape(message)}".rstrip(": ")


BIAS_VALUE_COLUMNS: Final[tuple[Column, ...]] = (
    ("value", lambda metric: fmt(metric.get("value"))),
    ("threshold", lambda metric: fmt(metric.get("threshold"))),
    ("passed", lambda metric: passed_mark(metric.get("passed"))),
)
"""The columns every bias metrics table ends with."""


def bias_parts(
    holder: Mapping[str, Any], width: int, columns: Sequence[Column]
) -> list[RenderableType]:
    """The audit's verdict, its worst group and a table of its metrics (nothing without an
    audit); `holder` is a status or a report, each with its biasAudit."""
    line = bias_line(holder)
    if line is None:
        return []
    audit = mapping(holder.get("biasAudit"))
    parts: list[RenderableType] = [labelled("bias audit", line, width)]
    if audit.get("worstGroup"):
        parts.append(f"  worst group: {escape(str(audit['worstGroup']))}")
    metrics = mappings(audit.get("metrics"))
    if metrics:
        rows = [[cell(metric) for _, cell in columns] for metric in metrics]
        parts.append(table("bias metrics", [header for header, _ in columns], rows))
    return parts
