"""The pure rules behind the operator's runtime enforcement: resolving a job's runtime (what
is recorded, what is refused and why), the operator's GPU queue, and the status rules for
refused, queued and Kueue-held jobs and for a runtime's own Validated condition."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubetune_operator import builders, queueing, runtimes
from kubetune_operator import status as status_rules
from kubetune_operator.api.runtime import KUEUE_QUEUE_LABEL, Guardrails
from kubetune_operator.api.v1alpha1 import FineTuneJob
from tests.conftest import REPO, load_example

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


def a100() -> dict[str, Any]:
    runtime = copy.deepcopy(load_example("runtimes/a100.yaml"))
    runtime["metadata"]["generation"] = 3
    return runtime


def user_job() -> dict[str, Any]:
    job = copy.deepcopy(load_example("runtimes/job.yaml"))
    job["metadata"]["namespace"] = "ml"
    return job


def resolve(
    job: dict[str, Any], namespaced: list[Any] | None = None, cluster: list[Any] | None = None
) -> runtimes.Resolved | runtimes.Refused:
    model = FineTuneJob.model_validate(job, by_alias=True, by_name=False)
    return runtimes.resolve(model, job, namespaced or [], cluster or [])


# --- resolving ---------------------------------------------------------------------------


def test_a_resolved_job_records_the_runtime_its_generation_and_the_effective_spec() -> None:
    resolved = resolve(user_job(), cluster=[a100()])
    assert isinstance(resolved, runtimes.Resolved)
    record = resolved.record
    assert record["runtime"] == {"kind": "ClusterFineTuneRuntime", "name": "a100", "generation": 3}
    spec = record["effectiveSpec"]
    assert spec["resources"]["gpusPerWorker"] == 8
    assert spec["resources"]["image"] == "registry.example/ml/kubetune-trainer:0.1.0"
    assert spec["runPolicy"]["activeDeadlineSeconds"] == 86400
    assert spec["runPolicy"]["backoffLimit"] == 3  # model defaults are filled in too
    assert record["effectiveSpecHash"] == runtimes.spec_hash(spec)
    assert resolved.job.spec.resources.gpus_per_worker == 8


def test_the_recorded_spec_rebuilds_the_same_job() -> None:
    resolved = resolve(user_job(), cluster=[a100()])
    assert isinstance(resolved, runtimes.Resolved)
    again = FineTuneJob.model_validate({**user_job(), "spec": resolved.record["effectiveSpec"]})
    assert again.spec == resolved.job.spec


def test_a_job_without_runtime_records_its_own_spec_and_no_runtime() -> None:
    job = user_job()
    del job["spec"]["runtimeRef"]
    resolved = resolve(job)
    assert isinstance(resolved, runtimes.Resolved)
    assert "runtime" not in resolved.record
    assert resolved.record["effectiveSpec"]["resources"]["gpusPerWorker"] == 1


def test_a_guardrail_violation_is_refused_for_good_with_every_message() -> None:
    job = user_job()
    job["spec"]["resources"] = {"workers": 4}
    del job["metadata"]["labels"]
    refused = resolve(job, cluster=[a100()])
    assert isinstance(refused, runtimes.Refused)
    assert refused.reason == "GuardrailViolated"
    assert not refused.waits
    # The deadline fills in to what 32 GPUs may reserve, so maxGpuHours holds.
    assert refused.messages == [
        "spec.resources.workers: 4 exceeds the runtime's maxWorkers 2 "
        "(ClusterFineTuneRuntime a100)",
        "spec.resources: 4 workers x 8 GPUs = 32 GPUs exceeds the runtime's maxGpusPerJob 16 "
        "(ClusterFineTuneRuntime a100)",
        "metadata.labels.cost-center: is required by the runtime (requiredLabels) "
        "(ClusterFineTuneRuntime a100)",
    ]


def test_a_missing_runtime_waits_and_names_what_exists() -> None:
    refused = resolve(user_job(), cluster=[])
    assert isinstance(refused, runtimes.Refused)
    assert refused.reason == "RuntimeNotFound"
    assert refused.waits
    assert refused.messages == [
        "spec.runtimeRef: ClusterFineTuneRuntime 'a100' does not exist (known: none)"
    ]


def test_two_defaults_are_ambiguous_and_wait() -> None:
    job = user_job()
    del job["spec"]["runtimeRef"]
    first, second = a100(), a100()
    second["metadata"]["name"] = "b100"
    for runtime in (first, second):
        runtime["metadata"]["labels"] = {"kubetune.dev/default-runtime": "true"}
    refused = resolve(job, cluster=[first, second])
    assert isinstance(refused, runtimes.Refused)
    assert (refused.reason, refused.waits) == ("RuntimeAmbiguous", True)
    assert "a100, b100" in refused.messages[0]


def test_a_runtime_the_namespace_may_not_use_is_refused_for_good() -> None:
    job = user_job()
    job["metadata"]["namespace"] = "research"
    refused = resolve(job, cluster=[a100()])
    assert isinstance(refused, runtimes.Refused)
    assert (refused.reason, refused.waits) == ("RuntimeNotAllowed", False)
    assert refused.messages == [
        "spec.runtimeRef: ClusterFineTuneRuntime a100 may not be used in namespace research "
        "(its spec.allowedNamespaces: ml, ml-*); ask its owners to allow the namespace, or "
        "name another runtime"
    ]
    job["metadata"]["namespace"] = "ml-vision"
    assert isinstance(resolve(job, cluster=[a100()]), runtimes.Resolved)


def test_a_default_runtime_serves_only_its_namespaces() -> None:
    job = user_job()
    del job["spec"]["runtimeRef"]
    small = copy.deepcopy(load_example("runtimes/small-cpu.yaml"))
    small["spec"]["allowedNamespaces"] = ["research"]
    other = a100()
    other["metadata"]["labels"] = {"kubetune.dev/default-runtime": "true"}
    resolved = resolve(job, cluster=[small, other])  # not ambiguous: small-cpu skips ml
    assert isinstance(resolved, runtimes.Resolved)
    assert resolved.record["runtime"]["name"] == "a100"
    alone = resolve(job, cluster=[small])
    assert isinstance(alone, runtimes.Resolved)
    assert alone.runtime is None


# --- the cluster's default policy: jobs that no runtime applies to ---------------------

CHART_POLICY = Guardrails.model_validate(
    yaml.safe_load((REPO / "charts/kubetune/values.yaml").read_text())["defaultPolicy"],
    by_alias=True,
    by_name=False,
)
"""The chart's defaultPolicy as values.yaml ships it."""
POLICY = "(Helm value defaultPolicy)"


