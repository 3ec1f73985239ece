"""status.py: the FineTuneJob status that hand-made Jobs and pods (shaped like the API's) show.

Every StatusUpdate goes through `look`, which also checks that the patch merged into the
status fits FineTuneJobStatus (camelCase aliases only, as the API server stores it).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from kubetune_operator.api.v1alpha1 import FineTuneJobStatus
from kubetune_operator.status import (
    Decision,
    Event,
    Reason,
    StatusUpdate,
    condition,
    observe,
    restart_of,
    validated,
    validation_failed,
)

NAME = "sentiment"
T0 = "2025-03-01T11:00:00Z"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


# Fixtures shaped like API objects.


def finetunejob(
    status: dict[str, Any] | None = None,
    *,
    generation: int = 1,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": NAME, "namespace": "ml", "generation": generation, "uid": "ftj-uid"},
        "spec": spec or {"resources": {"workers": 2}},
    }
    if status is not None:
        body["status"] = status
    return body


def job_uid(restart: int) -> str:
    return f"job-uid-{restart}"


def worker_job(
    *,
    restart: int = 0,
    workers: int = 2,
    conditions: tuple[dict[str, Any], ...] = (),
    suspend: bool = False,
    start_time: str | None = T0,
    completion_time: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": f"{NAME}-workers",
        "namespace": "ml",
        "uid": job_uid(restart),
        "annotations": {"kubetune.dev/restart": str(restart)},
        "labels": {"kubetune.dev/job-name": NAME},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2025-03-01T11:59:00Z"
    status: dict[str, Any] = {"conditions": list(conditions)}
    if start_time:
        status["startTime"] = start_time
    if completion_time:
        status["completionTime"] = completion_time
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "parallelism": workers,
            "completions": workers,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "suspend": suspend,
        },
        "status": status,
    }


def job_condition(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def pod(
    index: int,
    *,
    phase: str = "Running",
    state: dict[str, Any] | None = None,
    restart: int = 0,
    conditions: tuple[dict[str, Any], ...] = (),
    deleting: bool = False,
) -> dict[str, Any]:
    """A worker pod of the Job of `restart`; the trainer's state defaults to its phase's."""
    metadata: dict[str, Any] = {
        "name": f"{NAME}-workers-{index}-r{restart}",
        "namespace": "ml",
        "labels": {
            "kubetune.dev/job-name": NAME,
            "kubetune.dev/component": "worker",
            "batch.kubernetes.io/job-completion-index": str(index),
            "batch.kubernetes.io/controller-uid": job_uid(restart),
        },
        "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": f"{NAME}-workers",
             "uid": job_uid(restart), "controller": True}
        ],
    }  # fmt: skip
    if deleting:
        metadata["deletionTimestamp"] = "2025-03-01T11:59:30Z"
    default_state = {
        "Running": running(),
        "Pending": waiting("ContainerCreating", ""),
        "Succeeded": terminated(0, "Completed"),
    }.get(phase, {})
    container = {
        "name": "trainer",
        "image": "ghcr.io/kubetune/trainer:0.1",
        "state": state if state is not None else default_state,
        "restartCount": 0,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "status": {
            "phase": phase,
            "conditions": list(conditions),
            "containerStatuses": [container],
        },
    }


def running() -> dict[str, Any]:
    return {"running": {"startedAt": "2025-03-01T11:01:00Z"}}


def waiting(reason: str, message: str) -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": message}}


def terminated(
    exit_code: int, reason: str = "Error", message: str = "", finished_at: str = T0
) -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "message": message,
            "finishedAt": finished_at,
        }
    }


def failed(index: int, exit_code: int, reason: str = "Error", **kwargs: Any) -> dict[str, Any]:
    return pod(index, phase="Failed", state=terminated(exit_code, reason), **kwargs)


def unschedulable(message: str) -> dict[str, Any]:
    return {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
    }


# Running observe, checking every patch against the model.


def look(
    ftj: dict[str, Any],
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    *,
    now: datetime = NOW,
    backoff_limit: int = 3,
    deadline: int | None = None,
    stall: str | None = None,
) -> StatusUpdate:
    update = observe(
        ftj,
        job,
        pods,
        now=now,
        backoff_limit=backoff_limit,
        active_deadline_seconds=deadline,
        stall_timeout=stall,
    )
    assert_fits_model(ftj, update.patch)
    return update


def assert_fits_model(ftj: dict[str, Any], patch: dict[str, Any]) -> None:
    status = {**(ftj.get("status") or {}), **patch}
    FineTuneJobStatus.model_validate(status, by_name=False)


def applied(ftj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The FineTuneJob after the merge patch (the patches replace whole top-level fields)."""
    after = copy.deepcopy(ftj)
    after["status"] = {**(after.get("status") or {}), **patch}
    return after


def conditions_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def running_status() -> dict[str, Any]:
    """The status of a job whose 2 workers run (restart 0), as observe wrote it."""
    update = look(finetunejob(), worker_job(), [pod(0), pod(1)])
    status: dict[str, Any] = applied(finetunejob(), update.patch)["status"]
    return status


# Pending and its reasons.


