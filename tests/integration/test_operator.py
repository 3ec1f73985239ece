"""kubetune's operator (kubetune_operator.controller.handlers) against the Kubernetes emulator.

The real kopf handlers run in a thread against kmock (tests/kube). The emulator runs no
controllers, so the tests play the batch Job controller and the kubelet by writing the
Job's and the pods' status themselves, the way a cluster would; tests/e2e runs real trainer
processes. What the emulator does not prove (a garbage collector's delay, pruning of unknown fields)
is listed in tests/kube/emulator.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.kube.client import KubeApiError, KubeClient
from tests.kube.emulator import EmulatorServer
from tests.kube.kubelet import now_rfc3339
from tests.kube.operators import KopfLog, OperatorThread

CHILDREN = {
    "ConfigMap": "sentiment-config",
    "ServiceAccount": "sentiment-trainer",
    "Role": "sentiment-trainer",
    "RoleBinding": "sentiment-trainer",
    "Service": "sentiment-workers",
    "Job": "sentiment-workers",
}


def condition(ftj: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in ftj.get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}


def phase_is(expected: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ftj: ftj.get("status", {}).get("phase") == expected


def children(kube: KubeClient) -> dict[str, list[str]]:
    return {
        kind: [obj["metadata"]["name"] for obj in kube.list_objects(kind, "default")]
        for kind in CHILDREN
    }


def wait_for_children(kube: KubeClient) -> dict[str, Any]:
    kube.wait_for(lambda: all(children(kube).values()) or None, "every child to exist")
    return kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Pending"))


def refused_then_admitted(
    kube: KubeClient, kube_emulator: EmulatorServer, body: dict[str, Any], *fields: str
) -> dict[str, Any]:
    """Create `body`, which the CRD refuses (422 naming each field) as the API server does;
    then create it with the CRD's checks off (an older CRD, or one applied without its
    schema), so the operator's own validation is what the test sees."""
    with pytest.raises(KubeApiError) as refused:
        kube.create(body)
    assert refused.value.status == 422
    assert all(f"{field}: " in str(refused.value) for field in fields), str(refused.value)
    kube_emulator.call(lambda emulator: setattr(emulator, "admission", False))
    return kube.create(body)


def restarted_workers(kube: KubeClient, restart: int = 1) -> dict[str, Any]:
    """The worker Job once the operator has made it again for the given restart."""
    return kube.wait_for_object(
        "Job",
        "sentiment-workers",
        lambda job: job["metadata"]["annotations"]["kubetune.dev/restart"] == str(restart),
    )


def run_pods(kube: KubeClient, job: dict[str, Any], **states: dict[str, Any]) -> None:
    """Play the Job controller and the kubelet: one pod per index, in the given states
    (index -> containerStatus state; the rest run)."""
    template = job["spec"]["template"]
    for index in range(job["spec"]["parallelism"]):
        restart = job["metadata"]["annotations"]["kubetune.dev/restart"]
        name = f"{job['metadata']['name']}-{index}-r{restart}"
        metadata = copy.deepcopy(template["metadata"])
        metadata["name"] = name
        metadata["labels"]["batch.kubernetes.io/job-completion-index"] = str(index)
        metadata["labels"]["batch.kubernetes.io/controller-uid"] = job["metadata"]["uid"]
        metadata["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": job["metadata"]["name"],
                "uid": job["metadata"]["uid"],
                "controller": True,
            }
        ]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}
        kube.create(pod)
        # Started now: a start long ago would be a group stalled past runPolicy.stallTimeout.
        state = states.get(f"w{index}", {"running": {"startedAt": now_rfc3339()}})
        phase = "Failed" if "terminated" in state else "Running"
        container = {"name": "trainer", "state": state, "restartCount": 0}
        kube.patch(
            "Pod",
            name,
            {"status": {"phase": phase, "containerStatuses": [container]}},
            subresource="status",
        )