def cluster_job() -> dict[str, Any]:
    job = copy.deepcopy(load_example("gitops/job.yaml"))
    job["metadata"]["namespace"] = "ml"
    return job


def under_policy(job: dict[str, Any], cluster: list[Any] | None = None) -> Any:
    model = FineTuneJob.model_validate(job, by_alias=True, by_name=False)
    return runtimes.resolve(model, job, [], cluster or [], CHART_POLICY)


def test_a_job_within_the_default_policy_runs_with_the_deadline_it_allows() -> None:
    resolved = under_policy(cluster_job())
    assert isinstance(resolved, runtimes.Resolved)
    assert resolved.runtime is None
    assert "runtime" not in resolved.record
    assert resolved.record["effectiveSpec"]["runPolicy"]["activeDeadlineSeconds"] == 86400
    job = cluster_job()
    job["spec"]["resources"]["image"] = "ghcr.io/kubetune/kubetune-trainer:0.2.0"
    assert isinstance(under_policy(job), runtimes.Resolved)


def test_the_default_policy_refuses_what_only_a_pod_author_may_decide() -> None:
    job = cluster_job()
    job["spec"]["resources"].update(
        image="docker.io/someone/miner:1",
        workers=256,
        gpusPerWorker=16,
        nodeSelector={"node-role.kubernetes.io/control-plane": ""},
        tolerations=[{"operator": "Exists"}],
        priorityClassName="system-node-critical",
    )
    job["spec"]["credentials"] = {
        "hubToken": {"name": "hf-org-admin", "key": "token"},
        "storage": {"name": "aws-admin"},
    }
    refused = under_policy(job)
    assert isinstance(refused, runtimes.Refused)
    assert (refused.reason, refused.waits) == ("GuardrailViolated", False)
    owner = "the cluster's default policy"
    assert refused.messages == [
        f"spec.resources.image: docker.io/someone/miner:1 matches none of {owner}'s "
        "allowedImages ghcr.io/kubetune/kubetune-trainer:*, "
        f"ghcr.io/kubetune/kubetune-trainer@sha256:* {POLICY}",
        f"spec.resources.workers: 256 exceeds {owner}'s maxWorkers 4 {POLICY}",
        f"spec.resources.gpusPerWorker: 16 exceeds {owner}'s maxGpusPerWorker 8 {POLICY}",
        f"spec.resources: 256 workers x 16 GPUs = 4096 GPUs exceeds {owner}'s maxGpusPerJob 8 "
        f"{POLICY}",
        "spec.resources.nodeSelector: node-role.kubernetes.io/control-plane= is not allowed: "
        f"{owner}'s allowedNodeLabels is empty {POLICY}",
        f"spec.resources.tolerations[0]: * (Exists) is not among {owner}'s allowedTolerations "
        f"{POLICY}",
        "spec.resources.priorityClassName: system-node-critical is reserved for the cluster's "
        f"own pods: only an entry of {owner}'s allowedPriorityClasses that starts with system- "
        f"allows it {POLICY}",
        "spec.credentials.hubToken.name: Secret hf-org-admin is not allowed: "
        f"{owner}'s allowedSecrets is empty {POLICY}",
        f"spec.credentials.storage.name: Secret aws-admin is not allowed: {owner}'s "
        f"allowedSecrets is empty {POLICY}",
    ]