def test_no_job_yet_is_pending_while_it_is_created() -> None:
    update = look(finetunejob(), None, [])
    assert update.patch["phase"] == "Pending"
    assert update.patch["observedGeneration"] == 1
    assert update.patch["workers"] == {"pending": 0, "running": 0, "succeeded": 0, "failed": 0}
    assert "startTime" not in update.patch
    assert conditions_of(update.patch)["Running"] == {
        "type": "Running",
        "status": "False",
        "reason": "Created",
        "message": "creating the worker Job",
        "lastTransitionTime": "2025-03-01T12:00:00Z",
        "observedGeneration": 1,
    }
    assert update.events == [Event("Normal", Reason.Created, "creating the worker Job")]
    assert update.decision.action == "none"


def test_a_job_without_pods_waits_for_the_job_controller_and_starts_the_clock() -> None:
    update = look(finetunejob(), worker_job(), [])
    assert (update.patch["phase"], update.patch["startTime"]) == ("Pending", T0)
    running_condition = conditions_of(update.patch)["Running"]
    assert running_condition["reason"] == "Pending"
    assert running_condition["message"] == "waiting for the Job controller to create 2 workers"


def test_unschedulable_workers_show_the_schedulers_message() -> None:
    scheduler = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    pending = pod(1, phase="Pending", state={}, conditions=(unschedulable(scheduler),))
    update = look(finetunejob(), worker_job(), [pod(0, phase="Pending"), pending])
    message = f"worker 1 ({NAME}-workers-1-r0) cannot be scheduled: {scheduler}"
    assert update.patch["phase"] == "Pending"
    assert update.patch["workers"]["pending"] == 2
    assert conditions_of(update.patch)["Running"]["reason"] == "Unschedulable"
    assert conditions_of(update.patch)["Running"]["message"] == message
    assert update.events == [Event("Warning", "Unschedulable", message)]
    assert update.decision.action == "none"


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull"])
def test_an_image_being_pulled_with_back_off_is_pending_with_the_kubelets_message(
    reason: str,
) -> None:
    kubelet = 'Back-off pulling image "ghcr.io/kubetune/trainer:0.1": rpc error: code = Unavailable'
    pending = pod(0, phase="Pending", state=waiting(reason, kubelet))
    update = look(finetunejob(), worker_job(), [pending, pod(1, phase="Pending")])
    assert update.patch["phase"] == "Pending"
    assert conditions_of(update.patch)["Running"]["reason"] == reason
    assert conditions_of(update.patch)["Running"]["message"] == (
        f"worker 0 ({NAME}-workers-0-r0): {kubelet}"
    )
    assert update.decision.action == "none"


@pytest.mark.parametrize(
    "kubelet",
    [
        'failed to pull and unpack image "ghcr.io/kubetune/trainer:0.1": '
        'failed to resolve reference "ghcr.io/kubetune/trainer:0.1": ghcr.io/kubetune/trainer:0.1: '
        "not found",
        "rpc error: code = Unknown desc = Error response from daemon: manifest unknown",
        "pull access denied for kubetune/trainr, repository does not exist or may require "
        "'docker login'",
    ],
)
def test_an_image_that_does_not_exist_fails_fast(kubelet: str) -> None:
    pending = pod(0, phase="Pending", state=waiting("ErrImagePull", kubelet))
    update = look(finetunejob(), worker_job(), [pending, pod(1, phase="Pending")])
    message = (
        f"the image ghcr.io/kubetune/trainer:0.1 does not exist: {kubelet}; "
        "check spec.resources.image"
    )
    assert update.decision == Decision("fail", "ImageNotFound", message, delete_job=True)
    assert update.patch["phase"] == "Failed"
    assert update.patch["completionTime"] == "2025-03-01T12:00:00Z"
    conditions = conditions_of(update.patch)
    assert (conditions["Failed"]["status"], conditions["Failed"]["reason"]) == (
        "True",
        "ImageNotFound",
    )
    assert (conditions["Succeeded"]["status"], conditions["Running"]["status"]) == (
        "False",
        "False",
    )
    assert update.events == [Event("Warning", "ImageNotFound", message)]


def test_a_missing_secret_shows_the_container_config_error() -> None:
    kubelet = 'secret "hf-token" not found'
    pending = pod(0, phase="Pending", state=waiting("CreateContainerConfigError", kubelet))
    update = look(finetunejob(), worker_job(), [pending])
    assert update.patch["phase"] == "Pending"
    assert conditions_of(update.patch)["Running"]["reason"] == "CreateContainerConfigError"
    assert conditions_of(update.patch)["Running"]["message"] == (
        f"worker 0 ({NAME}-workers-0-r0): {kubelet}"
    )
    assert update.decision.action == "none"


# Running and succeeding.


def test_running_workers_make_the_job_running() -> None:
    update = look(finetunejob(), worker_job(), [pod(0), pod(1, phase="Pending")])
    assert update.patch["phase"] == "Running"
    assert update.patch["workers"] == {"pending": 1, "running": 1, "succeeded": 0, "failed": 0}
    assert update.patch["restarts"] == 0
    assert update.patch["startTime"] == T0
    assert conditions_of(update.patch)["Running"]["status"] == "True"
    assert conditions_of(update.patch)["Running"]["message"] == "1 of 2 workers running"
    assert update.events == [Event("Normal", "Running", "1 of 2 workers running")]


def test_start_time_is_when_a_worker_first_ran_if_the_job_has_none() -> None:
    update = look(finetunejob(), worker_job(start_time=None), [pod(0)])
    assert update.patch["startTime"] == "2025-03-01T12:00:00Z"


