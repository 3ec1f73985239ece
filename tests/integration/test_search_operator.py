"""A hyperparameter search (a FineTuneJob with spec.search) run by the real operator.

The handlers run in a thread against the kmock emulator, as in test_operator.py. The
parent's trials are ordinary FineTuneJobs that the same handlers train; the emulator runs
no trainer, so the test plays each trial's trainer by patching the child's status (its
metrics, progress and phase) through the status subresource, from a known objective
surface, and watches what the parent does.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from kubetune_operator import search
from kubetune_operator.api import v1alpha1
from tests.kube.client import KubeClient
from tests.kube.operators import OperatorThread

TRIALS = "kubetune.dev/component=trial"
LEARNING_RATES = [1e-5, 1e-4]
WARMUPS = [0.0, 0.1]


def grid_search(sentiment: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The sentiment job as a 2 x 2 grid over learning rate and warmup, 2 trials at once."""
    sentiment["spec"]["search"] = {
        "algorithm": "grid",
        "parallelism": 2,
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "parameters": [
            {"path": "training.learningRate", "type": "float", "values": LEARNING_RATES},
            {"path": "training.warmupRatio", "type": "float", "values": WARMUPS},
        ],
        **extra,
    }
    return sentiment


def accuracy(params: dict[str, Any]) -> float:
    """The objective surface: best at learning rate 1e-4 with warmup 0.1 (0.75)."""
    return round(
        0.6 + 1000 * params["training.learningRate"] + 0.5 * params["training.warmupRatio"], 6
    )


def trials(kube: KubeClient) -> dict[str, dict[str, Any]]:
    """The trial FineTuneJobs by name."""
    found = kube.list_objects("FineTuneJob", "default", label_selector=TRIALS)
    return {child["metadata"]["name"]: child for child in found}


def params_of(child: dict[str, Any]) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads(
        child["metadata"]["annotations"]["kubetune.dev/trial-params"]
    )
    return recorded


def unfinished(kube: KubeClient) -> list[str]:
    return sorted(
        name
        for name, child in trials(kube).items()
        if child.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    )


def report(kube: KubeClient, name: str, **status: Any) -> None:
    """Play the trial's trainer: write its status as rank 0 would, once its pods can run
    (the operator has validated the trial and created its workers)."""
    kube.wait_for_object("FineTuneJob", name, lambda ftj: ftj.get("status", {}).get("phase"))
    kube.patch("FineTuneJob", name, {"status": status}, subresource="status")


def succeed(kube: KubeClient, name: str, value: float, step: int = 20) -> None:
    report(
        kube,
        name,
        phase="Succeeded",
        metrics={"accuracy": value},
        progress={"step": step},
        artifacts={"model": f"pvc://runs/{name}/model", "mergedModel": f"pvc://runs/{name}/merged"},
    )


def trial_state(kube: KubeClient, number: int, state: str) -> dict[str, Any]:
    def recorded(ftj: dict[str, Any]) -> bool:
        found = ftj.get("status", {}).get("trials", [])
        return len(found) > number and found[number]["state"] == state

    return kube.wait_for_object("FineTuneJob", "sentiment", recorded)


def trial_count(count: int) -> Callable[[dict[str, Any]], bool]:
    return lambda ftj: len(ftj.get("status", {}).get("trials", [])) == count


def finish_the_search(
    kube: KubeClient, surface: Callable[[dict[str, Any]], float] = accuracy
) -> None:
    """Succeed the unfinished trials one by one, lowest number first, checking parallelism
    at every step."""
    while True:
        active = sorted(unfinished(kube), key=lambda name: int(name.rsplit("-", 1)[1]))
        assert 1 <= len(active) <= 2, active
        succeed(kube, active[0], surface(params_of(trials(kube)[active[0]])))
        number = int(active[0].rsplit("-", 1)[1])
        trial_state(kube, number, "Complete")
        parent = kube.get("FineTuneJob", "sentiment")
        assert parent is not None
        if parent["status"]["phase"] == "Succeeded":
            return
        kube.wait_for(lambda: unfinished(kube) or None, "the next trial to start")


def assert_grid_covered_once_with_the_best(kube: KubeClient, created: dict[str, Any]) -> None:
    parent = kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda f: f["status"].get("phase") == "Succeeded"
    )
    children = trials(kube)
    assert sorted(children) == [f"sentiment-trial-{n}" for n in range(4)]
    points = sorted(
        (p["training.learningRate"], p["training.warmupRatio"])
        for p in map(params_of, children.values())
    )
    assert points == sorted(itertools.product(LEARNING_RATES, WARMUPS))
    recorded = parent["status"]["trials"]
    assert [t["number"] for t in recorded] == [0, 1, 2, 3]
    assert {t["state"] for t in recorded} == {"Complete"}
    best = parent["status"]["bestTrial"]
    assert best["params"] == {"training.learningRate": 1e-4, "training.warmupRatio": 0.1}
    assert best["objective"] == pytest.approx(0.75)
    assert children[best["name"]]["status"]["metrics"]["accuracy"] == pytest.approx(0.75)
    assert parent["status"]["artifacts"] == {
        "model": f"pvc://runs/{best['name']}/model",
        "mergedModel": f"pvc://runs/{best['name']}/merged",
    }
    assert parent["status"]["progress"]["step"] == 4
    assert parent["status"]["metricSummary"] == "accuracy=0.75"
    succeeded = [c for c in parent["status"]["conditions"] if c["type"] == "Succeeded"]
    assert succeeded[0]["status"] == "True"
    kube.wait_for_event(created, reason="Created", count=4)
    kube.wait_for_event(created, reason="Succeeded")


