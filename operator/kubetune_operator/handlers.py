"""kopf handlers: the only place where kubetune reacts to the cluster.

Each handler is thin. It validates the FineTuneJob into the API model once, asks the pure
`builders` for the children and the pure `status` functions for the phase, and performs what
they decide through `kube.Cluster`. The operator keeps no state of its own: the children,
their annotations and the resource's status are the state, so an operator that restarts in
the middle of a job picks up where the last one stopped and creates nothing twice.

Status is recomputed whenever the FineTuneJob, its batch Job or one of its pods changes. The
three are kept in kopf indexes, so computing a status costs no API request.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import kopf

from kubetune_operator import builders, kube, metrics
from kubetune_operator import status as status_rules
from kubetune_operator.api import v1alpha1
from kubetune_operator.manifests import check_document

FINETUNEJOBS: Final = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
MANAGED: Final = {"app.kubernetes.io/managed-by": "kubetune"}
JOB_NAME_LABEL: Final = "kubetune.dev/job-name"
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
TTL_CHECK_SECONDS: Final = 30.0

Key = tuple[str, str]
"""(namespace, FineTuneJob name): how children find their FineTuneJob in the indexes."""


def now() -> datetime:
    return datetime.now(UTC)


def settings_from_env(env: Mapping[str, str]) -> builders.OperatorSettings:
    """The operator-wide defaults the Helm chart passes as environment variables."""
    defaults = builders.OperatorSettings()
    secrets = env.get("KUBETUNE_IMAGE_PULL_SECRETS", "")
    return builders.OperatorSettings(
        trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or defaults.trainer_image,
        image_pull_secrets=tuple(name.strip() for name in secrets.split(",") if name.strip()),
    )


@dataclass
class Runtime:
    """What the handlers share: the API client, the settings, and per-job locks."""

    cluster: kube.Cluster
    settings: builders.OperatorSettings
    locks: defaultdict[Key, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    restarted: dict[Key, int] = field(default_factory=dict)
    """The newest group restart this operator started per job, so a Job that the indexes
    still show after its deletion is never restarted twice."""


def runtime(memo: kopf.Memo) -> Runtime:
    found: Runtime = memo.runtime
    return found


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.dev", key="last-handled-configuration"
    )
    # Events are posted explicitly, one per transition; kopf's own log lines stay in the log.
    settings.posting.level = logging.ERROR
    memo.runtime = Runtime(kube.Cluster(kube.connect()), settings_from_env(os.environ))
    metrics.serve(os.environ)


@kopf.index(*FINETUNEJOBS)
def finetunejobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, name): dict(body)}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def worker_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, labels.get(JOB_NAME_LABEL, "")): dict(body)}


@kopf.index("v1", "pods", labels=MANAGED)
def worker_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, labels.get(JOB_NAME_LABEL, "")): dict(body)}


@kopf.on.resume(*FINETUNEJOBS)
@kopf.on.create(*FINETUNEJOBS)
def reconcile(
    body: kopf.Body, namespace: str, name: str, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Validate the spec; create the children that are missing (existing ones count as done)."""
    with metrics.reconcile_timer("reconcile"):
        shared = runtime(memo)
        checked = check_document(_without_status(body), f"{namespace}/{name}")
        if checked.job is None:
            message = "; ".join(str(problem) for problem in checked.problems)
            update = status_rules.validation_failed(body, message, now=now())
            patch.status.update(update.patch)
            _post(body, update.events)
            return
        if body.get("status", {}).get("phase") in TERMINAL_PHASES:
            return
        restart = int(body.get("status", {}).get("restarts", 0))
        children = builders.build_children(
            checked.job,
            namespace,
            shared.settings,
            restart=restart,
            deadline_seconds=_deadline_left(checked.job, body),
        )
        created = _create_all(shared.cluster, children, owner=body)
        patch.status.update(status_rules.validated(body, now=now()))
        if created:
            kopf.event(body, type="Normal", reason="Created", message=_created_message(created))