def test_a_complete_job_succeeds_and_kubectl_wait_finds_succeeded_true() -> None:
    status = {**running_status(), "metricSummary": "accuracy=0.912"}
    complete = worker_job(
        conditions=(job_condition("Complete"),), completion_time="2025-03-01T11:58:00Z"
    )
    update = look(finetunejob(status), complete, [pod(0, phase="Succeeded")] * 2)
    message = "all 2 workers finished; accuracy=0.912"
    assert update.patch["phase"] == "Succeeded"
    assert update.patch["completionTime"] == "2025-03-01T11:58:00Z"
    assert update.patch["workers"] == {"pending": 0, "running": 0, "succeeded": 2, "failed": 0}
    conditions = conditions_of(update.patch)
    assert conditions["Succeeded"] == {
        "type": "Succeeded",
        "status": "True",
        "reason": "Succeeded",
        "message": message,
        "lastTransitionTime": "2025-03-01T12:00:00Z",
        "observedGeneration": 1,
    }
    assert (conditions["Failed"]["status"], conditions["Running"]["status"]) == ("False", "False")
    assert update.events == [Event("Normal", "Succeeded", message)]


def test_workers_that_finish_after_the_job_still_count() -> None:
    """Pods and Jobs come on separate watches: the Job can be seen complete while a pod
    still shows Running."""
    complete = worker_job(conditions=(job_condition("Complete"),))
    ftj = finetunejob(running_status())
    done = applied(ftj, look(ftj, complete, [pod(0, phase="Succeeded"), pod(1)]).patch)
    assert done["status"]["workers"] == {"pending": 0, "running": 1, "succeeded": 1, "failed": 0}

    later = look(done, complete, [pod(0, phase="Succeeded"), pod(1, phase="Succeeded")])

    assert later.patch == {"workers": {"pending": 0, "running": 0, "succeeded": 2, "failed": 0}}
    assert later.events == []
    # Pods of a Job being deleted (cleanup) are not counted: the last counts stay.
    assert look(applied(done, later.patch), worker_job(deleting=True), [pod(0)]).patch == {}


def test_a_finished_job_keeps_its_status_when_its_children_are_cleaned_up() -> None:
    complete = worker_job(conditions=(job_condition("Complete"),))
    ftj = finetunejob(running_status())
    done = applied(ftj, look(ftj, complete, []).patch)
    assert look(done, None, []) == StatusUpdate({}, [], Decision("none", "", ""))


# Failures.


def test_exit_code_3_fails_with_invalid_input_and_points_at_the_evidence() -> None:
    refusal = pod(0, phase="Failed", state=terminated(3, message="kubetune trainer: no rows left"))
    update = look(finetunejob(running_status()), worker_job(), [refusal, pod(1)])
    pod_name = f"{NAME}-workers-0-r0"
    message = (
        f"the trainer refused its input (exit code 3) on worker 0 ({pod_name}): kubetune "
        f"trainer: no rows left; see status.dataValidation and `kubectl logs {pod_name} -c trainer`"
    )
    assert update.decision == Decision("fail", "InvalidInput", message)
    assert update.patch["phase"] == "Failed"
    assert update.patch["lastFailure"] == {"reason": "InvalidInput", "restart": 0, "exitCode": 3}
    assert conditions_of(update.patch)["Failed"]["reason"] == "InvalidInput"
    assert update.events == [Event("Warning", "InvalidInput", message)]


def test_rejected_data_fails_without_restart_even_when_accelerate_reports_exit_code_1() -> None:
    status = {
        **running_status(),
        "dataValidation": {"passed": False, "message": "0 rows left after the quality rules"},
    }
    update = look(finetunejob(status), worker_job(), [failed(0, 1), pod(1)])
    assert update.decision.action == "fail"
    assert update.decision.reason == "InvalidInput"
    assert "the data was rejected: 0 rows left after the quality rules" in update.decision.message


def test_the_trainers_termination_record_beats_the_exit_code_accelerate_reports() -> None:
    record = '{"exitCode": 3, "message": "data.train: file not found"}'
    refusal = pod(0, phase="Failed", state=terminated(1, message=record))
    update = look(finetunejob(running_status()), worker_job(), [refusal, pod(1)])
    assert update.decision.action == "fail"
    assert update.decision.reason == "InvalidInput"
    assert "(exit code 3) on worker 0" in update.decision.message
    assert "data.train: file not found" in update.decision.message


def test_a_termination_message_that_is_not_the_trainers_record_keeps_the_exit_code() -> None:
    crash = pod(0, phase="Failed", state=terminated(1, message='{"exitCode": "three"}'))
    update = look(finetunejob(running_status()), worker_job(), [crash, pod(1)])
    assert update.decision.action == "restart"
    assert "exit code 1" in update.decision.message


def test_exit_code_4_names_what_the_trainer_said_last_such_as_a_full_disk() -> None:
    said = (
        "no space left on the device of /mnt/kubetune/pvc/runs/checkpoints while saving "
        "checkpoint step-00000040; the last complete checkpoint, step-00000020, is kept"
    )
    full = pod(0, phase="Failed", state=terminated(4, message=said))
    update = look(finetunejob(running_status()), worker_job(), [full, pod(1)])
    assert update.decision.reason == "TrainingFailed"
    assert f"(exit code 4) on worker 0 ({NAME}-workers-0-r0): {said}; see" in (
        update.decision.message
    )