def test_a_grid_search_runs_each_point_once_within_parallelism_and_finds_the_best(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    created = kube.create(grid_search(sentiment))
    parent = kube.wait_for_object("FineTuneJob", "sentiment", trial_count(2))

    assert parent["status"]["phase"] == "Running"
    assert [t["state"] for t in parent["status"]["trials"]] == ["Pending", "Pending"]
    children = kube.wait_for(lambda: len(trials(kube)) == 2 and trials(kube), "two trials")
    assert sorted(children) == ["sentiment-trial-0", "sentiment-trial-1"]
    for child in children.values():
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["kind"], owner["controller"]) == (
            created["metadata"]["uid"],
            "FineTuneJob",
            True,
        )
        assert child["metadata"]["labels"]["kubetune.dev/job-name"] == "sentiment"
        assert "search" not in child["spec"]
        params = params_of(child)
        assert child["spec"]["training"]["learningRate"] == params["training.learningRate"]
        assert child["spec"]["training"]["warmupRatio"] == params["training.warmupRatio"]
    # Each trial is trained like any job: the same handlers give it its worker Job.
    kube.wait_for(lambda: kube.get("Job", "sentiment-trial-0-workers"), "trial 0's workers")

    finish_the_search(kube)
    assert_grid_covered_once_with_the_best(kube, created)