@kopf.on.field(*FINETUNEJOBS, field="spec.runPolicy.suspend")
def suspend_changed(new: Any, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Suspend or resume the workers; a resumed group continues from its last checkpoint."""
    runtime(memo).cluster.set_suspended(namespace, builders.workers_name(name), bool(new))


@kopf.on.update(*FINETUNEJOBS, field="spec")
def spec_changed(body: kopf.Body, diff: kopf.Diff, **_: Any) -> None:
    """Tell the user which spec changes a running job does not take (all but suspend)."""
    changed = sorted({".".join(map(str, entry[1])) for entry in diff} - {"runPolicy.suspend"})
    if changed:
        kopf.event(
            body,
            type="Warning",
            reason="SpecChangeIgnored",
            message=f"spec.{', spec.'.join(changed)} changed after the job started; a running "
            "job only takes spec.runPolicy.suspend. Create a new FineTuneJob for the rest.",
        )


@kopf.on.event(*FINETUNEJOBS)
@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("v1", "pods", labels=MANAGED)
def refresh_status(
    resource: kopf.Resource,
    type: str | None,
    namespace: str,
    name: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    finetunejobs: kopf.Index[Key, Any],
    worker_jobs: kopf.Index[Key, Any],
    worker_pods: kopf.Index[Key, Any],
    **_: Any,
) -> None:
    """Recompute the owning FineTuneJob's status from its children and act on the verdict."""
    owner = name if resource.plural == v1alpha1.PLURAL else labels.get(JOB_NAME_LABEL, "")
    key = (namespace, owner)
    shared = runtime(memo)
    if type == "DELETED" and resource.plural == v1alpha1.PLURAL:
        metrics.JOBS.track(key, None)
        return
    with metrics.reconcile_timer("status"), shared.locks[key]:
        ftj = _newest(finetunejobs.get(key, []))
        if ftj is None or not _validated(ftj):
            return
        job = _current_job(worker_jobs.get(key, []), shared.restarted.get(key, 0))
        update = status_rules.observe(
            ftj,
            job,
            list(worker_pods.get(key, [])),
            now=now(),
            backoff_limit=int(_run_policy(ftj).get("backoffLimit", 3)),
            active_deadline_seconds=_run_policy(ftj).get("activeDeadlineSeconds"),
        )
        _apply(shared, ftj, job, update)
        metrics.JOBS.track(key, update.patch.get("phase") or ftj.get("status", {}).get("phase"))


@kopf.timer(*FINETUNEJOBS, interval=TTL_CHECK_SECONDS, initial_delay=TTL_CHECK_SECONDS)
def clean_up_finished(
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    worker_jobs: kopf.Index[Key, Any],
    **_: Any,
) -> None:
    """After runPolicy.ttlSecondsAfterFinished, delete the children; the resource stays."""
    ttl = _run_policy(body).get("ttlSecondsAfterFinished")
    finished_at = body.get("status", {}).get("completionTime")
    if ttl is None or not finished_at or not worker_jobs.get((namespace, name)):
        return
    if (now() - datetime.fromisoformat(finished_at)).total_seconds() < ttl:
        return
    for child in builders.child_references(name, namespace):
        runtime(memo).cluster.delete(child)
    kopf.event(
        body, type="Normal", reason="CleanedUp", message=f"children deleted {ttl}s after the end"
    )


def _apply(
    shared: Runtime,
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    update: status_rules.StatusUpdate,
) -> None:
    namespace, name = ftj["metadata"]["namespace"], ftj["metadata"]["name"]
    decision = update.decision
    patch = dict(update.patch)
    if decision.action == "restart" and job is not None:
        restart = builders.restart_of(job) + 1
        patch["restarts"] = restart
    if patch:
        shared.cluster.patch_status(namespace, name, patch)
    _post(ftj, update.events)
    if decision.action == "restart" and job is not None:
        _restart_group(shared, ftj, restart)
    elif decision.action == "fail" and job is not None and not _finished(job):
        shared.cluster.delete_job(namespace, builders.workers_name(name))


def _restart_group(shared: Runtime, ftj: Mapping[str, Any], restart: int) -> None:
    """Delete the failed Job and create it again; the trainer resumes from its checkpoint."""
    namespace, name = ftj["metadata"]["namespace"], ftj["metadata"]["name"]
    shared.restarted[(namespace, name)] = restart
    checked = check_document(_without_status(ftj), f"{namespace}/{name}")
    assert checked.job is not None  # only validated jobs reach here
    shared.cluster.delete_job(namespace, builders.workers_name(name))
    replacement = builders.build_job(
        checked.job,
        namespace,
        shared.settings,
        restart=restart,
        deadline_seconds=_deadline_left(checked.job, ftj),
    )
    kopf.adopt(replacement, owner=kopf.Body(dict(ftj)))
    shared.cluster.create(replacement)
    metrics.RESTARTS.inc()


def _create_all(
    cluster: kube.Cluster, children: list[dict[str, Any]], *, owner: kopf.Body
) -> list[str]:
    created = []
    for child in children:
        kopf.adopt(child, owner=owner)
        if cluster.create(child):
            created.append(f"{child['kind']} {child['metadata']['name']}")
    return created


def _created_message(created: list[str]) -> str:
    return "created " + ", ".join(created)


def _post(ftj: Mapping[str, Any], events: Iterable[status_rules.Event]) -> None:
    for event in events:
        kopf.event(dict(ftj), type=event.type, reason=event.reason, message=event.message)


def _without_status(body: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "status"}


def _run_policy(ftj: Mapping[str, Any]) -> Mapping[str, Any]:
    policy: Mapping[str, Any] = ftj.get("spec", {}).get("runPolicy", {})
    return policy


def _validated(ftj: Mapping[str, Any]) -> bool:
    conditions = ftj.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Validated" and c.get("status") == "True" for c in conditions)


def _deadline_left(job: v1alpha1.FineTuneJob, ftj: Mapping[str, Any]) -> int | None:
    """What is left of runPolicy.activeDeadlineSeconds since the job first started."""
    deadline = job.spec.run_policy.active_deadline_seconds
    started = ftj.get("status", {}).get("startTime")
    if deadline is None or not started:
        return deadline
    elapsed = (now() - datetime.fromisoformat(started)).total_seconds()
    return max(1, int(deadline - elapsed))


def _newest(bodies: Iterable[Any]) -> Mapping[str, Any] | None:
    found = list(bodies)
    return found[-1] if found else None


def _current_job(jobs: Iterable[Any], restarted: int) -> Mapping[str, Any] | None:
    """The Job of the newest group restart, ignoring any the operator already replaced."""
    live = [
        job
        for job in jobs
        if not job["metadata"].get("deletionTimestamp") and builders.restart_of(job) >= restarted
    ]
    return max(live, key=builders.restart_of, default=None)


def _finished(job: Mapping[str, Any]) -> bool:
    conditions = job.get("status", {}).get("conditions") or []
    return any(
        c.get("type") in {"Complete", "Failed"} and c.get("status") == "True" for c in conditions
    )