def test_exit_code_4_fails_with_training_failed_and_the_diagnosis() -> None:
    status = {
        **running_status(),
        "diagnosis": {"verdict": "Diverged", "suggestion": "lower training.learningRate"},
    }
    update = look(finetunejob(status), worker_job(), [failed(0, 4), failed(1, 4)])
    message = (
        f"the trainer's result must not be used (exit code 4) on worker 0 ({NAME}-workers-0-r0)"
        ": training diverged; lower training.learningRate; see status.diagnosis, "
        "status.biasAudit and report.json"
    )
    assert update.decision == Decision("fail", "TrainingFailed", message)
    assert update.patch["workers"]["failed"] == 2


def test_exit_code_5_fails_with_budget_exceeded_without_a_restart() -> None:
    said = "the GPU budget is spent: 2.001 GPU-hours used, runPolicy.maxGpuHours is 2"
    record = json.dumps({"exitCode": 5, "message": said})
    stopped = [pod(i, phase="Failed", state=terminated(1, message=record)) for i in (0, 1)]
    update = look(finetunejob(running_status()), worker_job(), stopped)
    message = (
        f"the trainer stopped at its GPU budget (exit code 5) on worker 0 ({NAME}-workers-0-r0)"
        f": {said}; raise spec.runPolicy.maxGpuHours and start a job on the same output to "
        "continue"
    )
    assert update.decision == Decision("fail", "BudgetExceeded", message)
    assert update.patch["phase"] == "Failed"
    assert update.patch["lastFailure"] == {"reason": "BudgetExceeded", "restart": 0, "exitCode": 5}
    assert conditions_of(update.patch)["Failed"]["reason"] == "BudgetExceeded"


def test_a_failed_bias_gate_with_on_failure_fail_is_training_failed() -> None:
    status = {
        **running_status(),
        "biasAudit": {"verdict": "Failed", "worstGroup": "gender=f", "message": "ratio 0.61"},
    }
    spec = {"resources": {"workers": 2}, "bias": {"onFailure": "fail"}}
    update = look(finetunejob(status, spec=spec), worker_job(), [failed(0, 1), pod(1)])
    assert update.decision.reason == "TrainingFailed"
    assert "the bias audit failed with bias.onFailure fail (worst group gender=f): ratio 0.61" in (
        update.decision.message
    )


def test_a_crashed_worker_restarts_the_whole_group() -> None:
    ftj = finetunejob(running_status())
    update = look(ftj, worker_job(), [failed(1, 1), pod(0)])
    message = (
        f"worker 1 ({NAME}-workers-1-r0) failed with exit code 1 (Error); restarting the "
        "worker group from its last checkpoint (restart 1 of 3)"
    )
    assert update.decision == Decision("restart", "WorkerFailed", message, delete_job=True)
    assert update.patch["restarts"] == 1
    assert "phase" not in update.patch  # still Running
    assert conditions_of(update.patch)["Running"]["reason"] == "Restarting"
    assert update.patch["lastFailure"] == {"reason": "WorkerFailed", "restart": 0, "exitCode": 1}
    assert update.events == [Event("Warning", "Restarting", message)]


def test_the_same_failure_seen_again_changes_nothing_and_still_asks_for_the_restart() -> None:
    ftj = finetunejob(running_status())
    pods = [failed(1, 1), pod(0)]
    first = look(ftj, worker_job(), pods)
    again = look(applied(ftj, first.patch), worker_job(), pods, now=LATER)
    assert (again.patch, again.events) == ({}, [])
    assert again.decision == first.decision


@pytest.mark.parametrize("deleting", [False, True], ids=["gone", "being-deleted"])
def test_while_the_failed_job_is_replaced_the_status_says_restarting(deleting: bool) -> None:
    ftj = finetunejob(running_status())
    restarting = applied(ftj, look(ftj, worker_job(), [failed(1, 1), pod(0)]).patch)
    job = worker_job(deleting=True) if deleting else None
    update = look(restarting, job, [failed(1, 1), pod(0)], now=LATER)
    assert update.patch == {"workers": {"pending": 0, "running": 0, "succeeded": 0, "failed": 0}}
    assert update.events == []
    assert update.decision.action == "none"
    assert restarting["status"]["restarts"] == 1  # the handler creates the Job with restart 1


def test_the_new_group_ignores_the_pods_of_the_old_one() -> None:
    ftj = finetunejob(running_status())
    restarting = applied(ftj, look(ftj, worker_job(), [failed(1, 1), pod(0)]).patch)
    old_pods = [failed(1, 1), pod(0, deleting=True)]
    new_pods = [pod(0, restart=1), pod(1, restart=1)]
    update = look(restarting, worker_job(restart=1), old_pods + new_pods, now=LATER)
    assert update.patch["workers"] == {"pending": 0, "running": 2, "succeeded": 0, "failed": 0}
    assert "restarts" not in update.patch  # still 1
    assert conditions_of(update.patch)["Running"]["message"] == "2 of 2 workers running (restart 1)"
    assert update.events == [Event("Normal", "Running", "2 of 2 workers running (restart 1)")]
    assert update.decision.action == "none"


def test_without_uids_the_restart_annotation_tells_the_groups_apart() -> None:
    def without_uids(obj: dict[str, Any], restart: int) -> dict[str, Any]:
        obj["metadata"].pop("uid", None)
        obj["metadata"].pop("ownerReferences", None)
        obj["metadata"]["labels"].pop("batch.kubernetes.io/controller-uid", None)
        obj["metadata"].setdefault("annotations", {})["kubetune.dev/restart"] = str(restart)
        return obj

    job = without_uids(worker_job(restart=1), 1)
    pods = [without_uids(failed(0, 1), 0), without_uids(pod(0, restart=1), 1)]
    update = look(finetunejob(), job, pods)
    assert update.patch["workers"] == {"pending": 0, "running": 1, "succeeded": 0, "failed": 0}
    assert update.decision.action == "none"


