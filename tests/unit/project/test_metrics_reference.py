"""docs/metrics.md lists every Prometheus metric kubetune serves, generated from the code.

The table between the markers is rendered from the trainer's TRAINER_METRICS and the
operator's metric objects; this test fails when they drift, and KUBETUNE_UPDATE_GOLDEN=1
rewrites it.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry

from kubetune_operator import metrics
from kubetune_trainer.report.progress import TRAINER_METRICS
from tests.conftest import REPO

DOC = REPO / "docs/metrics.md"
BEGIN, END = "<!-- metrics:begin -->", "<!-- metrics:end -->"


def operator_rows() -> list[tuple[str, str, str, str]]:
    registry = CollectorRegistry()
    for collector in (metrics.RECONCILE_SECONDS, metrics.API_ERRORS, metrics.RESTARTS):
        registry.register(collector)
    registry.register(metrics.JobsCollector())
    labels = {
        "kubetune_reconcile_duration_seconds": ("handler",),
        "kubetune_api_errors": ("operation", "code"),
        "kubetune_restarts": (),
        "kubetune_jobs": ("phase",),
        "kubetune_bias_audits": ("verdict",),
    }
    rows = []
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        rows.append((name, family.type, ", ".join(labels[family.name]), family.documentation))
    return rows


def trainer_rows() -> list[tuple[str, str, str, str]]:
    return [(m.name, m.kind, ", ".join(m.labels), m.help) for m in TRAINER_METRICS]


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    return lines + [
        f"| `{name}` | {kind} | {labels} | {text} |" for name, kind, labels, text in rows
    ]


def rendered() -> str:
    lines = [
        BEGIN,
        "### Trainer (rank 0, port 9400)",
        "",
        *table(trainer_rows()),
        "",
        "### Operator (port 8080)",
        "",
        *table(operator_rows()),
        END,
    ]
    return "\n".join(lines)


def test_the_metrics_reference_lists_every_metric_the_code_serves() -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    if os.environ.get("KUBETUNE_UPDATE_GOLDEN"):
        DOC.write_text(text[:start] + rendered() + text[end:])
        text = DOC.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == rendered(), "docs/metrics.md is stale: KUBETUNE_UPDATE_GOLDEN=1"
    assert "kubetune_trainer_loss" in text
    assert "kubetune_jobs" in text
