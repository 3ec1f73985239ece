"""FineTuneRuntimes enforced by the real operator on the Kubernetes emulator.

The handlers run in a thread against kmock, as in test_operator.py. Where pods must appear
and end on cue (Kueue's admission, the operator's GPU queue), the test kubelet of
tests/kube/kubelet.py plays the Job controller and the kubelet with stand-in containers
that exit 0 when released; elsewhere the test writes the Job's and pods' status itself.
What the emulator cannot show: Kueue itself (the test flips `suspend` as Kueue would) and
real GPUs (the test kubelet ignores resource requests, so the queue is what limits them).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_operator import runtimes
from tests.conftest import REPO
from tests.integration.test_operator import (
    children,
    condition,
    phase_is,
    restarted_workers,
    run_pods,
)
from tests.kube.client import KubeApiError, KubeClient
from tests.kube.emulator import EmulatorServer
from tests.kube.kubelet import TestKubelet
from tests.kube.operators import KopfLog, OperatorThread

CLUSTER = "ClusterFineTuneRuntime"
NAMESPACED = "FineTuneRuntime"


def runtime(name: str, kind: str = CLUSTER, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if kind == NAMESPACED:
        metadata["namespace"] = "default"
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


def job(
    sentiment: dict[str, Any], name: str, runtime_name: str, **resources: Any
) -> dict[str, Any]:
    manifest = copy.deepcopy(sentiment)
    manifest["metadata"]["name"] = name
    manifest["spec"]["runtimeRef"] = {"name": runtime_name}
    manifest["spec"]["resources"] = {"workers": 1, "gpusPerWorker": 0, **resources}
    return manifest


def create_runtime(kube: KubeClient, body: dict[str, Any]) -> dict[str, Any]:
    """Create a runtime and wait for its Validated condition (the operator has indexed it)."""
    kube.create(body)
    return kube.wait_for_object(
        body["kind"], body["metadata"]["name"], lambda r: bool(condition(r, "Validated"))
    )


def validated(reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ftj: condition(ftj, "Validated").get("reason") == reason


def event_reasons(kube: KubeClient, body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(event["reason"], event["message"]) for event in kube.events_for(body)]


@pytest.fixture
def kubelet(
    kube: KubeClient, kube_emulator: EmulatorServer, tmp_path: Path
) -> Iterator[TestKubelet]:
    """The test Job controller and kubelet, with stand-in containers."""
    with TestKubelet(kube, kube_emulator.url, tmp_path / "kubelet", stand_in=True) as running:
        yield running


# --- refusals ----------------------------------------------------------------------------


def test_a_guardrail_violation_is_refused_with_the_field_value_and_limit(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    create_runtime(kube, runtime("one-worker", guardrails={"maxWorkers": 1}))
    created = kube.create(job(sentiment, "sentiment", "one-worker", workers=2))

    ftj = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Failed"))
    message = (
        "spec.resources.workers: 2 exceeds the runtime's maxWorkers 1 "
        "(ClusterFineTuneRuntime one-worker)"
    )
    assert condition(ftj, "Validated") | {"lastTransitionTime": ""} == {
        "type": "Validated",
        "status": "False",
        "reason": "GuardrailViolated",
        "message": message,
        "lastTransitionTime": "",
        "observedGeneration": 1,
    }
    assert condition(ftj, "Failed")["reason"] == "GuardrailViolated"
    kube.wait_for_event(created, reason="GuardrailViolated", message=message)
    assert all(not names for names in children(kube).values())
    assert "effectiveSpec" not in ftj["status"]


def test_a_runtime_that_requires_sharding_refuses_a_data_parallel_job(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    create_runtime(kube, runtime("sharded-only", guardrails={"sharding": "required"}))
    created = kube.create(job(sentiment, "sentiment", "sharded-only", workers=2))

    ftj = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Failed"))
    message = (
        "spec.training.sharding: none is not fsdp: the runtime requires sharded training "
        "(sharding: required) (ClusterFineTuneRuntime sharded-only)"
    )
    assert condition(ftj, "Validated")["message"] == message
    kube.wait_for_event(created, reason="GuardrailViolated", message=message)
    assert all(not names for names in children(kube).values())


def test_a_runtime_the_namespace_may_not_use_is_refused_naming_both(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    create_runtime(kube, runtime("research-only", allowedNamespaces=["research-*"]))
    created = kube.create(job(sentiment, "sentiment", "research-only"))

    ftj = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Failed"))
    message = (
        "spec.runtimeRef: ClusterFineTuneRuntime research-only may not be used in namespace "
        "default (its spec.allowedNamespaces: research-*); ask its owners to allow the "
        "namespace, or name another runtime"
    )
    assert condition(ftj, "Validated")["reason"] == "RuntimeNotAllowed"
    assert condition(ftj, "Validated")["message"] == message
    kube.wait_for_event(created, reason="RuntimeNotAllowed", message=message)
    assert all(not names for names in children(kube).values())


# --- the cluster's default policy, as the chart passes it ----------------------------------


@pytest.fixture
def chart_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's environment as the chart's default values make it: defaultPolicy as JSON."""
    values = yaml.safe_load((REPO / "charts/kubetune/values.yaml").read_text())
    monkeypatch.setenv(runtimes.DEFAULT_POLICY_ENV, json.dumps(values["defaultPolicy"]))


