"""The search engine: proposals from a study rebuilt from status, limits, pruning, trial specs."""

from __future__ import annotations

import itertools
import math
from typing import Any

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune_operator.api.v1alpha1 import FineTuneJob, FineTuneJobSpec
from kubetune_operator.search import (
    SearchError,
    TrialPlan,
    best_trial,
    next_trials,
    objective_of,
    propose,
    search_outcome,
    search_status,
    should_prune,
    study_from_trials,
    trial_manifest,
    trial_spec,
)
from tests.conftest import load_example

LEARNING_RATE = {
    "path": "training.learningRate",
    "type": "float",
    "min": 1e-5,
    "max": 1e-3,
    "log": True,
}
FREEZE = {"path": "freezing.freezeLayers", "type": "int", "min": 0, "max": 6, "step": 2}
DROPOUT = {"path": "regularization.dropout", "type": "float", "min": 0.0, "max": 0.3}
SCHEDULER = {
    "path": "training.scheduler",
    "type": "categorical",
    "choices": ["linear", "cosine", "constant"],
}
WARMUP = {"path": "training.warmupRatio", "type": "float", "values": [0.3, 0.0, 0.1]}


def job_with(manifest: dict[str, Any], **search: Any) -> FineTuneJob:
    manifest["spec"]["search"] = search
    return FineTuneJob.model_validate(manifest)


def surface(params: dict[str, Any]) -> float:
    """A known objective: best at learning rate 1e-4, dropout 0.1, cosine."""
    lr = math.log10(float(params.get("training.learningRate", 1e-4))) + 4
    bonus = 0.05 if params.get("training.scheduler") == "cosine" else 0.0
    dropout = float(params.get("regularization.dropout", 0.1))
    return 0.9 - 0.1 * lr**2 - (dropout - 0.1) ** 2 + bonus


def record(plan: TrialPlan, state: str, objective: float | None = None) -> dict[str, Any]:
    """A status.trials entry as the API server returns it."""
    entry: dict[str, Any] = {"number": plan.number, "name": plan.name, "state": state}
    entry["params"] = plan.params
    if objective is not None:
        entry["objective"] = objective
    return entry


def run_search(job: FineTuneJob) -> list[dict[str, Any]]:
    """Every trial of a sequential search, completed on `surface`, the study rebuilt each time."""
    trials: list[dict[str, Any]] = []
    while plans := next_trials(job, trials):
        trials += [record(p, "Complete", surface(p.params)) for p in plans]
    return trials


def test_grid_covers_exactly_the_product_rebuilt_from_status_between_asks(
    sentiment: dict[str, Any],
) -> None:
    freeze = {"path": "freezing.freezeLayers", "type": "int", "values": [0, 2, 4]}
    job = job_with(
        sentiment, algorithm="grid", maxTrials=30, parallelism=4, parameters=[SCHEDULER, freeze]
    )
    trials: list[dict[str, Any]] = []
    seen: list[tuple[str, int]] = []
    while plans := next_trials(job, trials):
        assert sum(t["state"] == "Pending" for t in trials) + len(plans) <= 4
        for plan in plans:
            seen.append((plan.params["training.scheduler"], plan.params["freezing.freezeLayers"]))
            trials.append(record(plan, "Pending"))
        # The oldest pending trial finishes before the next reconcile.
        pending = next(t for t in trials if t["state"] == "Pending")
        pending.update(state="Complete", objective=0.5)
    assert len(seen) == 9
    assert sorted(seen) == sorted(itertools.product(["linear", "cosine", "constant"], [0, 2, 4]))
    assert search_status(job.spec, trials)["progress"]["totalSteps"] == 9


def test_random_and_tpe_respect_bounds_steps_and_log_scale(sentiment: dict[str, Any]) -> None:
    for algorithm in ("random", "bayesian"):
        job = job_with(
            sentiment,
            algorithm=algorithm,
            maxTrials=40,
            parameters=[LEARNING_RATE, FREEZE, DROPOUT, SCHEDULER],
        )
        params = [t["params"] for t in run_search(job)]
        assert len(params) == 40
        rates = [p["training.learningRate"] for p in params]
        assert all(1e-5 <= r <= 1e-3 for r in rates)
        assert {p["freezing.freezeLayers"] for p in params} <= {0, 2, 4, 6}
        assert all(type(p["freezing.freezeLayers"]) is int for p in params)
        assert all(0.0 <= p["regularization.dropout"] <= 0.3 for p in params)
        assert {p["training.scheduler"] for p in params} <= {"linear", "cosine", "constant"}
        # Log-uniform puts half the mass below 1e-4; a uniform range would put 9% there.
        assert sum(r < 1e-4 for r in rates[:10]) >= 3, algorithm


