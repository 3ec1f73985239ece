"""report.json: every number a finished run produced, in one file a person or a tool reads.

The HTML report (report.html, drawn by html.py from the same content) and `kubetune
report` are drawn from it; the status only carries a summary. The files are written
atomically, so a crash never leaves a half-written report that looks like a result.
"""

from __future__ import annotations

import json
import logging
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import PreparedData
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON, write_text_atomically
from kubetune_trainer.report.html import render_html
from kubetune_trainer.report.progress import json_safe

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("kubetune", "torch", "transformers", "accelerate", "datasets")


def build_report(
    *,
    config: TrainingConfig,
    job_name: str,
    data: PreparedData,
    state: dict[str, Any],
    best_metrics: dict[str, float],
    diagnosis: dict[str, Any],
    sections: dict[str, Any],
    timings: dict[str, float],
    succeeded: bool,
    processes: int,
    artifacts: dict[str, str],
) -> dict[str, Any]:
    """The report as plain JSON data; `sections` adds what the examination of the final model
    found (evaluation: the confusion matrix and per-class results; biasAudit; attributions);
    `generation` comes from the state (evaluation.generation's completions before and after)."""
    return {
        "job": job_name,
        "succeeded": succeeded,
        "finishedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.model_dump(mode="json", exclude_none=True),
        "primaryMetric": config.primary_metric(),
        "bestMetrics": best_metrics,
        "bestCheckpoint": state["best_checkpoint"],
        "diagnosis": diagnosis,
        "curves": {
            "trainLoss": state["train_losses"],
            "evaluations": state["evaluations"],
            "learningRate": state["learning_rates"],
            "layerGradNorms": state["layer_grad_norms"],
        },
        "freezing": state["freezing_log"],
        "learningRateRangeTest": state["range_test"],
        "data": {
            "labels": data.labels,
            "rows": data.rows,
            "trainClassCounts": data.train_class_counts,
            "classWeights": data.class_weights,
            "majorityRate": data.majority_rate,
            **data.report.to_report(),
        },
        "steps": state["step"],
        "processes": processes,
        "timings": timings,
        "artifacts": artifacts,
        "versions": versions(),
        **({"generation": state["generation"]} if state.get("generation") else {}),
        **sections,
    }


def versions() -> dict[str, str]:
    """Python and library versions, so a run can be reproduced."""
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_reports(output_dir: Path, report: dict[str, Any]) -> None:
    """report.json, then report.html drawn from the same (JSON-safe) content.

    The page is a view of report.json: when drawing it fails, the run keeps its result and
    report.json, the failure is logged, and a page left by an earlier attempt is removed,
    so that report.html never shows another run's numbers.
    """
    content = json_safe(report)
    write_json_atomically(output_dir / REPORT_JSON, content)
    try:
        page = render_html(content)
    except Exception:
        logger.exception("could not draw %s; %s holds every number", REPORT_HTML, REPORT_JSON)
        (output_dir / REPORT_HTML).unlink(missing_ok=True)
        return
    write_text_atomically(output_dir / REPORT_HTML, page)


def write_json_atomically(path: Path, content: dict[str, Any]) -> None:
    """Write JSON (NaN and infinities as null) atomically."""
    text = json.dumps(json_safe(content), indent=2, allow_nan=False)
    write_text_atomically(path, text + "\n")
