"""How a run ended, in the words and the outcome that the status, the report and the exit
code carry.

A run ends in one of four outcomes: succeeded, failed (diverged, a failed bias audit
with bias.onFailure fail, a full disk), budgetExceeded or interrupted. The last two leave
a checkpoint to continue from, so they are neither a success nor a failure. The run's last
line says which, where the run stopped, and what is kept; the diagnosis of its curves
(diagnosis.py) says whether it over- or underfitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.checkpoints import parse_checkpoint_step
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.diagnosis import Diagnosis, EvalPoint, RunSetup, diagnose
from kubetune_trainer.examine.audit import BiasAudit
from kubetune_trainer.examine.lm_audit import LanguageModelAudit
from kubetune_trainer.report.progress import Outcome


def outcome_of(succeeded: bool, budget_exceeded: bool, interrupted: bool) -> Outcome:
    """A stop that leaves a checkpoint to continue from is neither a success nor a failure."""
    if budget_exceeded:
        return "budgetExceeded"
    if interrupted:
        return "interrupted"
    return "succeeded" if succeeded else "failed"


@dataclass(frozen=True)
class Ending:
    """Where the training loop ended and what ended it."""

    step: int
    total_steps: int
    latest_checkpoint: Path | None
    best_metric: float | None
    evaluations_without_improvement: int
    over_budget: str | None = None
    """Why the GPU budget stopped the run, when it did."""
    interrupted: bool = False
    """A stop signal stopped the run (on this process or another)."""
    stop_signal: str | None = None
    """The signal this process got, if any."""
    diverged: str | None = None
    """Why the loss diverged, when it did."""


def run_message(
    ending: Ending, config: TrainingConfig, bias_audit: BiasAudit | LanguageModelAudit | None
) -> tuple[bool, str]:
    """Whether the result may be used, and the run's last line."""
    stopped = _stop_message(ending)
    if stopped is not None:
        return False, stopped
    best = f"best {config.primary_metric()}={ending.best_metric:.4f}"
    best += early_stop_note(ending, config)
    bias = config.bias
    if bias_audit is None or bias is None or bias_audit.verdict != "Failed":
        return True, best
    if bias.on_failure == "fail":
        return (
            False,
            f"{best}; the bias audit failed (bias.onFailure: fail): {bias_audit.message}",
        )
    return True, f"{best}; the bias audit failed (bias.onFailure: warn): {bias_audit.message}"


def _stop_message(ending: Ending) -> str | None:
    """The last line of a run stopped by its budget, a signal or a divergence; else None."""
    latest = ending.latest_checkpoint
    if ending.over_budget is not None:
        return (
            f"{ending.over_budget}; stopped at step {ending.step} of {ending.total_steps}, "
            f"checkpoint {latest}"
        )
    if ending.interrupted:
        return (
            f"stopped by {ending.stop_signal or 'SIGTERM'} at step {ending.step} of "
            f"{ending.total_steps}; checkpoint {latest.name if latest else '(none)'} saved"
        )
    if ending.diverged:
        kept = (
            f"the last good checkpoint is {latest}"
            if latest
            else ("no checkpoint was saved before it")
        )
        return f"training diverged at step {ending.step}: {ending.diverged}; {kept}"
    return None


def early_stop_note(ending: Ending, config: TrainingConfig) -> str:
    """Why the run ended before its last step, when early stopping ended it."""
    early = config.evaluation.early_stopping
    waited = ending.evaluations_without_improvement
    if early is None or waited < early.patience or ending.step >= ending.total_steps:
        return ""
    evaluations = "evaluation" if waited == 1 else "evaluations"
    return (
        f"; stopped early at step {ending.step} of {ending.total_steps}: "
        f"{config.primary_metric()} did not improve by more than {early.min_delta:g} "
        f"in {waited} {evaluations} (evaluation.earlyStopping)"
    )


def best_evaluation(evaluations: list[dict[str, Any]], best_checkpoint: str) -> dict[str, float]:
    """The metrics of the evaluation that saved `best_checkpoint`, else of the last one."""
    best_step = parse_checkpoint_step(best_checkpoint)
    for evaluation in evaluations:
        if evaluation["step"] == best_step:
            return dict(evaluation["metrics"])
    return dict(evaluations[-1]["metrics"]) if evaluations else {}


def diagnose_run(
    config: TrainingConfig,
    train_losses: list[list[float]],
    evaluations: list[dict[str, Any]],
    *,
    majority_rate: float | None,
    diverged: str | None,
) -> Diagnosis:
    """The diagnosis of a run's curves, as its training state records them;
    `majority_rate`: a classifier's share of its most frequent class (None otherwise)."""
    return diagnose(
        [(int(s), float(v)) for s, v in train_losses],
        [eval_point(e) for e in evaluations],
        config.primary_metric(),
        setup=RunSetup.of(config),
        max_gap=config.evaluation.max_generalization_gap,
        underfitting_floor=config.evaluation.underfitting_floor,
        majority_rate=majority_rate,
        diverged=diverged,
    )


def eval_point(evaluation: dict[str, Any]) -> EvalPoint:
    """An evaluation as the training state records it, for the diagnosis."""
    return EvalPoint(
        step=int(evaluation["step"]),
        epoch=float(evaluation["epoch"]),
        metrics=dict(evaluation["metrics"]),
        train_metrics=dict(evaluation["trainMetrics"]),
    )