def test_proposals_are_reproducible_with_a_seed(sentiment: dict[str, Any]) -> None:
    for algorithm in ("random", "bayesian", "grid"):
        parameters = [SCHEDULER, FREEZE] if algorithm == "grid" else [LEARNING_RATE, DROPOUT]
        runs = [
            [
                t["params"]
                for t in run_search(
                    job_with(
                        dict(sentiment),
                        algorithm=algorithm,
                        maxTrials=12,
                        parameters=parameters,
                        seed=seed,
                    )
                )
            ]
            for seed in (7, 7, 8)
        ]
        assert runs[0] == runs[1], algorithm
        assert runs[0] != runs[2], algorithm


def test_tpe_concentrates_near_the_optimum_of_a_known_surface(sentiment: dict[str, Any]) -> None:
    job = job_with(
        sentiment, algorithm="bayesian", maxTrials=30, parameters=[LEARNING_RATE, DROPOUT]
    )
    rates = [t["params"]["training.learningRate"] for t in run_search(job)]
    distance = [abs(math.log10(r) + 4) for r in rates]
    # The first 5 are TPE's random start-up; the model-guided ones sit closer to 1e-4.
    assert sum(distance[20:]) / 10 < sum(distance[:10]) / 10


@pytest.mark.parametrize("algorithm", ["bayesian", "random", "grid"])
def test_study_rebuilt_from_status_proposes_what_the_live_study_does(
    sentiment: dict[str, Any], algorithm: str
) -> None:
    parameters = (
        [SCHEDULER, FREEZE]
        if algorithm == "grid"
        else [LEARNING_RATE, DROPOUT, SCHEDULER, FREEZE, WARMUP]
    )
    job = job_with(
        sentiment,
        algorithm=algorithm,
        maxTrials=12,
        parallelism=2,
        parameters=parameters,
        earlyStopping={"minCompletedTrials": 2},
    )
    search = job.spec.search
    assert search is not None
    live = study_from_trials(job.spec, [])
    trials: list[dict[str, Any]] = []
    for number in range(12):
        rebuilt_plans = next_trials(job, trials)
        live_params = propose(live, search, number)
        assert rebuilt_plans[0].params == live_params
        plan = rebuilt_plans[0]
        trials.append(record(plan, "Running"))
        live_trial = live.trials[-1]
        outcome = number % 4
        if outcome == 1:  # pruned after one evaluation
            live.tell(live_trial.number, state=optuna.trial.TrialState.PRUNED)
            trials[-1].update(state="Pruned")
        elif outcome == 2:
            live.tell(live_trial.number, state=optuna.trial.TrialState.FAIL)
            trials[-1].update(state="Failed")
        elif outcome != 3:  # outcome 3 stays running: the next ask must differ from it
            live.tell(live_trial.number, surface(plan.params))
            trials[-1].update(state="Complete", objective=surface(plan.params))
        if len([t for t in trials if t["state"] == "Running"]) >= 2:
            running = next(t for t in trials if t["state"] == "Running")
            live.tell(running["number"], 0.3)
            running.update(state="Complete", objective=0.3)


def test_tpe_is_random_for_its_first_5_trials_then_model_guided(
    sentiment: dict[str, Any],
) -> None:
    def proposals(algorithm: str) -> list[dict[str, Any]]:
        parameters = [LEARNING_RATE, DROPOUT, WARMUP]
        job = job_with(dict(sentiment), algorithm=algorithm, maxTrials=8, parameters=parameters)
        return [t["params"] for t in run_search(job)]

    tpe, random = proposals("bayesian"), proposals("random")
    # Trial n's sampler is seeded from (seed, n) for both, so the start-up trials coincide.
    assert tpe[:5] == random[:5]
    assert all(t != r for t, r in zip(tpe[5:], random[5:], strict=True))