def test_a_runtime_replaces_the_default_policy() -> None:
    job = user_job()
    job["spec"]["resources"] = {"priorityClassName": "ml-batch"}
    job["spec"]["credentials"] = {"hubToken": {"name": "hf-token", "key": "token"}}
    resolved = under_policy(job, cluster=[a100()])
    assert isinstance(resolved, runtimes.Resolved)
    assert resolved.record["runtime"]["name"] == "a100"


def test_without_a_policy_a_job_without_runtime_keeps_its_own_spec() -> None:
    job = cluster_job()
    job["spec"]["resources"]["priorityClassName"] = "system-node-critical"
    model = FineTuneJob.model_validate(job, by_alias=True, by_name=False)
    resolved = runtimes.resolve(model, job, [], [])  # kubetune validate, local runs
    assert isinstance(resolved, runtimes.Resolved)
    assert resolved.record["effectiveSpec"]["resources"]["priorityClassName"] == (
        "system-node-critical"
    )
    # The operator's policy when the chart passes none still keeps the system classes out.
    refused = runtimes.resolve(model, job, [], [], Guardrails())
    assert isinstance(refused, runtimes.Refused)
    assert refused.messages[0].startswith("spec.resources.priorityClassName: system-node-critical")


def test_an_invalid_runtime_object_waits_with_its_problem() -> None:
    runtime = a100()
    runtime["spec"]["guardrails"]["maxWorkers"] = 0
    refused = resolve(user_job(), cluster=[runtime])
    assert isinstance(refused, runtimes.Refused)
    assert refused.reason == "RuntimeInvalid"
    assert refused.messages[0].startswith("spec.runtimeRef: ClusterFineTuneRuntime a100 is invalid")
    assert "spec.guardrails.maxWorkers" in refused.messages[0]


def test_defaults_that_make_the_spec_invalid_are_an_invalid_spec() -> None:
    runtime = a100()
    runtime["spec"]["defaults"]["evaluation"] = {"strategy": "steps", "everySteps": 100}
    job = user_job()
    job["spec"]["evaluation"] = {"strategy": "epoch"}
    refused = resolve(job, cluster=[runtime])
    assert isinstance(refused, runtimes.Refused)
    assert refused.reason == "InvalidSpec"
    assert not refused.waits
    assert refused.messages == [
        "spec.evaluation: everySteps applies only when strategy is steps "
        "(with ClusterFineTuneRuntime a100's defaults)"
    ]


def test_a_runtime_that_breaks_its_own_guardrails_is_named_on_the_refused_job() -> None:
    runtime = a100()
    runtime["spec"]["defaults"]["resources"]["workers"] = 3
    refused = resolve(user_job(), cluster=[runtime])
    assert isinstance(refused, runtimes.Refused)
    assert refused.messages[-1] == (
        "ClusterFineTuneRuntime a100's own defaults break its guardrails "
        "(its Validated condition says which): tell its owners"
    )