def test_a_finetunejob_gets_exactly_its_children_owned_by_it(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    created = kube.create(sentiment)
    ftj = wait_for_children(kube)

    assert children(kube) == {kind: [name] for kind, name in CHILDREN.items()}
    for kind, name in CHILDREN.items():
        (owner,) = kube.get(kind, name)["metadata"]["ownerReferences"]  # type: ignore[index]
        assert owner["uid"] == created["metadata"]["uid"]
        assert owner["kind"] == "FineTuneJob"
        assert owner["controller"] is True
    assert condition(ftj, "Validated")["status"] == "True"
    assert ftj["status"]["observedGeneration"] == 1
    job = kube.get("Job", "sentiment-workers")
    assert job is not None
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example/kubetune-trainer:test"
    kube.wait_for_event(created, reason="Created")


def test_an_operator_restart_creates_nothing_twice(
    kube: KubeClient,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    kopf_log: KopfLog,
) -> None:
    first = operator()
    kube.create(sentiment)
    wait_for_children(kube)
    first.stop()
    uids = {kind: kube.get(kind, name)["metadata"]["uid"] for kind, name in CHILDREN.items()}  # type: ignore[index]

    operator()  # resumes the FineTuneJob it finds
    # Finding every child in place, the resume writes nothing: only kopf's log shows it done.
    kube.wait_for(lambda: kopf_log.resumed("sentiment"), "the FineTuneJob to be resumed")
    second = kube.get("FineTuneJob", "sentiment")
    assert second is not None
    assert second["status"]["phase"] == "Pending"
    assert children(kube) == {kind: [name] for kind, name in CHILDREN.items()}
    again = {kind: kube.get(kind, name)["metadata"]["uid"] for kind, name in CHILDREN.items()}  # type: ignore[index]
    assert again == uids


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"resources": {"workers": 0}}, "spec.resources.workers"),
        ({"resources": {"image": "evil;rm -rf /"}}, "spec.resources.image"),
        ({"training": {"learningRate": -1}}, "spec.training.learningRate"),
    ],
)
def test_an_invalid_spec_is_reported_and_creates_nothing(
    kube: KubeClient,
    kube_emulator: EmulatorServer,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    change: dict[str, Any],
    field: str,
) -> None:
    operator()
    for section, values in change.items():
        sentiment["spec"].setdefault(section, {}).update(values)
    created = refused_then_admitted(kube, kube_emulator, sentiment, field)
    ftj = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Failed"))

    validated = condition(ftj, "Validated")
    assert validated["status"] == "False"
    assert validated["reason"] == "InvalidSpec"
    assert field in validated["message"]
    assert condition(ftj, "Failed")["status"] == "True"
    assert all(not names for names in children(kube).values())
    kube.wait_for_event(created, reason="InvalidSpec")