def test_listed_values_reach_optuna_as_an_ordered_index_and_the_grid_as_values(
    sentiment: dict[str, Any],
) -> None:
    freeze = {"path": "freezing.freezeLayers", "type": "int", "values": [4, 0, 2]}
    recorded = {
        "number": 0,
        "name": "sentiment-trial-0",
        "state": "Complete",
        "objective": 0.5,
        "params": {"training.warmupRatio": 0.1, "freezing.freezeLayers": 4.0},
    }
    for algorithm in ("random", "bayesian"):
        job = job_with(sentiment, algorithm=algorithm, parameters=[WARMUP, freeze])
        (trial,) = study_from_trials(job.spec, [recorded]).trials
        # Sorted: warmup [0.0, 0.1, 0.3], freeze [0, 2, 4]; JSON's 4.0 is the listed 4.
        assert trial.params == {"training.warmupRatio": 1, "freezing.freezeLayers": 2}
        assert trial.distributions["training.warmupRatio"] == optuna.distributions.IntDistribution(
            0, 2
        )
    job = job_with(sentiment, algorithm="grid", parameters=[WARMUP, freeze])
    (trial,) = study_from_trials(job.spec, [recorded]).trials
    assert trial.params == {"training.warmupRatio": 0.1, "freezing.freezeLayers": 4}
    assert trial.distributions[
        "training.warmupRatio"
    ] == optuna.distributions.CategoricalDistribution([0.3, 0.0, 0.1])


def test_a_recorded_value_that_is_not_listed_is_left_out_of_the_rebuilt_trial(
    sentiment: dict[str, Any],
) -> None:
    job = job_with(sentiment, algorithm="bayesian", parameters=[WARMUP, DROPOUT])
    recorded = {
        "number": 0,
        "name": "sentiment-trial-0",
        "state": "Complete",
        "objective": 0.5,
        "params": {"training.warmupRatio": 0.2, "regularization.dropout": 0.1},
    }
    (trial,) = study_from_trials(job.spec, [recorded]).trials
    assert trial.params == {"regularization.dropout": 0.1}
    assert len(next_trials(job, [recorded])) == 1


@settings(max_examples=25, deadline=None)
@given(
    algorithm=st.sampled_from(["random", "bayesian"]),
    rates=st.lists(st.floats(1e-6, 1e-2, allow_nan=False), min_size=1, max_size=8, unique=True),
    layers=st.lists(st.integers(0, 1000), min_size=1, max_size=8, unique=True),
    seed=st.integers(0, 2**31),
)
def test_a_listed_parameter_only_ever_takes_its_listed_values(
    algorithm: str, rates: list[float], layers: list[int], seed: int
) -> None:
    job = job_with(
        load_example("sentiment/job.yaml"),
        algorithm=algorithm,
        maxTrials=8,
        parallelism=2,
        seed=seed,
        parameters=[
            {"path": "training.learningRate", "type": "float", "values": rates},
            {"path": "freezing.freezeLayers", "type": "int", "values": layers},
        ],
    )
    for params in (t["params"] for t in run_search(job)):
        assert params["training.learningRate"] in rates
        assert params["freezing.freezeLayers"] in layers
        assert type(params["freezing.freezeLayers"]) is int


@settings(max_examples=60, deadline=None)
@given(
    max_trials=st.integers(1, 12),
    parallelism=st.integers(1, 12),
    max_failed=st.integers(0, 3),
    outcomes=st.lists(
        st.sampled_from(["Running", "Complete", "Pruned", "Failed", "stay"]), max_size=40
    ),
)
def test_parallelism_max_trials_and_failures_hold_over_random_histories(
    max_trials: int,
    parallelism: int,
    max_failed: int,
    outcomes: list[str],
) -> None:
    job = job_with(
        load_example("sentiment/job.yaml"),
        algorithm="random",
        maxTrials=max_trials,
        parallelism=min(parallelism, max_trials),
        maxFailedTrials=max_failed,
        parameters=[LEARNING_RATE],
    )
    trials: list[dict[str, Any]] = []
    for outcome in outcomes:
        failed_before = sum(t["state"] == "Failed" for t in trials)
        plans = next_trials(job, trials)
        if failed_before > max_failed:
            assert plans == []
        trials += [record(p, "Pending") for p in plans]
        active = [t for t in trials if t["state"] in ("Pending", "Running")]
        assert len(active) <= min(parallelism, max_trials)
        assert len(trials) <= max_trials
        assert [t["number"] for t in trials] == list(range(len(trials)))
        if active and outcome != "stay":
            active[0].update(state=outcome, objective=0.5 if outcome == "Complete" else None)
    if sum(t["state"] == "Failed" for t in trials) > max_failed:
        assert search_outcome(job.spec, trials).phase == "Failed"