def test_an_operator_restart_in_the_middle_starts_no_trial_twice(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    first = operator()
    created = kube.create(grid_search(sentiment))
    kube.wait_for_object("FineTuneJob", "sentiment", trial_count(2))
    # Stopped once the trials are validated: playing their trainer needs a phase.
    kube.wait_for(
        lambda: (
            (
                len(trials(kube)) == 2
                and all(child.get("status", {}).get("phase") for child in trials(kube).values())
            )
            or None
        ),
        "two validated trials",
    )
    # kopf posts Events in the background and drops the unposted ones when it stops.
    kube.wait_for_event(created, reason="Created", count=2)
    first.stop()
    uids = {name: child["metadata"]["uid"] for name, child in trials(kube).items()}
    succeed(kube, "sentiment-trial-0", accuracy(params_of(trials(kube)["sentiment-trial-0"])))

    operator()
    parent = kube.wait_for_object("FineTuneJob", "sentiment", trial_count(3))
    assert parent["status"]["trials"][0]["state"] == "Complete"
    children = trials(kube)
    assert sorted(children) == [f"sentiment-trial-{n}" for n in range(3)]
    assert {name: children[name]["metadata"]["uid"] for name in uids} == uids

    finish_the_search(kube)
    assert_grid_covered_once_with_the_best(kube, created)


def test_a_trial_worse_than_the_median_is_pruned_and_the_next_one_starts(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    job = grid_search(
        sentiment,
        parallelism=1,
        earlyStopping={"minCompletedTrials": 1, "warmupEvaluations": 0},
    )
    created = kube.create(job)
    kube.wait_for(lambda: kube.get("FineTuneJob", "sentiment-trial-0"), "trial 0")
    succeed(kube, "sentiment-trial-0", 0.9, step=10)
    trial_state(kube, 0, "Complete")
    kube.wait_for(lambda: kube.get("FineTuneJob", "sentiment-trial-1"), "trial 1")

    # Trial 1's first evaluation: worse than trial 0's at its first evaluation.
    report(kube, "sentiment-trial-1", metrics={"accuracy": 0.5}, progress={"step": 10})
    parent = trial_state(kube, 1, "Pruned")
    kube.wait_until_gone("FineTuneJob", "sentiment-trial-1")

    pruned = parent["status"]["trials"][1]
    assert pruned["intermediate"] == {"10": 0.5}
    # The operator writes `objective: null`; the API server drops a null of a field that
    # is not nullable, so the stored trial has no objective at all.
    assert "objective" not in pruned
    assert parent["status"]["trials"][0]["intermediate"] == {"10": 0.9}
    kube.wait_for(lambda: kube.get("FineTuneJob", "sentiment-trial-2"), "trial 2")
    assert unfinished(kube) == ["sentiment-trial-2"]
    kube.wait_for_event(created, reason="TrialPruned")


def test_a_deleted_trial_is_created_again_with_its_values(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    created = kube.create(grid_search(sentiment))
    first = kube.wait_for(lambda: kube.get("FineTuneJob", "sentiment-trial-0"), "trial 0")
    report(kube, "sentiment-trial-0", metrics={"accuracy": 0.6}, progress={"step": 10})
    kube.wait_for_object(
        "FineTuneJob",
        "sentiment",
        lambda f: (f.get("status", {}).get("trials") or [{}])[0].get("intermediate") == {"10": 0.6},
    )

    kube.delete("FineTuneJob", "sentiment-trial-0")
    again = kube.wait_for(
        lambda: (
            (child := kube.get("FineTuneJob", "sentiment-trial-0"))
            and child["metadata"]["uid"] != first["metadata"]["uid"]
            and child
        ),
        "trial 0 created again",
    )

    assert params_of(again) == params_of(first)
    assert again["spec"]["training"] == first["spec"]["training"]
    kube.wait_for_event(
        created, message="trial 0: created sentiment-trial-0 again (it was deleted)"
    )
    finish_the_search(kube)
    parent = kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda f: f["status"].get("phase") == "Succeeded"
    )
    assert [t["state"] for t in parent["status"]["trials"]] == ["Complete"] * 4
    assert parent["status"]["trials"][0]["intermediate"] == {
        "10": 0.6,
        "20": accuracy(params_of(first)),
    }


def sampled_search(sentiment: dict[str, Any], algorithm: str) -> dict[str, Any]:
    """Six trials, two at once, over a log-scaled learning rate and a linear warmup."""
    sentiment["spec"]["search"] = {
        "algorithm": algorithm,
        "parallelism": 2,
        "maxTrials": 6,
        "seed": 7,
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "parameters": [
            {
                "path": "training.learningRate",
                "type": "float",
                "min": 1e-6,
                "max": 1e-3,
                "log": True,
            },
            {"path": "training.warmupRatio", "type": "float", "min": 0.0, "max": 0.2},
        ],
    }
    return sentiment


def smooth_accuracy(params: dict[str, Any]) -> float:
    """A surface with its top at learning rate 1e-4 and warmup 0.1."""
    distance = abs(math.log10(params["training.learningRate"]) + 4) + abs(
        params["training.warmupRatio"] - 0.1
    )
    return round(0.9 - 0.1 * distance, 6)


def replayed_params(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """What the pure engine proposes when the trials finish as finish_the_search finishes
    them (lowest number first, each at step 20): the operator must propose the same."""
    parent = v1alpha1.FineTuneJob.model_validate(manifest)
    records: list[dict[str, Any]] = []
    while True:
        for plan in search.next_trials(parent, records):
            records.append(
                {
                    "number": plan.number,
                    "name": plan.name,
                    "state": "Pending",
                    "params": plan.params,
                }
            )
        active = [r for r in records if r["state"] == "Pending"]
        if not active:
            return [r["params"] for r in records]
        value = smooth_accuracy(active[0]["params"])
        active[0] |= {"state": "Complete", "objective": value, "intermediate": {"20": value}}


@pytest.mark.parametrize("algorithm", ["random", "bayesian"])
def test_a_sampled_search_stays_in_bounds_and_proposes_what_the_engine_proposes(
    kube: KubeClient,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    algorithm: str,
) -> None:
    operator()
    manifest = sampled_search(sentiment, algorithm)
    kube.create(manifest)
    kube.wait_for_object("FineTuneJob", "sentiment", trial_count(2))

    finish_the_search(kube, smooth_accuracy)

    parent = kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda f: f["status"].get("phase") == "Succeeded"
    )
    recorded = [t["params"] for t in parent["status"]["trials"]]
    assert len(recorded) == 6
    for params in recorded:
        assert 1e-6 <= params["training.learningRate"] <= 1e-3
        assert 0.0 <= params["training.warmupRatio"] <= 0.2
    assert len({tuple(sorted(p.items())) for p in recorded}) == 6
    assert recorded == replayed_params(manifest)
    best = max(parent["status"]["trials"], key=lambda t: t["objective"])
    assert parent["status"]["bestTrial"]["number"] == best["number"]
    assert parent["status"]["bestTrial"]["objective"] == pytest.approx(best["objective"])


def test_a_failed_search_stops_its_unfinished_trials(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    created = kube.create(grid_search(sentiment, maxFailedTrials=0))
    kube.wait_for(lambda: len(trials(kube)) == 2 or None, "two trials")

    report(kube, "sentiment-trial-0", phase="Failed")
    parent = kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda f: f["status"].get("phase") == "Failed"
    )

    assert [t["state"] for t in parent["status"]["trials"]] == ["Failed", "Stopped"]
    kube.wait_until_gone("FineTuneJob", "sentiment-trial-1")
    assert list(trials(kube)) == ["sentiment-trial-0"]
    failed = next(c for c in parent["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SearchFailed"
    assert failed["message"] == (
        "1 trials failed; search.maxFailedTrials is 0; "
        "stopped the unfinished trials 1 (sentiment-trial-1)"
    )
    kube.wait_for_event(created, message=failed["message"])