EVICTED = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "EvictionByEvictionAPI",
    "message": "Eviction API: evicting",
}


def test_an_evicted_worker_restarts_the_group_without_using_the_backoff_limit() -> None:
    ftj = finetunejob(running_status())
    evicted = pod(1, state=terminated(143), conditions=(EVICTED,), deleting=True)
    update = look(ftj, worker_job(), [failed(0, 1), evicted], backoff_limit=0)
    message = (
        f"worker 1 ({NAME}-workers-1-r0) was disrupted (EvictionByEvictionAPI: Eviction API: "
        "evicting); restarting the worker group from its last checkpoint (disruption 1, not "
        "counted against runPolicy.backoffLimit)"
    )
    assert update.decision == Decision("restart", "WorkerDisrupted", message, delete_job=True)
    assert (update.patch["restarts"], update.patch["disruptions"]) == (1, 1)
    assert update.patch["lastFailure"] == {"reason": "WorkerDisrupted", "restart": 0}
    again = look(applied(ftj, update.patch), worker_job(), [failed(0, 1), evicted], now=LATER)
    assert (again.patch, again.events) == ({}, [])
    assert again.decision == update.decision


def test_a_job_failed_by_its_disruption_rule_restarts_after_the_pod_is_gone() -> None:
    rule = job_condition(
        "Failed",
        "PodFailurePolicy",
        f"Pod ml/{NAME}-workers-0-r0 has condition DisruptionTarget matching FailJob rule at "
        "index 0",
    )
    update = look(finetunejob(running_status()), worker_job(conditions=(rule,)), [])
    assert update.decision.reason == "WorkerDisrupted"
    assert update.decision.message.startswith(
        "a worker was disrupted (evicted, preempted or its node drained): Pod ml/"
    )
    assert update.patch["disruptions"] == 1


def test_disruptions_do_not_count_against_the_backoff_limit_failures_do() -> None:
    status = {**running_status(), "restarts": 2, "disruptions": 2}
    ftj = finetunejob(status)
    first = look(ftj, worker_job(restart=2), [failed(0, 1, restart=2)], backoff_limit=1)
    assert first.decision.action == "restart"
    assert first.decision.message.endswith("(restart 1 of 1)")
    assert "disruptions" not in first.patch
    ftj = applied(ftj, first.patch)
    second = look(ftj, worker_job(restart=3), [failed(0, 1, restart=3)], backoff_limit=1)
    assert second.decision.reason == "BackoffLimitExceeded"
    assert second.decision.message.startswith("the worker group failed 2 times (1 restarts,")


def test_the_pod_failure_policy_names_the_condition_status_reads() -> None:
    from kubetune_operator.builders import DISRUPTION_RULE
    from kubetune_operator.status import DISRUPTION_CONDITION

    assert DISRUPTION_RULE["onPodConditions"] == [{"type": DISRUPTION_CONDITION, "status": "True"}]


def test_the_backoff_limit_bounds_the_restarts() -> None:
    status = {**running_status(), "restarts": 3}
    update = look(finetunejob(status), worker_job(restart=3), [failed(0, 1, restart=3)])
    message = (
        "the worker group failed 4 times (3 restarts, runPolicy.backoffLimit 3); last cause: "
        f"worker 0 ({NAME}-workers-0-r3) failed with exit code 1 (Error)"
    )
    assert update.decision == Decision("fail", "BackoffLimitExceeded", message)
    assert update.patch["phase"] == "Failed"
    assert "restarts" not in update.patch


def test_a_backoff_limit_of_0_fails_at_the_first_failure() -> None:
    update = look(finetunejob(running_status()), worker_job(), [failed(0, 1)], backoff_limit=0)
    assert update.decision.reason == "BackoffLimitExceeded"
    assert update.decision.message.startswith("the worker group failed 1 times (0 restarts")


def test_each_restart_counts_until_the_limit() -> None:
    ftj = finetunejob(running_status())
    decisions = []
    for restart in range(3):
        job, pods = worker_job(restart=restart), [pod(0, restart=restart)]
        ftj = applied(ftj, look(ftj, job, pods).patch)
        update = look(ftj, job, [failed(1, 137, restart=restart), *pods])
        decisions.append(update.decision.action)
        ftj = applied(ftj, update.patch)
        assert ftj["status"]["restarts"] == restart + 1
    last = look(ftj, worker_job(restart=3), [failed(1, 1, restart=3)])
    assert decisions == ["restart", "restart", "restart"]
    assert (last.decision.action, last.decision.reason) == ("fail", "BackoffLimitExceeded")