def test_max_failed_trials_stops_proposals(sentiment: dict[str, Any]) -> None:
    job = job_with(
        sentiment,
        algorithm="random",
        maxTrials=10,
        parallelism=2,
        maxFailedTrials=1,
        parameters=[DROPOUT],
    )
    trials = [record(p, "Failed") for p in next_trials(job, [])]
    assert len(trials) == 2
    assert next_trials(job, trials) == []
    outcome = search_outcome(job.spec, trials)
    assert outcome.phase == "Failed"
    assert "maxFailedTrials is 1" in outcome.message
    job = job_with(
        sentiment,
        algorithm="random",
        maxTrials=10,
        parallelism=2,
        maxFailedTrials=2,
        parameters=[DROPOUT],
    )
    assert [p.number for p in next_trials(job, trials)] == [2, 3]


def pruning_history(values: list[list[float]]) -> list[dict[str, Any]]:
    """Complete trials with these evaluations (keyed by optimizer steps 100, 200, ...)."""
    return [
        {
            "number": n,
            "name": f"p-trial-{n}",
            "state": "Complete",
            "params": {"regularization.dropout": 0.1},
            "objective": evaluations[-1],
            "intermediate": {str(100 * (i + 1)): v for i, v in enumerate(evaluations)},
        }
        for n, evaluations in enumerate(values)
    ]


def test_pruning_stops_a_trial_worse_than_the_median_at_the_same_evaluation(
    sentiment: dict[str, Any],
) -> None:
    job = job_with(
        sentiment,
        algorithm="random",
        maxTrials=10,
        parameters=[DROPOUT],
        earlyStopping={"minCompletedTrials": 3, "warmupEvaluations": 1},
    )
    done = pruning_history([[0.6, 0.7, 0.8], [0.5, 0.6, 0.7], [0.7, 0.8, 0.9]])

    # Medians at the 1st, 2nd evaluation: 0.6, 0.7. This trial evaluates at other optimizer
    # steps (another batch size) and is compared evaluation by evaluation.
    def running(evaluations: dict[str, float]) -> list[dict[str, Any]]:
        trial = {"number": 3, "name": "p-trial-3", "state": "Running", "intermediate": evaluations}
        return [*done, trial]

    assert should_prune(job.spec, running({"50": 0.4, "100": 0.65}), 3)
    assert not should_prune(job.spec, running({"50": 0.4, "100": 0.75}), 3)
    assert not should_prune(job.spec, running({"50": 0.4}), 3), "the warm-up evaluation"
    assert not should_prune(job.spec, running({}), 3)
    fewer = [*done[:2], {**running({"50": 0.1, "100": 0.1})[3], "number": 2}]
    assert not should_prune(job.spec, fewer, 2), "only 2 of minCompletedTrials 3 completed"


def test_pruning_agrees_with_optuna_median_pruner_on_a_live_study(
    sentiment: dict[str, Any],
) -> None:
    job = job_with(
        sentiment,
        algorithm="random",
        maxTrials=50,
        parameters=[DROPOUT],
        earlyStopping={"minCompletedTrials": 2, "warmupEvaluations": 2},
        objective={"metric": "loss"},
    )
    live = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner(2, 2))
    trials: list[dict[str, Any]] = []
    curves = [[(n * 7919 + k * 104729) % 97 / 97 for k in range(5)] for n in range(12)]
    decisions = []
    for number, curve in enumerate(curves):
        trial = live.ask({"regularization.dropout": optuna.distributions.FloatDistribution(0, 0.3)})
        entry: dict[str, Any] = {
            "number": number,
            "name": f"p-trial-{number}",
            "state": "Running",
            "params": trial.params,
            "intermediate": {},
        }
        trials.append(entry)
        state = "Complete"
        for k, value in enumerate(curve):
            trial.report(value, k)
            entry["intermediate"][str(10 * (k + 1))] = value
            live_says = trial.should_prune()
            decisions.append(live_says)
            assert should_prune(job.spec, trials, number) == live_says, (number, k)
            if live_says:
                state = "Pruned"
                break
        if state == "Pruned":
            live.tell(trial, state=optuna.trial.TrialState.PRUNED)
            entry["state"] = "Pruned"
        else:
            live.tell(trial, curve[-1])
            entry.update(state="Complete", objective=curve[-1])
    assert any(decisions)
    assert not all(decisions)


