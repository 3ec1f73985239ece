"""What a run says about itself: what it is about to do when training starts (the
progress reporter's RunInfo), and what it leaves behind when it ends: report.json and
report.html, and its artifacts.

The report is built the same way for every ending (report/summary.py draws it); what
differs is what the ending adds: the outcome, the cost, the examination's sections. Only
rank 0 writes the files. The artifacts are where the outputs are, for the report and the
status alike: a model or a checkpoint that is not there is "".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.cost import RunCost
from kubetune_trainer.data import PreparedData
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON
from kubetune_trainer.report.progress import Outcome, RunInfo
from kubetune_trainer.report.summary import build_report, write_reports


@dataclass(frozen=True)
class RunEnd:
    """How a run ended, in the terms of its report."""

    outcome: Outcome
    best_metrics: dict[str, float]
    diagnosis: dict[str, Any]
    cost: RunCost
    sections: dict[str, Any]
    """What the examination of the final model found, or the failure's message."""


@dataclass(frozen=True)
class RunReport:
    """The report of one run into one output folder."""

    config: TrainingConfig
    job_name: str
    output_dir: Path
    model_dir: Path
    """Where the final model (with LoRA, its adapter) is saved (if it is)."""
    merged_dir: Path
    """Where the model with the adapter merged in is saved (output.mergeAdapter)."""
    processes: int
    writer: bool
    """This process writes the files (rank 0)."""

    def run_info(
        self, namespace: str | None, epochs: int, total_steps: int, steps_per_epoch: int
    ) -> RunInfo:
        """What the run is about to do; `namespace`: the job's, None for a local run."""
        return RunInfo(
            job_name=self.job_name,
            namespace=namespace,
            epochs=epochs,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            output_dir=self.output_dir,
            num_processes=self.processes,
            primary_metric=self.config.primary_metric(),
        )

    def artifacts(self, latest_checkpoint: Path | None) -> dict[str, str]:
        """Where the run's outputs are (status.artifacts and the report's)."""
        return {
            "outputUri": str(self.output_dir),
            "model": str(self.model_dir) if self.model_dir.exists() else "",
            "mergedModel": str(self.merged_dir) if self.merged_dir.exists() else "",
            "report": str(self.output_dir / REPORT_JSON),
            "reportHtml": str(self.output_dir / REPORT_HTML),
            "lastCheckpoint": str(latest_checkpoint) if latest_checkpoint else "",
        }

    def build(
        self,
        end: RunEnd,
        *,
        data: PreparedData,
        state: dict[str, Any],
        throughput: dict[str, float | None],
        timings: dict[str, float],
        latest_checkpoint: Path | None,
    ) -> dict[str, Any]:
        """The report's content; `state`: the training state's dict (its curves and logs)."""
        return build_report(
            config=self.config,
            job_name=self.job_name,
            data=data,
            state=state,
            best_metrics=end.best_metrics,
            diagnosis=end.diagnosis,
            sections={
                **end.sections,
                "cost": end.cost.to_status(),
                "outcome": end.outcome,
                "throughput": throughput,
            },
            timings=timings,
            succeeded=end.outcome == "succeeded",
            processes=self.processes,
            artifacts=self.artifacts(latest_checkpoint),
        )

    def write(self, report: dict[str, Any]) -> None:
        """report.json and report.html, on rank 0."""
        if self.writer:
            write_reports(self.output_dir, report)