def without_runtime(sentiment: dict[str, Any], name: str, **resources: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(sentiment)
    manifest["metadata"]["name"] = name
    manifest["spec"]["resources"] = {"workers": 1, "gpusPerWorker": 0, **resources}
    return manifest


POLICY_REFUSALS = {
    "system": (
        {"priorityClassName": "system-node-critical"},
        {},
        "spec.resources.priorityClassName: system-node-critical is reserved for the cluster's "
        "own pods: only an entry of the cluster's default policy's allowedPriorityClasses that "
        "starts with system- allows it (Helm value defaultPolicy)",
    ),
    "image": (
        {"image": "docker.io/someone/miner:1"},
        {},
        "spec.resources.image: docker.io/someone/miner:1 matches none of the cluster's default "
        "policy's allowedImages ghcr.io/kubetune/kubetune-trainer:*, "
        "ghcr.io/kubetune/kubetune-trainer@sha256:* (Helm value defaultPolicy)",
    ),
    "secret": (
        {},
        {"storage": {"name": "cluster-admin-token"}},
        "spec.credentials.storage.name: Secret cluster-admin-token is not allowed: the "
        "cluster's default policy's allowedSecrets is empty (Helm value defaultPolicy)",
    ),
}


@pytest.mark.usefixtures("chart_policy")
def test_the_charts_default_policy_refuses_a_job_without_runtime_with_the_reason(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    created = {}
    for name, (resources, credentials, _) in POLICY_REFUSALS.items():
        manifest = without_runtime(sentiment, name, **resources)
        manifest["spec"]["credentials"] = credentials
        created[name] = kube.create(manifest)

    for name, (_, _, message) in POLICY_REFUSALS.items():
        ftj = kube.wait_for_object("FineTuneJob", name, phase_is("Failed"))
        assert condition(ftj, "Validated") | {"lastTransitionTime": ""} == {
            "type": "Validated",
            "status": "False",
            "reason": "GuardrailViolated",
            "message": message,
            "lastTransitionTime": "",
            "observedGeneration": 1,
        }
        kube.wait_for_event(created[name], reason="GuardrailViolated", message=message)
    assert all(not names for names in children(kube).values())


@pytest.mark.usefixtures("chart_policy")
def test_a_job_within_the_charts_default_policy_starts_with_its_deadline(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    kube.create(without_runtime(sentiment, "sentiment", workers=2))

    ftj = kube.wait_for_object("FineTuneJob", "sentiment", validated("Validated"))
    assert "runtime" not in ftj["status"]
    assert ftj["status"]["effectiveSpec"]["runPolicy"]["activeDeadlineSeconds"] == 86400
    workers = kube.wait_for_object("Job", "sentiment-workers", lambda j: True)
    assert workers["spec"]["activeDeadlineSeconds"] == 86400
    pod = workers["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/kubetune-trainer:test"


def test_a_job_waits_for_its_missing_runtime_and_starts_when_it_appears(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    created = kube.create(job(sentiment, "sentiment", "late"))
    waiting = kube.wait_for_object("FineTuneJob", "sentiment", validated("RuntimeNotFound"))
    message = "spec.runtimeRef: ClusterFineTuneRuntime 'late' does not exist (known: none)"
    assert condition(waiting, "Validated")["message"] == message
    assert waiting["status"]["phase"] == "Pending"
    assert not condition(waiting, "Failed")
    kube.wait_for_event(created, reason="RuntimeNotFound", message=message)
    assert all(not names for names in children(kube).values())

    kube.create(runtime("late", guardrails={"maxWorkers": 2}))
    started = kube.wait_for_object("FineTuneJob", "sentiment", validated("Validated"))
    assert started["status"]["runtime"] == {
        "kind": "ClusterFineTuneRuntime",
        "name": "late",
        "generation": 1,
    }
    kube.wait_for(lambda: all(children(kube).values()) or None, "every child to exist")


def test_a_runtime_gets_its_own_validated_condition(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    good = create_runtime(kube, runtime("good", NAMESPACED, guardrails={"maxWorkers": 2}))
    assert condition(good, "Validated")["status"] == "True"
    assert good["status"]["observedGeneration"] == 1

    bad = create_runtime(
        kube,
        runtime(
            "bad", NAMESPACED, defaults={"resources": {"workers": 3}}, guardrails={"maxWorkers": 2}
        ),
    )
    problem = (
        "spec.defaults.resources.workers: 3 exceeds the runtime's maxWorkers 2 "
        "(FineTuneRuntime bad)"
    )
    assert condition(bad, "Validated") | {"lastTransitionTime": ""} == {
        "type": "Validated",
        "status": "False",
        "reason": "GuardrailConflict",
        "message": problem,
        "lastTransitionTime": "",
        "observedGeneration": 1,
    }
    kube.wait_for_event(bad, reason="GuardrailConflict", message=problem)

    user = job(sentiment, "sentiment", "bad")
    user["spec"]["runtimeRef"]["kind"] = NAMESPACED
    del user["spec"]["resources"]["workers"]
    kube.create(user)
    refused = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Failed"))
    assert condition(refused, "Validated")["message"] == (
        "spec.resources.workers: 3 exceeds the runtime's maxWorkers 2 (FineTuneRuntime bad); "
        "FineTuneRuntime bad's own defaults break its guardrails (its Validated condition "
        "says which): tell its owners"
    )


# --- the recorded effective spec ----------------------------------------------------------


def test_the_effective_spec_is_recorded_and_a_runtime_edit_does_not_reach_a_restarted_group(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    images = runtime(
        "images",
        defaults={"resources": {"image": "registry.example/ml/trainer:1"}},
        guardrails={"allowedImages": ["registry.example/ml/*"], "maxActiveDeadlineSeconds": 7200},
    )
    create_runtime(kube, images)
    kube.create(job(sentiment, "sentiment", "images"))
    first = kube.wait_for_object("Job", "sentiment-workers", lambda j: True)
    assert first["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/ml/trainer:1"
    )
    ftj = kube.wait_for_object("FineTuneJob", "sentiment", validated("Validated"))
    effective = ftj["status"]["effectiveSpec"]
    assert effective["resources"]["image"] == "registry.example/ml/trainer:1"
    assert effective["runPolicy"]["activeDeadlineSeconds"] == 7200  # filled in by the runtime
    # Every default is filled in, so the recorded spec does not depend on this version's.
    assert effective["model"] == {**sentiment["spec"]["model"], "task": "sequence-classification"}
    assert ftj["status"]["effectiveSpecHash"] == runtimes.spec_hash(effective)
    assert ftj["status"]["runtime"]["generation"] == 1
    assert first["spec"]["activeDeadlineSeconds"] == 7200

    kube.patch(
        "ClusterFineTuneRuntime",
        "images",
        {"spec": {"defaults": {"resources": {"image": "registry.example/ml/trainer:2"}}}},
    )
    kube.wait_for_object(
        "ClusterFineTuneRuntime", "images", lambda r: r["status"]["observedGeneration"] == 2
    )
    crash = {"terminated": {"exitCode": 137, "reason": "Error"}}
    run_pods(kube, first, w0=crash)
    # The crashed worker's exit restarts the group: a Failed condition written to the Job
    # now could reach the restarted group's Job, which the operator may have created already.
    second = restarted_workers(kube)
    assert second["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/ml/trainer:1"
    )
    after = kube.get("FineTuneJob", "sentiment")
    assert after is not None
    assert after["status"]["effectiveSpecHash"] == ftj["status"]["effectiveSpecHash"]
    assert after["status"]["runtime"]["generation"] == 1


# --- the trainer cannot steer what the operator builds ------------------------------------


def start_guarded_job(
    kube: KubeClient, sentiment: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job under a runtime that allows one CPU worker from one registry, and its Job."""
    strict = runtime(
        "strict",
        defaults={"resources": {"image": "registry.example/ml/trainer:1"}},
        guardrails={
            "allowedImages": ["registry.example/ml/*"],
            "maxWorkers": 1,
            "maxGpusPerJob": 0,
            "allowedTolerations": [],
        },
    )
    create_runtime(kube, strict)
    kube.create(job(sentiment, "sentiment", "strict"))
    first = kube.wait_for_object("Job", "sentiment-workers", lambda j: True)
    ftj = kube.wait_for_object("FineTuneJob", "sentiment", validated("Validated"))
    return ftj, first


def tampered(effective: dict[str, Any]) -> dict[str, Any]:
    """What the security review's status patch put in: another registry, 4 x 8 GPUs, every
    taint tolerated."""
    spec = copy.deepcopy(effective)
    spec["resources"].update(
        image="evil.example/miner:latest",
        workers=4,
        gpusPerWorker=8,
        tolerations=[{"operator": "Exists"}],
    )
    return spec


def crash_and_expect_failure(
    kube: KubeClient, first: dict[str, Any], reason: str
) -> dict[str, Any]:
    """Crash the group's worker; the job must fail with `reason` and no Job come back."""
    run_pods(kube, first, w0={"terminated": {"exitCode": 137, "reason": "Error"}})
    failed = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Failed"))
    assert condition(failed, "Validated")["reason"] == reason
    kube.wait_until_gone("Job", "sentiment-workers")
    assert kube.list_objects("Job", "default") == []
    return failed


def test_a_changed_effective_spec_is_never_built_even_with_its_hash_matching(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    """The security review's bypass: a status patch, then a worker crash. Whoever writes the
    status (the trainer no longer may), a recorded spec outside the runtime's guardrails is
    refused before the restart is built."""
    operator()
    ftj, first = start_guarded_job(kube, sentiment)
    spec = tampered(ftj["status"]["effectiveSpec"])
    kube.patch(
        "FineTuneJob",
        "sentiment",
        {"status": {"effectiveSpec": spec, "effectiveSpecHash": runtimes.spec_hash(spec)}},
        subresource="status",
    )
    failed = crash_and_expect_failure(kube, first, "GuardrailViolated")
    message = condition(failed, "Validated")["message"]
    assert "evil.example/miner:latest" in message
    assert "registry.example/ml/*" in message
    assert "status.effectiveSpec" in message


def test_an_effective_spec_that_no_longer_matches_its_hash_is_never_built(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    ftj, first = start_guarded_job(kube, sentiment)
    spec = tampered(ftj["status"]["effectiveSpec"])
    kube.patch(
        "FineTuneJob", "sentiment", {"status": {"effectiveSpec": spec}}, subresource="status"
    )
    failed = crash_and_expect_failure(kube, first, "InvalidSpec")
    assert "no longer matches status.effectiveSpecHash" in condition(failed, "Validated")["message"]


def test_the_trainer_reports_through_its_own_object_and_only_its_fields_reach_the_status(
    kube: KubeClient,
    kube_emulator: EmulatorServer,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
) -> None:
    """The report is the one object a worker may patch: its trainer fields are copied into
    the status, anything else in it (the operator's fields, a bad value) is not."""
    operator()
    ftj, first = start_guarded_job(kube, sentiment)
    report = kube.get("FineTuneJobReport", "sentiment")
    assert report is not None
    assert report["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
    forged = {
        "progress": {"step": 7, "totalSteps": 20, "percent": 35},
        "metrics": {"accuracy": 0.75},
        "phase": "Succeeded",
        "restarts": 0,
        "effectiveSpec": tampered(ftj["status"]["effectiveSpec"]),
        "diagnosis": {"verdict": "Splendid"},
    }
    with pytest.raises(KubeApiError, match=r"report\.diagnosis\.verdict: Unsupported value"):
        kube.patch("FineTuneJobReport", "sentiment", {"report": forged})
    # The report's CRD refuses the bad verdict; the operator must hold without it too.
    kube_emulator.call(lambda emulator: setattr(emulator, "admission", False))
    kube.patch("FineTuneJobReport", "sentiment", {"report": forged})
    copied = kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda f: f["status"].get("progress", {}).get("step") == 7
    )
    assert copied["status"]["metrics"] == {"accuracy": 0.75}
    assert copied["status"]["effectiveSpec"] == ftj["status"]["effectiveSpec"]
    assert copied["status"]["phase"] != "Succeeded"
    assert "diagnosis" not in copied["status"]
    kube.patch("FineTuneJobReport", "sentiment", {"report": {"progress": {"percent": None}}})
    kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda f: "percent" not in f["status"]["progress"]
    )
    crash = {"terminated": {"exitCode": 137, "reason": "Error"}}
    run_pods(kube, first, w0=crash)
    second = restarted_workers(kube)
    assert second["spec"]["parallelism"] == 1
    assert second["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/ml/trainer:1"
    )


# --- queues ------------------------------------------------------------------------------


def test_kueue_admits_a_suspended_job_and_its_pods_start(
    kube: KubeClient,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    kubelet: TestKubelet,
) -> None:
    operator()
    create_runtime(kube, runtime("kueue", queue={"kueueLocalQueue": "gpu-queue"}))
    kube.create(job(sentiment, "sentiment", "kueue", gpusPerWorker=1))

    held = kube.wait_for_object("Job", "sentiment-workers", lambda j: True)
    assert held["spec"]["suspend"] is True
    assert held["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    queued = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Queued"))
    assert condition(queued, "Running")["reason"] == "Queued"
    assert queued["status"]["runtime"]["kueueLocalQueue"] == "gpu-queue"
    assert kube.list_objects("Pod", "default") == []

    kube.patch("Job", "sentiment-workers", {"spec": {"suspend": False}})  # Kueue admits it
    kube.wait_for(lambda: kubelet.running_pods() or None, "the worker pod to run")
    kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Running"))
    kubelet.release("sentiment-workers-")
    kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Succeeded"))


class RunningPods:
    """The most pods the test kubelet ran at once, sampled in a background thread."""

    def __init__(self, kubelet: TestKubelet) -> None:
        self.kubelet = kubelet
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RunningPods:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.most = max(self.most, len(self.kubelet.running_pods()))


def test_the_operator_queue_keeps_to_the_limit_and_starts_the_next_job_when_one_ends(
    kube: KubeClient,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    kubelet: TestKubelet,
) -> None:
    operator()
    create_runtime(kube, runtime("two-gpus", queue={"maxConcurrentGpusPerNamespace": 2}))
    with RunningPods(kubelet) as sampled:
        for name in ("q1", "q2"):
            kube.create(job(sentiment, name, "two-gpus", gpusPerWorker=1))
            kube.wait_for_object("Job", f"{name}-workers", lambda j: True)
        third = kube.create(job(sentiment, "q3", "two-gpus", gpusPerWorker=1))
        queued = kube.wait_for_object("FineTuneJob", "q3", phase_is("Queued"))
        kube.create(job(sentiment, "q4", "two-gpus", gpusPerWorker=1))
        fourth = kube.wait_for_object("FineTuneJob", "q4", phase_is("Queued"))

        message = (
            "waiting for GPUs: ClusterFineTuneRuntime two-gpus lets the started jobs of "
            "namespace default hold 2 GPUs at once (queue.maxConcurrentGpusPerNamespace); 2 "
            "are held and this job needs 1. Place 1 in the queue."
        )
        assert queued["status"]["queuePosition"] == 1
        assert condition(queued, "Running")["message"] == message
        assert fourth["status"]["queuePosition"] == 2
        kube.wait_for_event(third, reason="Queued", message=message)
        assert kube.get("Job", "q3-workers") is None
        kube.wait_for(lambda: len(kubelet.running_pods()) == 2 or None, "q1 and q2 to run")

        kubelet.release("q1-workers-")
        kube.wait_for_object("FineTuneJob", "q1", phase_is("Succeeded"))
        kube.wait_for_object("Job", "q3-workers", lambda j: True)
        kube.wait_for_object("FineTuneJob", "q3", phase_is("Running"))
        moved = kube.wait_for_object(
            "FineTuneJob", "q4", lambda f: f["status"]["queuePosition"] == 1
        )
        assert moved["status"]["phase"] == "Queued"
        assert kube.get("Job", "q4-workers") is None

        kubelet.release("q2-workers-")
        kube.wait_for_object("FineTuneJob", "q4", phase_is("Running"))
        started = kube.get("FineTuneJob", "q3")
        assert started is not None
        assert "queuePosition" not in started["status"]
    assert sampled.most == 2


# --- a search parent ---------------------------------------------------------------------


def test_a_search_waits_for_its_runtime_and_its_trials_are_validated_with_it(
    kube: KubeClient, operator: Callable[[], OperatorThread], sentiment: dict[str, Any]
) -> None:
    operator()
    parent = job(sentiment, "sentiment", "cpu")
    parent["spec"]["search"] = {
        "algorithm": "grid",
        "parallelism": 2,
        "parameters": [{"path": "training.epochs", "type": "int", "values": [1, 2]}],
    }
    kube.create(parent)
    kube.wait_for_object("FineTuneJob", "sentiment", validated("RuntimeNotFound"))
    assert kube.list_objects("FineTuneJob", "default", "kubetune.dev/component=trial") == []

    create_runtime(kube, runtime("cpu", defaults={"resources": {"cpu": 3}}))
    searching = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Running"))
    assert searching["status"]["runtime"]["name"] == "cpu"
    epochs = set()
    for number in (0, 1):
        trial = kube.wait_for_object(
            "FineTuneJob", f"sentiment-trial-{number}", validated("Validated")
        )
        assert trial["spec"]["runtimeRef"] == {"name": "cpu"}
        assert trial["status"]["runtime"]["name"] == "cpu"
        assert trial["status"]["effectiveSpec"]["resources"]["cpu"] == 3
        epochs.add(trial["status"]["effectiveSpec"]["training"]["epochs"])
    assert epochs == {1, 2}


def test_an_operator_restart_keeps_the_started_jobs_even_over_a_lowered_limit(
    kube: KubeClient,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    kopf_log: KopfLog,
) -> None:
    first = operator()
    create_runtime(kube, runtime("gpus", queue={"maxConcurrentGpusPerNamespace": 2}))
    uids = {}
    for name in ("q1", "q2"):
        kube.create(job(sentiment, name, "gpus", gpusPerWorker=1))
        uids[name] = kube.wait_for_object("Job", f"{name}-workers", lambda j: True)["metadata"][
            "uid"
        ]
    kube.create(job(sentiment, "q3", "gpus", gpusPerWorker=1))
    kube.wait_for_object("FineTuneJob", "q3", phase_is("Queued"))
    kube.patch(
        "ClusterFineTuneRuntime", "gpus", {"spec": {"queue": {"maxConcurrentGpusPerNamespace": 1}}}
    )
    kube.wait_for_object(
        "ClusterFineTuneRuntime", "gpus", lambda r: r["status"]["observedGeneration"] == 2
    )
    first.stop()

    operator()
    # A resume that keeps a job as it is writes nothing: only kopf's log shows it done.
    kube.wait_for(lambda: kopf_log.resumed("q1", "q2", "q3"), "q1, q2 and q3 to be resumed")
    kube.create(job(sentiment, "q4", "gpus", gpusPerWorker=1))
    fourth = kube.wait_for_object("FineTuneJob", "q4", phase_is("Queued"))
    assert fourth["status"]["queuePosition"] == 2
    for name in ("q1", "q2"):
        started = kube.get("FineTuneJob", name)
        assert started is not None
        assert started["status"]["phase"] == "Pending"
        assert "queuePosition" not in started["status"]
        again = kube.get("Job", f"{name}-workers")
        assert again is not None
        assert again["metadata"]["uid"] == uids[name]
    third = kube.get("FineTuneJob", "q3")
    assert third is not None
    assert (third["status"]["phase"], third["status"]["queuePosition"]) == ("Queued", 1)