def test_a_failed_worker_restarts_the_group_and_a_completed_job_succeeds(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    sentiment["spec"]["resources"] = {"workers": 2, "gpusPerWorker": 0}
    operator()
    kube.create(sentiment)
    wait_for_children(kube)
    first = kube.get("Job", "sentiment-workers")
    assert first is not None
    crash = {
        "terminated": {"exitCode": 137, "reason": "Error", "finishedAt": "2026-11-22T10:05:00Z"}
    }
    # The crashed worker's exit is enough: the operator restarts the group without waiting
    # for the Job controller to fail the Job.
    run_pods(kube, first, w1=crash)

    second = restarted_workers(kube)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    ftj = kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda f: f["status"].get("restarts") == 1
    )
    assert ftj["status"]["lastFailure"]["exitCode"] == 137

    run_pods(kube, second)
    kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Running"))
    kube.patch(
        "Job",
        "sentiment-workers",
        {"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 2}},
        subresource="status",
    )
    done = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Succeeded"))
    assert condition(done, "Succeeded")["status"] == "True"
    assert done["status"]["restarts"] == 1
    assert done["status"]["completionTime"]


def test_a_drained_worker_restarts_the_group_without_using_the_backoff_limit(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    sentiment["spec"]["resources"] = {"workers": 2, "gpusPerWorker": 0}
    sentiment["spec"]["runPolicy"] = {"backoffLimit": 0}
    start_workers(kube, operator, sentiment)
    first = kube.get("Job", "sentiment-workers")
    assert first is not None
    assert first["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"] == [
        {"type": "DisruptionTarget", "status": "True"}
    ]
    # What the Job controller writes once the drained pod is gone: the pod failure policy's
    # rule names the condition.
    message = (
        "Pod default/sentiment-workers-1-r0 has condition DisruptionTarget matching FailJob "
        "rule at index 0"
    )
    failed = {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": message}
    kube.patch(
        "Job", "sentiment-workers", {"status": {"conditions": [failed]}}, subresource="status"
    )

    second = restarted_workers(kube)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    ftj = kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda f: f["status"].get("disruptions") == 1
    )
    assert ftj["status"]["restarts"] == 1
    assert ftj["status"]["phase"] != "Failed"  # backoffLimit 0, yet restarted
    assert ftj["status"]["lastFailure"] == {"reason": "WorkerDisrupted", "restart": 0}
    kube.wait_for_event(ftj, reason="Restarting")


def test_suspending_and_resuming_reaches_the_job(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    kube.create(sentiment)
    wait_for_children(kube)
    kube.patch("FineTuneJob", "sentiment", {"spec": {"runPolicy": {"suspend": True}}})
    kube.wait_for_object("Job", "sentiment-workers", lambda job: job["spec"]["suspend"] is True)
    kube.patch("FineTuneJob", "sentiment", {"spec": {"runPolicy": {"suspend": False}}})
    kube.wait_for_object("Job", "sentiment-workers", lambda job: job["spec"]["suspend"] is False)


def start_workers(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    """Start the operator, create the job and play its running workers."""
    operator()
    kube.create(sentiment)
    wait_for_children(kube)
    job = kube.get("Job", "sentiment-workers")
    assert job is not None
    run_pods(kube, job)


def complete(kube: KubeClient) -> None:
    kube.patch(
        "Job",
        "sentiment-workers",
        {"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}},
        subresource="status",
    )


def test_children_go_after_ttl_seconds_and_the_status_stays(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    sentiment["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 1}
    start_workers(kube, operator, sentiment)
    complete(kube)
    kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Succeeded"))
    kube.wait_for(lambda: not any(children(kube).values()) or None, "every child to go")
    ftj = kube.get("FineTuneJob", "sentiment")
    assert ftj is not None
    assert ftj["status"]["phase"] == "Succeeded"
    assert condition(ftj, "Succeeded")["status"] == "True"
    cleaned = kube.wait_for_event(ftj, reason="CleanedUp")
    assert cleaned[0]["message"] == "children deleted 1s after the end"
    assert cleaned[0]["involvedObject"]["uid"] == ftj["metadata"]["uid"]


def test_a_job_carries_no_finalizer_so_it_goes_without_the_operator(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    running = operator()
    kube.create(sentiment)
    wait_for_children(kube)
    kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Pending"))
    assert kube.get("FineTuneJob", "sentiment")["metadata"].get("finalizers") is None  # type: ignore[index]
    running.stop()
    kube.delete("FineTuneJob", "sentiment")
    kube.wait_until_gone("FineTuneJob", "sentiment")


def test_the_deadline_fails_the_job_and_stops_its_workers(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    sentiment["spec"]["runPolicy"] = {"activeDeadlineSeconds": 1}
    start_workers(kube, operator, sentiment)
    ftj = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Failed"))
    assert condition(ftj, "Failed")["reason"] == "DeadlineExceeded"
    kube.wait_until_gone("Job", "sentiment-workers")


def test_a_hostile_spec_fails_alone_and_the_operator_serves_the_next_job(
    kube: KubeClient,
    kube_emulator: EmulatorServer,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
) -> None:
    operator()
    hostile = copy.deepcopy(sentiment)
    hostile["metadata"]["name"] = "x" * 41  # too long for the derived names
    hostile["spec"]["resources"] = {"workers": 10**9, "image": "$(curl evil)"}
    hostile["spec"]["output"] = {"uri": "pvc://runs/../../etc"}
    fields = ("spec.resources.workers", "spec.resources.image")
    refused_then_admitted(kube, kube_emulator, hostile, *fields)
    failed = kube.wait_for_object("FineTuneJob", "x" * 41, phase_is("Failed"))
    message = condition(failed, "Validated")["message"]
    for field in (
        "metadata.name",
        "spec.resources.workers",
        "spec.resources.image",
        "spec.output.uri",
    ):
        assert field in message

    kube.create(sentiment)
    wait_for_children(kube)
    assert children(kube) == {kind: [name] for kind, name in CHILDREN.items()}


# --- names the job does not own ---------------------------------------------------------

FOREIGN_CONFIG = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "sentiment-config"},
    "data": {"config.json": '{"someone": "else"}'},
}
FOREIGN_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "sentiment-workers"},
    "spec": {"ports": [{"port": 80}]},
}
FOREIGN_JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "sentiment-workers"},
    "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
}


@pytest.mark.parametrize("foreign", [FOREIGN_CONFIG, FOREIGN_SERVICE, FOREIGN_JOB])
def test_an_object_of_a_childs_name_that_is_not_the_jobs_fails_it_and_stays_untouched(
    kube: KubeClient,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    foreign: dict[str, Any],
) -> None:
    """The security review's collisions: a foreign ConfigMap was mounted as the trainer's
    config, a foreign Job kept the FineTuneJob Pending forever."""
    before = kube.create(foreign)
    kind, name = foreign["kind"], foreign["metadata"]["name"]
    operator()
    kube.create(sentiment)
    failed = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Failed"))
    refused = condition(failed, "Validated")
    assert refused["reason"] == "NameTaken"
    assert refused["message"].startswith(f"{kind} {name} exists and is not this job's")
    kube.wait_for_event(failed, reason="NameTaken")
    assert kube.get(kind, name) == before, "neither adopted nor changed"
    jobs = kube.list_objects("Job", "default")
    assert [job["metadata"]["uid"] for job in jobs] == (
        [before["metadata"]["uid"]] if kind == "Job" else []
    )


def test_the_ttl_cleanup_deletes_only_what_the_job_owns(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    sentiment["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 5}
    start_workers(kube, operator, sentiment)
    complete(kube)
    ftj = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Succeeded"))
    # Within the TTL, the job's ConfigMap gives way to someone else's of the same name.
    kube.delete("ConfigMap", "sentiment-config")
    kube.wait_until_gone("ConfigMap", "sentiment-config")
    foreign = kube.create(FOREIGN_CONFIG)
    kube.wait_for_event(ftj, reason="CleanedUp")
    left = children(kube)
    assert left == {kind: ["sentiment-config"] if kind == "ConfigMap" else [] for kind in CHILDREN}
    assert kube.get("ConfigMap", "sentiment-config") == foreign
    assert kube.get("FineTuneJobReport", "sentiment") is None


def test_a_job_waits_for_the_children_an_earlier_job_of_its_name_left_then_starts(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    """Delete and re-apply: the garbage collector is still deleting the earlier job's
    children, which are neither someone else's nor this job's."""
    earlier = {"kind": "FineTuneJob", "name": "sentiment", "uid": "earlier-uid"}
    leftover = {
        **FOREIGN_CONFIG,
        "metadata": {
            **FOREIGN_CONFIG["metadata"],
            "ownerReferences": [
                {"apiVersion": "kubetune.dev/v1alpha1", **earlier, "controller": True}
            ],
        },
    }
    kube.create(leftover)
    operator()
    kube.create(sentiment)
    waiting = kube.wait_for_object(
        "FineTuneJob",
        "sentiment",
        lambda f: condition(f, "Validated").get("reason") == "WaitingForCleanup",
    )
    assert waiting["status"]["phase"] == "Pending"
    assert kube.list_objects("Job", "default") == []
    kube.delete("ConfigMap", "sentiment-config")  # what the garbage collector does
    started = wait_for_children(kube)
    assert condition(started, "Validated")["status"] == "True"
    config = kube.get("ConfigMap", "sentiment-config")
    assert config is not None
    assert config["metadata"]["ownerReferences"][0]["uid"] == started["metadata"]["uid"]
