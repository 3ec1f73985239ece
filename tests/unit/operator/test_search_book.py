"""The pure parts of a local search: a trial's result from its report.json, and which spec
changes a resumed search accepts."""

from __future__ import annotations

import copy
from typing import Any

from kubetune_operator.api.v1alpha1 import FineTuneJobSpec
from kubetune_operator.cli.local.searches import fingerprint, trial_result


def spec(sentiment: dict[str, Any], **search: Any) -> FineTuneJobSpec:
    body = copy.deepcopy(sentiment["spec"])
    body["search"] = {
        "algorithm": "random",
        "parameters": [
            {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-3}
        ],
        "objective": {"metric": "loss"},
        **search,
    }
    return FineTuneJobSpec.model_validate(body)


def report(succeeded: bool, loss: float | None) -> dict[str, Any]:
    evaluations = [
        {"step": 10, "metrics": {"loss": 0.9, "accuracy": 0.5}},
        {"step": 20, "metrics": {"loss": float("nan")}},
        {"step": 30, "metrics": {"loss": 0.7}},
    ]
    best = {} if loss is None else {"loss": loss, "accuracy": 0.6}
    return {
        "succeeded": succeeded,
        "bestMetrics": best,
        "diagnosis": {"verdict": "Diverged"},
        "curves": {"evaluations": evaluations},
    }


def test_a_finished_trial_has_its_objective_and_finite_intermediate_values(
    sentiment: dict[str, Any],
) -> None:
    result = trial_result(spec(sentiment), report(True, 0.7))
    assert (result.state, result.objective) == ("Complete", 0.7)
    assert result.intermediate == {"10": 0.9, "30": 0.7}


def test_a_failed_run_or_a_missing_metric_fails_the_trial(sentiment: dict[str, Any]) -> None:
    failed = trial_result(spec(sentiment), report(False, 0.7))
    assert (failed.state, failed.objective) == ("Failed", None)
    assert failed.message == "training failed (Diverged)"
    silent = trial_result(spec(sentiment), report(True, None))
    assert (silent.state, silent.message) == ("Failed", "the run reported no loss")


def test_a_resume_may_change_the_trial_budget_but_not_the_space(
    sentiment: dict[str, Any],
) -> None:
    original = fingerprint(spec(sentiment, maxTrials=4))
    assert fingerprint(spec(sentiment, maxTrials=8, parallelism=2, maxFailedTrials=0)) == original
    assert fingerprint(spec(sentiment, maxTrials=4, seed=1)) != original