def test_trial_spec_substitutes_each_value_at_its_path_and_drops_search(
    sentiment: dict[str, Any],
) -> None:
    batch = {"path": "training.batchSize", "type": "categorical", "choices": ["16", "32"]}
    job = job_with(sentiment, parameters=[LEARNING_RATE, FREEZE, DROPOUT, SCHEDULER, batch])
    params = {
        "training.learningRate": 3e-5,
        "freezing.freezeLayers": 4,
        "regularization.dropout": 0.2,
        "training.scheduler": "cosine",
        "training.batchSize": "16",
    }
    spec = trial_spec(job.spec, params)
    assert "search" not in spec
    assert spec["training"]["learningRate"] == 3e-5
    assert spec["training"]["batchSize"] == 16
    assert spec["training"]["scheduler"] == "cosine"
    assert spec["training"]["epochs"] == 2
    assert spec["freezing"]["freezeLayers"] == 4
    assert spec["regularization"]["dropout"] == 0.2
    child = FineTuneJobSpec.model_validate(spec)
    assert child.search is None
    assert child.training.batch_size == 16


def test_a_bad_substitution_names_the_path(sentiment: dict[str, Any]) -> None:
    job = job_with(sentiment, parameters=[DROPOUT])
    with pytest.raises(SearchError, match=r"regularization\.dropout: 1\.5 does not fit the field"):
        trial_spec(job.spec, {"regularization.dropout": 1.5})
    with pytest.raises(SearchError, match=r"training\.scheduler: 'sideways' does not fit"):
        trial_spec(job.spec, {"training.scheduler": "sideways"})


def test_trial_manifest_is_a_labelled_valid_child(sentiment: dict[str, Any]) -> None:
    sentiment["metadata"]["namespace"] = "ml"
    job = job_with(sentiment, algorithm="grid", maxTrials=3, parameters=[SCHEDULER])
    plan = next_trials(job, [])[0]
    child = trial_manifest(job, plan)
    assert child["metadata"]["name"] == "sentiment-trial-0"
    assert child["metadata"]["namespace"] == "ml"
    assert child["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kubetune",
        "kubetune.dev/component": "trial",
        "kubetune.dev/job-name": "sentiment",
    }
    assert child["metadata"]["annotations"]["kubetune.dev/trial-number"] == "0"
    assert (
        plan.params["training.scheduler"]
        in child["metadata"]["annotations"]["kubetune.dev/trial-params"]
    )
    assert "ownerReferences" not in child["metadata"]
    assert (
        FineTuneJob.model_validate(child).spec.training.scheduler
        == plan.params["training.scheduler"]
    )


def test_the_longest_parent_name_leaves_room_for_the_last_trial(sentiment: dict[str, Any]) -> None:
    sentiment["metadata"]["name"] = "a" * 30  # the API refuses a longer search parent
    job = job_with(sentiment, parameters=[DROPOUT], maxTrials=1000)
    plan = next_trials(job, [])[0]
    last = TrialPlan(999, f"{'a' * 30}-trial-999", plan.params)
    manifest = trial_manifest(job, last)
    assert manifest["metadata"]["name"] == f"{'a' * 30}-trial-999"
    assert len(manifest["metadata"]["name"]) == 40


def completed(objectives: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "number": n,
            "name": f"s-trial-{n}",
            "state": "Complete",
            "objective": v,
            "params": {"regularization.dropout": n / 10},
        }
        for n, v in enumerate(objectives)
    ]


