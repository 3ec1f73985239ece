"""A plain FineTuneJob's worker group, as the handlers drive it.

The pure `builders` say what the children are and the pure `status` rules what the
group's state means; this module performs it: creates the children once, writes the
status, restarts the group from its last checkpoint (a new Job with the next
`kubetune.dev/restart`), and deletes the children when ttlSecondsAfterFinished is up.
Creating is idempotent (409 counts as done), so an operator restart creates nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from kubetune_operator import builders, kube, metrics
from kubetune_operator import status as status_rules
from kubetune_operator.api import v1alpha1
from kubetune_operator.manifests import check_document
from kubetune_operator.state import (
    TERMINAL_PHASES,
    Key,
    OperatorState,
    body_of,
    key_of,
    now,
    post,
    run_policy,
    without_status,
)


def start(
    shared: OperatorState, job: v1alpha1.FineTuneJob, body: kopf.Body, patch: kopf.Patch
) -> None:
    """Create the children that are missing and mark the job Validated, in kopf's patch."""
    namespace, name = key_of(body)
    restart = int(body.get("status", {}).get("restarts", 0))
    children = builders.build_children(
        job,
        namespace,
        shared.settings,
        restart=restart,
        deadline_seconds=_deadline_left(job, body),
    )
    created = _create_all(shared.cluster, children, owner=body)
    validated = status_rules.validated(body, now=now())
    patch.status.update(validated)
    worker_job = children[-1]
    if created and created[-1] == f"Job {worker_job['metadata']['name']}":
        # A new worker Job has no pods yet: its first status goes out with this patch.
        shared.created_jobs[(namespace, name)] = worker_job
        first = _observe(
            {**body, "status": {**body.get("status", {}), **validated}}, worker_job, []
        )
        patch.status.update(first.patch)
        post(body, first.events)
    if created:
        kopf.event(
            body,
            type="Normal",
            reason=status_rules.Reason.Created,
            message="created " + ", ".join(created),
        )


def refresh(
    shared: OperatorState,
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: list[Any],
) -> None:
    """Recompute the status from the Job and pods and act on the verdict."""
    key = key_of(ftj)
    if job is not None:
        shared.created_jobs.pop(key, None)
    else:
        job = shared.created_jobs.get(key)
    update = _observe(ftj, job, pods)
    _apply(shared, ftj, job, update)
    status = {**ftj.get("status", {}), **update.patch}
    verdict = (ftj.get("status", {}).get("biasAudit") or {}).get("verdict")
    metrics.JOBS.track(key, status.get("phase"), verdict)


def clean_up_when_due(shared: OperatorState, ftj: kopf.Body, has_job: bool) -> None:
    """Delete the children ttlSecondsAfterFinished after the end."""
    ttl = run_policy(ftj).get("ttlSecondsAfterFinished")
    finished_at = ftj.get("status", {}).get("completionTime")
    if ttl is None or not finished_at or not has_job:
        return
    if (now() - datetime.fromisoformat(finished_at)).total_seconds() < ttl:
        return
    namespace, name = key_of(ftj)
    for child in builders.child_references(name, namespace):
        shared.cluster.delete(child)
    kopf.event(
        ftj,
        type="Normal",
        reason=status_rules.Reason.CleanedUp,
        message=f"children deleted {ttl}s after the end",
    )


def _observe(
    ftj: Mapping[str, Any], job: Mapping[str, Any] | None, pods: list[Any]
) -> status_rules.StatusUpdate:
    return status_rules.observe(
        ftj,
        job,
        pods,
        now=now(),
        backoff_limit=int(run_policy(ftj).get("backoffLimit", 3)),
        active_deadline_seconds=run_policy(ftj).get("activeDeadlineSeconds"),
    )


def _apply(
    shared: OperatorState,
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    update: status_rules.StatusUpdate,
) -> None:
    """Write the patch, post the Events, then delete or (re)create the worker Job."""
    key = key_of(ftj)
    status = {**ftj.get("status", {}), **update.patch}
    if update.decision.action == "restart":
        # Before the Job goes: a refresh from an index that has not seen this status yet
        # must create the next group, not the one that failed.
        shared.restarted[key] = int(status.get("restarts", 0))
        metrics.RESTARTS.inc()
    if update.patch:
        shared.write_status(ftj, update.patch)
    post(ftj, update.events)
    if update.decision.delete_job and job is not None:
        shared.created_jobs.pop(key, None)
        shared.cluster.delete_job(key[0], builders.workers_name(key[1]))
        return
    if status.get("phase") not in TERMINAL_PHASES and _gone(job):
        _create_workers(shared, ftj, int(status.get("restarts", 0)))


def _create_workers(shared: OperatorState, ftj: Mapping[str, Any], restart: int) -> None:
    """Create the worker Job of group restart `restart`; the trainer resumes from the last
    checkpoint in the output volume. A restart number already used is never used again,
    even when the index still shows an older status."""
    key: Key = key_of(ftj)
    restart = max(restart, shared.restarted.get(key, 0))
    checked = check_document(without_status(ftj), f"{key[0]}/{key[1]}")
    if checked.job is None:
        return
    replacement = builders.build_job(
        checked.job,
        key[0],
        shared.settings,
        restart=restart,
        deadline_seconds=_deadline_left(checked.job, ftj),
    )
    kopf.adopt(replacement, owner=body_of(ftj))
    shared.cluster.create(replacement)
    shared.created_jobs[key] = replacement


def _create_all(
    cluster: kube.Cluster, children: list[dict[str, Any]], *, owner: kopf.Body
) -> list[str]:
    created = []
    for child in children:
        kopf.adopt(child, owner=owner)
        if cluster.create(child):
            created.append(f"{child['kind']} {child['metadata']['name']}")
    return created


def _deadline_left(job: v1alpha1.FineTuneJob, ftj: Mapping[str, Any]) -> int | None:
    """What is left of runPolicy.activeDeadlineSeconds since the job first started."""
    deadline = job.spec.run_policy.active_deadline_seconds
    started = ftj.get("status", {}).get("startTime")
    if deadline is None or not started:
        return deadline
    elapsed = (now() - datetime.fromisoformat(started)).total_seconds()
    return max(1, int(deadline - elapsed))


def _gone(job: Mapping[str, Any] | None) -> bool:
    return job is None or bool(job["metadata"].get("deletionTimestamp"))