def test_a_kueue_runtime_is_recorded_with_its_local_queue() -> None:
    runtime = a100()
    runtime["spec"]["queue"] = {"kueueLocalQueue": "gpu"}
    resolved = resolve(user_job(), cluster=[runtime])
    assert isinstance(resolved, runtimes.Resolved)
    assert resolved.record["runtime"]["kueueLocalQueue"] == "gpu"


def test_a_job_bigger_than_the_queue_limit_could_never_start_and_is_refused() -> None:
    runtime = a100()
    runtime["spec"]["queue"] = {"maxConcurrentGpusPerNamespace": 4}
    refused = resolve(user_job(), cluster=[runtime])
    assert isinstance(refused, runtimes.Refused)
    assert refused.messages == [
        "spec.resources: 8 GPUs exceeds the runtime's queue.maxConcurrentGpusPerNamespace 4: "
        "the job could never start (ClusterFineTuneRuntime a100)"
    ]


def test_kueue_and_the_operator_queue_exclude_each_other() -> None:
    runtime = a100()
    runtime["spec"]["queue"] = {"kueueLocalQueue": "gpu", "maxConcurrentGpusPerNamespace": 8}
    refused = resolve(user_job(), cluster=[runtime])
    assert isinstance(refused, runtimes.Refused)
    assert refused.reason == "RuntimeInvalid"
    assert (
        "kueueLocalQueue and maxConcurrentGpusPerNamespace exclude each other"
        in (refused.messages[0])
    )


def test_the_reason_constants_agree() -> None:
    reasons = status_rules.Reason
    assert reasons.GuardrailViolated == runtimes.GUARDRAIL_VIOLATED
    assert reasons.RuntimeNotFound == runtimes.RUNTIME_NOT_FOUND
    assert reasons.RuntimeAmbiguous == runtimes.RUNTIME_AMBIGUOUS
    assert reasons.RuntimeInvalid == runtimes.RUNTIME_INVALID
    assert reasons.InvalidSpec == runtimes.INVALID_SPEC


# --- the operator's queue ----------------------------------------------------------------


def waiting(name: str, gpus: int, created: str, priority: str | None = None) -> Any:
    return queueing.WaitingJob(name, gpus, f"2026-11-22T10:00:{created}Z", priority)


def test_first_created_first_started_while_they_fit() -> None:
    jobs = [waiting("c", 1, "03"), waiting("a", 1, "01"), waiting("b", 1, "02")]
    admission = queueing.admit(jobs, in_use=1, limit=3)
    assert admission.start == ["a", "b"]
    assert admission.positions == {"c": 1}


def test_the_head_of_the_queue_blocks_the_jobs_behind_it() -> None:
    jobs = [waiting("big", 4, "01"), waiting("small", 1, "02")]
    admission = queueing.admit(jobs, in_use=1, limit=4)
    assert admission.start == []
    assert admission.positions == {"big": 1, "small": 2}


def test_ties_go_to_a_priority_class_then_alphabetical() -> None:
    jobs = [
        waiting("b", 1, "01"),
        waiting("a", 1, "01"),
        waiting("z", 1, "01", "high"),
        waiting("y", 1, "01", "batch"),
        waiting("early", 1, "00"),
    ]
    order = [job.name for job in queueing.queue_order(jobs)]
    assert order == ["early", "y", "z", "a", "b"]


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 59), st.booleans()),
        min_size=1,
        max_size=25,
    ),
    st.integers(1, 6),
    st.lists(st.integers(0, 30), max_size=40),
)
def test_the_started_jobs_never_hold_more_than_the_limit(
    arrivals: list[tuple[int, int, bool]], limit: int, finishing: list[int]
) -> None:
    """Jobs arrive, the queue admits, started jobs finish in any order: at every step the
    started jobs hold at most `limit` GPUs, and they started in queue order."""
    jobs = [
        queueing.WaitingJob(f"j{i}", gpus, f"2026-11-22T10:00:{second:02d}Z", None)
        for i, (gpus, second, _) in enumerate(arrivals)
        if gpus <= limit
    ]
    waiting_jobs, started = list(jobs), []
    running: dict[str, int] = {}
    for pick in [*finishing, *range(len(jobs) * 2)]:
        admission = queueing.admit(waiting_jobs, sum(running.values()), limit)
        by_name = {job.name: job for job in waiting_jobs}
        for name in admission.start:
            running[name] = by_name[name].gpus
            started.append(by_name[name])
        waiting_jobs = [job for job in waiting_jobs if job.name not in admission.start]
        assert sum(running.values()) <= limit
        assert sorted(admission.positions.values()) == list(range(1, len(waiting_jobs) + 1))
        if running:
            del running[sorted(running)[pick % len(running)]]
    assert not waiting_jobs
    assert started == queueing.queue_order(jobs)