def test_best_trial_maximizes_accuracy_and_minimizes_loss(sentiment: dict[str, Any]) -> None:
    trials = [
        *completed([0.7, 0.9, 0.2, 0.9]),
        {"number": 4, "name": "s-trial-4", "state": "Pruned", "objective": 0.99},
    ]
    job = job_with(sentiment, maxTrials=5, parameters=[DROPOUT])
    best = best_trial(job.spec, trials)
    assert best is not None
    assert (best.number, best.objective) == (1, 0.9)
    assert best.params == {"regularization.dropout": 0.1}
    job = job_with(sentiment, maxTrials=5, parameters=[DROPOUT], objective={"metric": "loss"})
    best = best_trial(job.spec, trials)
    assert best is not None
    assert (best.number, best.objective) == (2, 0.2)
    assert best_trial(job.spec, []) is None


def test_objective_comes_from_the_child_metrics_with_the_task_default(
    sentiment: dict[str, Any],
) -> None:
    del sentiment["spec"]["evaluation"]
    job = job_with(sentiment, parameters=[DROPOUT])
    assert objective_of(job.spec, {"metrics": {"accuracy": 0.83, "loss": 0.4}}) == 0.83
    assert objective_of(job.spec, {"metrics": {"loss": 0.4}}) is None
    assert objective_of(job.spec, None) is None
    job = job_with(sentiment, parameters=[DROPOUT], objective={"metric": "f1Macro"})
    assert objective_of(job.spec, {"metrics": {"accuracy": 0.83, "f1Macro": 0.8}}) == 0.8


def test_search_status_reports_the_table_the_best_and_progress(sentiment: dict[str, Any]) -> None:
    job = job_with(sentiment, maxTrials=4, parameters=[DROPOUT])
    trials = [
        *completed([0.7, 0.8]),
        {"number": 2, "name": "s-trial-2", "state": "Running", "params": {}},
    ]
    status = search_status(job.spec, trials)
    assert [t["state"] for t in status["trials"]] == ["Complete", "Complete", "Running"]
    assert status["bestTrial"]["name"] == "s-trial-1"
    assert status["progress"] == {"step": 2, "totalSteps": 4, "percent": 50}
    assert status["metricSummary"] == "accuracy=0.8"
    assert search_outcome(job.spec, trials).phase == "Running"
    done = [*completed([0.7, 0.8, 0.6]), {"number": 3, "name": "s-trial-3", "state": "Failed"}]
    assert search_outcome(job.spec, done).phase == "Succeeded"


def test_search_status_points_the_parent_artifacts_at_the_best_trial_model(
    sentiment: dict[str, Any],
) -> None:
    job = job_with(sentiment, maxTrials=4, parameters=[DROPOUT])
    trials = completed([0.7, 0.8, 0.75])
    for trial in trials:
        trial["model"] = f"/output/{trial['name']}/model"
    status = search_status(job.spec, trials)
    assert status["artifacts"] == {"model": "/output/s-trial-1/model"}
    assert status["trials"][2]["model"] == "/output/s-trial-2/model"
    trials[1]["mergedModel"] = "/output/s-trial-1/merged"
    assert search_status(job.spec, trials)["artifacts"] == {
        "model": "/output/s-trial-1/model",
        "mergedModel": "/output/s-trial-1/merged",
    }
    del trials[1]["model"]
    assert search_status(job.spec, trials)["artifacts"] is None, "the best has no model yet"
    assert search_status(job.spec, [])["artifacts"] is None


def test_a_status_with_gaps_in_trial_numbers_is_refused(sentiment: dict[str, Any]) -> None:
    job = job_with(sentiment, parameters=[DROPOUT])
    with pytest.raises(
        SearchError, match=r"status.trials: trial numbers must be 0..1, got \[0, 2\]"
    ):
        next_trials(job, [completed([0.5])[0], {**completed([0.5])[0], "number": 2}])


def test_gp_sampler_proposes_within_bounds(sentiment: dict[str, Any]) -> None:
    pytest.importorskip("torch")
    job = job_with(
        sentiment,
        algorithm="bayesian",
        bayesianSampler="gp",
        maxTrials=12,
        parameters=[LEARNING_RATE, DROPOUT],
    )
    rates = [t["params"]["training.learningRate"] for t in run_search(job)]
    assert len(rates) == 12
    assert all(1e-5 <= r <= 1e-3 for r in rates)