def test_a_failed_job_without_pods_left_restarts_with_the_jobs_message() -> None:
    gave_up = job_condition(
        "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    )
    failed_job = worker_job(conditions=(gave_up,))
    update = look(finetunejob(running_status()), failed_job, [])
    assert update.decision.action == "restart"
    assert update.decision.message == (
        "the worker Job failed (BackoffLimitExceeded): Job has reached the specified backoff "
        "limit; restarting the worker group from its last checkpoint (restart 1 of 3)"
    )


def test_an_oom_kill_outranks_the_collective_errors_it_causes_on_other_workers() -> None:
    early_error = pod(0, phase="Failed", state=terminated(1, finished_at="2025-03-01T11:50:00Z"))
    oom = pod(1, phase="Failed", state=terminated(137, "OOMKilled", finished_at=T0))
    status = {**running_status(), "progress": {"step": 120}}
    update = look(finetunejob(status), worker_job(), [early_error, oom])
    assert update.decision.reason == "OOMKilled"
    assert update.decision.message.startswith(
        f"worker 1 ({NAME}-workers-1-r0) was OOMKilled at step 120 (exit code 137); restarting"
    )
    assert update.patch["lastFailure"] == {
        "reason": "OOMKilled",
        "restart": 0,
        "step": 120,
        "exitCode": 137,
    }


def oom_then_again(first_step: int, second_step: int) -> StatusUpdate:
    status = {**running_status(), "progress": {"step": first_step}}
    ftj = finetunejob(status)
    ftj = applied(ftj, look(ftj, worker_job(), [failed(0, 137, "OOMKilled")]).patch)
    ftj["status"]["progress"] = {"step": second_step}
    return look(ftj, worker_job(restart=1), [failed(0, 137, "OOMKilled", restart=1)])


def test_oom_killed_twice_at_the_same_step_fails() -> None:
    update = oom_then_again(120, 120)
    assert update.decision == Decision(
        "fail",
        "OOMKilled",
        f"worker 0 ({NAME}-workers-0-r1) was OOMKilled at step 120 (exit code 137); the second "
        "OOM kill at step 120 (the first was in restart 0): give the workers more memory "
        "(spec.resources.memory) or lower training.batchSize",
    )
    assert update.patch["lastFailure"] == {
        "reason": "OOMKilled",
        "restart": 1,
        "step": 120,
        "exitCode": 137,
    }


def test_the_same_oom_kill_seen_again_is_not_a_second_one() -> None:
    status = {**running_status(), "progress": {"step": 120}}
    ftj = finetunejob(status)
    pods = [failed(0, 137, "OOMKilled")]
    first = look(ftj, worker_job(), pods)
    again = look(applied(ftj, first.patch), worker_job(), pods, now=LATER)
    assert (again.decision.action, again.patch) == ("restart", {})


def test_oom_killed_at_different_steps_restarts_again() -> None:
    update = oom_then_again(120, 180)
    assert (update.decision.action, update.decision.reason) == ("restart", "OOMKilled")
    assert update.patch["restarts"] == 2


def test_a_job_past_its_deadline_fails_with_deadline_exceeded() -> None:
    too_long = job_condition(
        "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
    )
    timed_out = worker_job(conditions=(too_long,))
    update = look(finetunejob(running_status()), timed_out, [])
    message = "the worker Job ran past its deadline: Job was active longer than specified deadline"
    assert update.decision == Decision("fail", "DeadlineExceeded", message)
    assert conditions_of(update.patch)["Failed"]["reason"] == "DeadlineExceeded"


def test_the_deadline_counts_from_the_first_start_across_restarts() -> None:
    status = {**running_status(), "restarts": 1}
    pods = [pod(0, restart=1)]
    on_time = look(finetunejob(status), worker_job(restart=1, start_time="2025-03-01T11:50:00Z"),
                   pods, deadline=3600)  # fmt: skip
    late = look(finetunejob(status), worker_job(restart=1), pods, now=NOW + timedelta(seconds=1),
                deadline=3600)  # fmt: skip
    assert on_time.decision.action == "none"
    assert "startTime" not in on_time.patch  # T0, from the first Job
    assert late.decision == Decision(
        "fail",
        "DeadlineExceeded",
        "the job has run for 3601 s since 2025-03-01T11:00:00Z, past "
        "spec.runPolicy.activeDeadlineSeconds (3600)",
        delete_job=True,
    )


# Suspension.


def test_a_suspended_job_is_suspended_and_resumes() -> None:
    spec = {"resources": {"workers": 2}, "runPolicy": {"suspend": True}}
    ftj = finetunejob(running_status(), spec=spec)
    stopping = [failed(0, 143, deleting=True), failed(1, 143, deleting=True)]
    update = look(ftj, worker_job(suspend=True), stopping)
    message = (
        "spec.runPolicy.suspend is true: the workers are stopped and resume from the last "
        "checkpoint when it is set back to false"
    )
    assert update.patch["phase"] == "Suspended"
    assert conditions_of(update.patch)["Suspended"]["status"] == "True"
    assert conditions_of(update.patch)["Running"]["status"] == "False"
    assert update.decision.action == "none"
    assert update.events == [Event("Normal", "Suspended", message)]
    resumed = look(applied(ftj, update.patch), worker_job(), [pod(0), pod(1)], now=LATER)
    suspended = conditions_of(resumed.patch)["Suspended"]
    assert (suspended["status"], suspended["reason"]) == ("False", "Resumed")
    assert resumed.patch["phase"] == "Running"


def test_pods_stopped_by_a_suspension_are_no_failure_after_the_resume() -> None:
    stopped = [failed(0, 143, deleting=True), failed(1, 143, deleting=True)]
    update = look(finetunejob(running_status()), worker_job(), stopped)
    assert update.decision.action == "none"
    assert update.patch["workers"]["failed"] == 2


def test_a_job_suspended_by_kueue_says_so() -> None:
    update = look(finetunejob(), worker_job(suspend=True, start_time=None), [])
    assert conditions_of(update.patch)["Suspended"]["message"] == (
        "the worker Job is suspended by another controller (e.g. Kueue waiting for quota); "
        "the workers start when it resumes it"
    )
    assert "startTime" not in update.patch


# What changes, and when.


def test_nothing_changed_means_an_empty_patch_and_no_events() -> None:
    status = running_status()
    update = look(finetunejob(status), worker_job(), [pod(0), pod(1)], now=LATER)
    assert update == StatusUpdate({}, [], Decision("none", "", ""))


def test_last_transition_time_moves_only_when_the_status_value_does() -> None:
    ftj = finetunejob()
    one = applied(ftj, look(ftj, worker_job(), [pod(0), pod(1, phase="Pending")]).patch)
    two = look(one, worker_job(), [pod(0), pod(1)], now=LATER)
    running_condition = conditions_of(two.patch)["Running"]
    assert running_condition["message"] == "2 of 2 workers running"
    assert running_condition["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    assert two.events == []
    done = worker_job(conditions=(job_condition("Complete"),))
    three = look(applied(one, two.patch), done, [], now=LATER)
    assert conditions_of(three.patch)["Running"]["lastTransitionTime"] == "2025-03-01T12:05:00Z"


def test_observed_generation_follows_the_spec() -> None:
    status = running_status()
    update = look(finetunejob(status, generation=4), worker_job(), [pod(0), pod(1)], now=LATER)
    assert update.patch["observedGeneration"] == 4
    assert {c["observedGeneration"] for c in update.patch["conditions"]} == {4}
    assert {c["lastTransitionTime"] for c in update.patch["conditions"]} == {"2025-03-01T12:00:00Z"}
    assert update.events == []


def test_a_whole_run_posts_one_event_per_transition() -> None:
    ftj = finetunejob()
    steps: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]] = [
        (None, []),
        (worker_job(), []),
        (worker_job(), [pod(0, phase="Pending"), pod(1, phase="Pending")]),
        (worker_job(), [pod(0), pod(1, phase="Pending")]),
        (worker_job(), [pod(0), pod(1)]),
        (worker_job(), [pod(0), pod(1)]),
        (worker_job(conditions=(job_condition("Complete"),)), [pod(0, phase="Succeeded")]),
    ]
    reasons = []
    for job, pods in steps:
        update = look(ftj, job, pods)
        reasons += [(e.type, e.reason) for e in update.events]
        ftj = applied(ftj, update.patch)
    assert reasons == [
        ("Normal", "Created"),
        ("Normal", "Pending"),
        ("Normal", "Running"),
        ("Normal", "Succeeded"),
    ]
    assert ftj["status"]["phase"] == "Succeeded"


