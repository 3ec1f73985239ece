"""A run's outcome and last line for each way it ends, word for word."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.examine.audit import AuditVerdict, BiasAudit
from kubetune_trainer.training.outcome import (
    Ending,
    best_evaluation,
    diagnose_run,
    early_stop_note,
    outcome_of,
    run_message,
)

CHECKPOINT = Path("/out/checkpoints/step-00000012")


def config(**sections: Any) -> TrainingConfig:
    base: dict[str, Any] = {
        "model": {"source": "file:///models/unused", "labels": ["a", "b"]},
        "data": {"train": {"source": "file:///data/unused.csv"}},
        "output": {"uri": "/out"},
        **sections,
    }
    return TrainingConfig.model_validate(base, by_name=False)


def ending(**fields: Any) -> Ending:
    values: dict[str, Any] = {
        "step": 12,
        "total_steps": 40,
        "latest_checkpoint": CHECKPOINT,
        "best_metric": 0.8125,
        "evaluations_without_improvement": 0,
        **fields,
    }
    return Ending(**values)


def audit(verdict: AuditVerdict) -> BiasAudit:
    return BiasAudit(
        verdict=verdict,
        positive_labels=["b"],
        min_group_size=10,
        attributes=[],
        metrics=[],
        worst_group="dialect=x",
        message="the gap is 0.3",
    )


@pytest.mark.parametrize(
    ("succeeded", "budget", "interrupted", "outcome"),
    [
        (True, False, False, "succeeded"),
        (False, False, False, "failed"),
        (False, True, True, "budgetExceeded"),
        (False, False, True, "interrupted"),
    ],
)
def test_a_stop_to_continue_from_is_neither_success_nor_failure(
    succeeded: bool, budget: bool, interrupted: bool, outcome: str
) -> None:
    assert outcome_of(succeeded, budget, interrupted) == outcome


def test_the_budget_stop_names_the_step_and_the_checkpoint() -> None:
    spent = ending(over_budget="the GPU budget is spent", interrupted=True)
    assert run_message(spent, config(), None) == (
        False,
        f"the GPU budget is spent; stopped at step 12 of 40, checkpoint {CHECKPOINT}",
    )


def test_a_signal_names_itself_and_the_checkpoint_saved() -> None:
    assert run_message(ending(interrupted=True, stop_signal="SIGINT"), config(), None) == (
        False,
        "stopped by SIGINT at step 12 of 40; checkpoint step-00000012 saved",
    )
    another_process = ending(interrupted=True, latest_checkpoint=None)
    assert run_message(another_process, config(), None)[1] == (
        "stopped by SIGTERM at step 12 of 40; checkpoint (none) saved"
    )


def test_a_divergence_says_what_is_kept() -> None:
    diverged = ending(diverged="the loss is nan")
    assert run_message(diverged, config(), None) == (
        False,
        f"training diverged at step 12: the loss is nan; the last good checkpoint is {CHECKPOINT}",
    )
    assert run_message(ending(diverged="x", latest_checkpoint=None), config(), None)[1] == (
        "training diverged at step 12: x; no checkpoint was saved before it"
    )


def test_success_gives_the_best_metric_and_why_it_stopped_early() -> None:
    assert run_message(ending(step=40), config(), None) == (True, "best accuracy=0.8125")
    early = config(evaluation={"earlyStopping": {"patience": 2, "minDelta": 0.01}})
    waited = ending(evaluations_without_improvement=2)
    assert early_stop_note(waited, early) == (
        "; stopped early at step 12 of 40: accuracy did not improve by more than 0.01 "
        "in 2 evaluations (evaluation.earlyStopping)"
    )
    assert early_stop_note(ending(evaluations_without_improvement=1), early) == ""


def test_a_failed_bias_audit_fails_the_run_only_when_it_says_so() -> None:
    data = {"train": {"source": "file:///data/unused.csv"}, "sensitiveColumns": ["dialect"]}
    warn = config(data=data, bias={"onFailure": "warn"})
    fail = config(data=data, bias={"onFailure": "fail"})
    done = ending(step=40)
    assert run_message(done, fail, audit("Failed")) == (
        False,
        "best accuracy=0.8125; the bias audit failed (bias.onFailure: fail): the gap is 0.3",
    )
    assert run_message(done, warn, audit("Failed")) == (
        True,
        "best accuracy=0.8125; the bias audit failed (bias.onFailure: warn): the gap is 0.3",
    )
    assert run_message(done, fail, audit("Passed")) == (True, "best accuracy=0.8125")


def evaluation(step: int, accuracy: float) -> dict[str, Any]:
    return {"step": step, "epoch": step / 10, "metrics": {"accuracy": accuracy}, "trainMetrics": {}}


def test_the_best_evaluation_is_the_best_checkpoints_else_the_last() -> None:
    evaluations = [evaluation(10, 0.7), evaluation(20, 0.9), evaluation(30, 0.8)]
    assert best_evaluation(evaluations, "step-00000020") == {"accuracy": 0.9}
    assert best_evaluation(evaluations, "") == {"accuracy": 0.8}
    assert best_evaluation([], "") == {}


def test_the_diagnosis_reads_the_curves_the_state_records() -> None:
    losses = [[float(step), 1.0] for step in range(1, 31)]
    diagnosis = diagnose_run(
        config(),
        losses,
        [evaluation(10, 0.5), evaluation(20, 0.5), evaluation(30, 0.5)],
        majority_rate=0.5,
        diverged="the loss is nan",
    )
    assert diagnosis.to_status()["verdict"] == "Diverged"