# --- status rules ------------------------------------------------------------------------


def ftj(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j", "namespace": "ml", "generation": 1}, "status": status}


def conditions(patch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in patch["conditions"]}


def test_a_guardrail_refusal_fails_the_job_with_its_reason() -> None:
    update = status_rules.refused(
        ftj(), "GuardrailViolated", "spec.x: too big", final=True, now=NOW
    )
    assert update.patch["phase"] == "Failed"
    found = conditions(update.patch)
    assert found["Validated"]["status"] == "False"
    assert found["Validated"]["reason"] == "GuardrailViolated"
    assert found["Failed"]["message"] == "spec.x: too big"
    assert update.events == [status_rules.Event("Warning", "GuardrailViolated", "spec.x: too big")]


def test_a_missing_runtime_leaves_the_job_pending_without_failing_it() -> None:
    update = status_rules.refused(
        ftj(), "RuntimeNotFound", "spec.runtimeRef: x", final=False, now=NOW
    )
    assert update.patch["phase"] == "Pending"
    assert set(conditions(update.patch)) == {"Validated"}
    assert update.decision.action == "none"
    again = status_rules.refused(
        ftj(**update.patch), "RuntimeNotFound", "spec.runtimeRef: x", final=False, now=NOW
    )
    assert again.patch == {}
    assert again.events == []


def test_a_job_validated_after_waiting_for_its_runtime_turns_pending() -> None:
    waiting_status = status_rules.refused(ftj(), "RuntimeNotFound", "x", final=False, now=NOW)
    before = ftj(**waiting_status.patch)
    patch = status_rules.validated(before, now=NOW, message="valid with a")
    assert conditions(patch)["Validated"]["status"] == "True"
    assert conditions(patch)["Validated"]["message"] == "valid with a"
    assert {**before["status"], **patch}["phase"] == "Pending"


def test_queued_shows_the_place_and_posts_one_event() -> None:
    update = status_rules.queued(ftj(phase="Pending"), 2, "waiting for GPUs", now=NOW)
    assert update.patch["phase"] == "Queued"
    assert update.patch["queuePosition"] == 2
    running = conditions(update.patch)["Running"]
    assert (running["status"], running["reason"]) == ("False", "Queued")
    assert update.events == [status_rules.Event("Normal", "Queued", "waiting for GPUs")]
    moved = status_rules.queued(ftj(**update.patch), 1, "waiting for GPUs", now=NOW)
    assert moved.patch == {"queuePosition": 1}
    assert moved.events == []


def worker_job(*, suspend: bool, queue: str | None) -> dict[str, Any]:
    labels = {KUEUE_QUEUE_LABEL: queue} if queue else {}
    return {
        "metadata": {"name": "j-workers", "labels": labels, "annotations": {}},
        "spec": {"suspend": suspend, "parallelism": 1},
        "status": {},
    }


def observe(ftj_body: dict[str, Any], job: dict[str, Any]) -> status_rules.StatusUpdate:
    return status_rules.observe(
        ftj_body, job, [], now=NOW, backoff_limit=3, active_deadline_seconds=None
    )


def test_a_job_kueue_holds_is_queued_not_suspended() -> None:
    body = {**ftj(phase="Pending"), "spec": {}}
    update = observe(body, worker_job(suspend=True, queue="gpu"))
    assert update.patch["phase"] == "Queued"
    running = conditions(update.patch)["Running"]
    assert running["reason"] == "Queued"
    assert running["message"] == (
        "waiting for Kueue to admit the worker Job from LocalQueue gpu; its place in the "
        "queue: kubectl get workloads -n ml"
    )
    assert "Suspended" not in conditions(update.patch)


def test_the_users_suspend_is_not_taken_for_kueue() -> None:
    body = {**ftj(phase="Running"), "spec": {"runPolicy": {"suspend": True}}}
    update = observe(body, worker_job(suspend=True, queue=None))
    assert update.patch["phase"] == "Suspended"
    assert "spec.runPolicy.suspend is true" in conditions(update.patch)["Suspended"]["message"]


def test_once_kueue_admits_the_job_is_pending_again() -> None:
    body = {**ftj(phase="Queued"), "spec": {}}
    update = observe(body, worker_job(suspend=False, queue="gpu"))
    assert update.patch["phase"] == "Pending"


@pytest.mark.parametrize(
    ("problems", "value", "reason"),
    [([], "True", "Validated"), (["spec.defaults.x: bad"], "False", "GuardrailConflict")],
)
def test_a_runtimes_own_validated_condition(problems: list[str], value: str, reason: str) -> None:
    runtime = {"metadata": {"name": "a100", "generation": 4}}
    update = status_rules.runtime_validated(runtime, problems, "GuardrailConflict", now=NOW)
    (validated,) = update.patch["conditions"]
    assert (validated["status"], validated["reason"]) == (value, reason)
    assert update.patch["observedGeneration"] == 4
    assert update.events == (
        [status_rules.Event("Warning", "GuardrailConflict", "spec.defaults.x: bad")]
        if problems
        else []
    )


def test_a_kueue_worker_job_is_created_suspended_with_the_queue_label() -> None:
    model = FineTuneJob.model_validate(load_example("sentiment/job.yaml"), by_name=False)
    job = builders.build_job(model, "ml", builders.OperatorSettings(), kueue_queue="gpu")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu"
    plain = builders.build_job(model, "ml", builders.OperatorSettings())
    assert plain["spec"]["suspend"] is False
    assert KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"]


def test_a_trial_carries_its_parents_labels_for_the_runtimes_required_labels() -> None:
    from kubetune_operator import search

    manifest = user_job()
    manifest["spec"]["search"] = {
        "algorithm": "grid",
        "parameters": [{"path": "training.epochs", "type": "int", "values": [1, 2]}],
        "maxTrials": 2,
    }
    parent = FineTuneJob.model_validate(manifest, by_name=False)
    plan = search.next_trials(parent, [])[0]
    trial = search.trial_manifest(parent, plan)
    assert trial["metadata"]["labels"]["cost-center"] == "cc-4711"
    assert trial["metadata"]["labels"]["kubetune.dev/component"] == "trial"
    resolved = resolve(trial, cluster=[a100()])
    assert isinstance(resolved, runtimes.Resolved)


# --- the stall timeout ---------------------------------------------------------------------


def test_a_runtime_bounds_the_stall_timeout_and_lowers_the_default_to_it() -> None:
    runtime = a100()
    runtime["spec"]["guardrails"]["maxStallTimeout"] = "20m"
    resolved = resolve(user_job(), cluster=[runtime])
    assert isinstance(resolved, runtimes.Resolved)
    assert resolved.record["effectiveSpec"]["runPolicy"]["stallTimeout"] == "20m"
    patient = user_job()
    patient["spec"]["runPolicy"] = {"stallTimeout": "1h30m"}
    refused = resolve(patient, cluster=[runtime])
    assert isinstance(refused, runtimes.Refused)
    assert refused.reason == "GuardrailViolated"
    assert "spec.runPolicy.stallTimeout: 1h30m exceeds" in refused.messages[0]
    assert "maxStallTimeout 20m" in refused.messages[0]


def test_a_runtime_with_a_longer_bound_keeps_the_default_stall_timeout() -> None:
    runtime = a100()
    runtime["spec"]["guardrails"]["maxStallTimeout"] = "2h"
    resolved = resolve(user_job(), cluster=[runtime])
    assert isinstance(resolved, runtimes.Resolved)
    assert resolved.record["effectiveSpec"]["runPolicy"]["stallTimeout"] == "30m"