# The trainer's verdicts as conditions.


@pytest.mark.parametrize(
    ("data_validation", "expected", "event_type"),
    [
        (
            {"passed": True, "rowsIn": 1000, "rowsOut": 990, "message": "990 of 1000 rows kept"},
            ("True", "DataValidated", "990 of 1000 rows kept"),
            "Normal",
        ),
        (
            {"passed": False, "message": "column 'label' not found"},
            ("False", "DataRejected", "column 'label' not found"),
            "Warning",
        ),
    ],
)
def test_data_validated_follows_the_trainers_data_validation(
    data_validation: dict[str, Any],
    expected: tuple[str, str, str],
    event_type: Literal["Normal", "Warning"],
) -> None:
    status = {**running_status(), "dataValidation": data_validation}
    update = look(finetunejob(status), worker_job(), [pod(0), pod(1)])
    data = conditions_of(update.patch)["DataValidated"]
    assert (data["status"], data["reason"], data["message"]) == expected
    assert update.events == [Event(event_type, expected[1], expected[2])]


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        ("Passed", ("True", "BiasAuditPassed", "every gate passed")),
        ("Failed", ("False", "BiasAuditFailed", "worst group gender=f: every gate passed")),
        ("InsufficientData", ("Unknown", "InsufficientData", "every gate passed")),
    ],
)
def test_bias_audit_passed_follows_the_trainers_verdict(
    verdict: str, expected: tuple[str, str, str]
) -> None:
    audit = {"verdict": verdict, "worstGroup": "gender=f", "message": "every gate passed"}
    status = {**running_status(), "biasAudit": audit}
    update = look(finetunejob(status), worker_job(), [pod(0), pod(1)])
    bias = conditions_of(update.patch)["BiasAuditPassed"]
    assert (bias["status"], bias["reason"], bias["message"]) == expected


def test_no_trainer_verdicts_mean_no_trainer_conditions() -> None:
    assert set(conditions_of(running_status())) == {"Running"}


def test_a_bias_verdict_after_success_still_becomes_a_condition() -> None:
    complete = worker_job(conditions=(job_condition("Complete"),))
    ftj = finetunejob(running_status())
    done = applied(ftj, look(ftj, complete, []).patch)
    done["status"]["biasAudit"] = {"verdict": "Passed", "message": "ok"}
    update = look(done, None, [])
    assert list(update.patch) == ["conditions"]
    assert conditions_of(update.patch)["BiasAuditPassed"]["status"] == "True"
    assert update.events == [Event("Normal", "BiasAuditPassed", "ok")]


# Validation.


def test_an_invalid_spec_fails_with_the_field_path_once() -> None:
    message = "spec.resources.workers: Input should be less than or equal to 256"
    update = validation_failed(finetunejob(), message, now=NOW)
    assert_fits_model(finetunejob(), update.patch)
    assert update.patch["phase"] == "Failed"
    conditions = conditions_of(update.patch)
    assert (conditions["Validated"]["status"], conditions["Validated"]["reason"]) == (
        "False",
        "InvalidSpec",
    )
    assert conditions["Failed"]["message"] == message
    assert update.events == [Event("Warning", "InvalidSpec", message)]
    assert update.decision == Decision("fail", "InvalidSpec", message, delete_job=True)
    again = validation_failed(applied(finetunejob(), update.patch), message, now=LATER)
    assert (again.patch, again.events) == ({}, [])


def test_a_valid_spec_is_validated_and_pending() -> None:
    patch = validated(finetunejob(), now=NOW)
    assert_fits_model(finetunejob(), patch)
    assert patch["phase"] == "Pending"
    assert patch["observedGeneration"] == 1
    assert conditions_of(patch)["Validated"]["status"] == "True"
    assert validated(applied(finetunejob(), patch), now=LATER) == {}


def test_fixing_an_invalid_spec_clears_the_failure() -> None:
    broken = applied(finetunejob(), validation_failed(finetunejob(), "bad", now=NOW).patch)
    broken["metadata"]["generation"] = 2
    patch = validated(broken, now=LATER)
    assert patch["phase"] == "Pending"
    assert patch["observedGeneration"] == 2
    assert set(conditions_of(patch)) == {"Validated"}
    assert conditions_of(patch)["Validated"]["lastTransitionTime"] == "2025-03-01T12:05:00Z"


def test_validating_a_running_job_again_leaves_its_phase() -> None:
    ftj = finetunejob(running_status(), generation=2)
    patch = validated(ftj, now=LATER)
    assert "phase" not in patch
    assert patch["observedGeneration"] == 2


# Helpers.


def test_condition_keeps_the_transition_time_while_the_status_holds() -> None:
    before = condition("Running", "True", "Running", "1 of 2", now=NOW, generation=1, previous=None)
    same = condition(
        "Running", "True", "Running", "2 of 2", now=LATER, generation=2, previous=before
    )
    flipped = condition("Running", "False", "Succeeded", "", now=LATER, generation=2, previous=same)
    assert before["lastTransitionTime"] == same["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    assert (same["message"], same["observedGeneration"]) == ("2 of 2", 2)
    assert flipped["lastTransitionTime"] == "2025-03-01T12:05:00Z"


def test_restart_of_reads_the_annotation() -> None:
    assert [restart_of(worker_job(restart=n)) for n in (0, 2)] == [0, 2]
    assert restart_of(None) == 0


# Stalls: running workers that show no sign of progress (the pods started at 11:01).


def beating(at: str, phase: str = "Evaluating") -> dict[str, Any]:
    return {**running_status(), "heartbeat": {"time": at, "phase": phase}}


def test_a_group_whose_heartbeat_stopped_restarts_as_stalled_counted_against_the_limit() -> None:
    ftj = finetunejob(beating("2025-03-01T11:20:00Z"))
    update = look(ftj, worker_job(), [pod(0), pod(1)], stall="30m")
    message = (
        "no sign of progress for 2400 s while Evaluating (last at 2025-03-01T11:20:00Z; "
        "spec.runPolicy.stallTimeout 30m); restarting the worker group from its last "
        "checkpoint (restart 1 of 3)"
    )
    assert update.decision == Decision("restart", "Stalled", message, delete_job=True)
    assert update.patch["restarts"] == 1
    assert update.patch["lastFailure"]["reason"] == "Stalled"
    assert update.events == [Event("Warning", "Restarting", message)]


def test_a_slow_run_that_still_beats_is_not_stalled() -> None:
    ftj = finetunejob(beating("2025-03-01T11:45:00Z"))
    update = look(ftj, worker_job(), [pod(0), pod(1)], stall="30m")
    assert update.decision.action == "none"


def test_a_group_that_never_beat_is_stalled_from_when_its_workers_started() -> None:
    update = look(finetunejob(running_status()), worker_job(), [pod(0), pod(1)], stall="50m")
    assert update.decision.reason == "Stalled"
    assert "for 3540 s while Starting (last at 2025-03-01T11:01:00Z;" in update.decision.message
    alive = look(finetunejob(running_status()), worker_job(), [pod(0), pod(1)], stall="1h")
    assert alive.decision.action == "none"


def test_an_earlier_groups_heartbeat_does_not_stall_a_restarted_group() -> None:
    """The heartbeat is older than this group's start: the group counts from its start."""
    status = {**beating("2025-03-01T10:00:00Z"), "restarts": 1}
    pods = [pod(0, restart=1), pod(1, restart=1)]
    update = look(finetunejob(status), worker_job(restart=1), pods, stall="1h")
    assert update.decision.action == "none"


def test_no_stall_is_judged_while_a_worker_is_not_running() -> None:
    ftj = finetunejob(beating("2025-03-01T11:02:00Z"))
    update = look(ftj, worker_job(), [pod(0), pod(1, phase="Pending")], stall="10m")
    assert update.decision.reason != "Stalled"


def test_stalls_use_up_the_backoff_limit_like_failures() -> None:
    status = {**beating("2025-03-01T11:02:00Z"), "restarts": 3}
    pods = [pod(0, restart=3), pod(1, restart=3)]
    update = look(finetunejob(status), worker_job(restart=3), pods, stall="10m")
    assert (update.decision.action, update.decision.reason) == ("fail", "BackoffLimitExceeded")
    assert "last cause: no sign of progress" in update.decision.message
