"""A plain FineTuneJob's worker group, as the handlers drive it.

The pure `runtimes` say what the job runs with (its runtime's defaults and guardrails),
`queueing` whether it may start now, `builders` what the children are and `status` what
the group's state means; this module performs it: records the effective spec, refuses or
queues the job, creates the children once, writes the status, restarts the group from its
last checkpoint (a new Job with the next `kubetune.dev/restart`), and deletes the children
when ttlSecondsAfterFinished is up. Creating is idempotent (409 counts as done), so an
operator restart creates nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from kubetune_operator import builders, kube, kueue, metrics, queueing, runtimes
from kubetune_operator import status as status_rules
from kubetune_operator.api import v1alpha1
from kubetune_operator.api.manifests import check_document
from kubetune_operator.api.runtime import Guardrails
from kubetune_operator.api.v1alpha1 import TERMINAL_PHASES
from kubetune_operator.controller import reports
from kubetune_operator.controller.state import (
    Indexes,
    Key,
    OperatorState,
    body_of,
    is_validated,
    key_of,
    name_of,
    newest,
    now,
    post,
    run_policy,
    without_status,
)

LOGGER: Final = logging.getLogger(__name__)


def resolution(
    job: v1alpha1.FineTuneJob,
    ftj: Mapping[str, Any],
    indexes: Indexes,
    default_policy: Guardrails,
) -> runtimes.Resolved | runtimes.Refused:
    """What the job runs with: the effective spec recorded at its validation, or, for a job
    not validated yet, its runtime's defaults merged under its fields and checked now (the
    cluster's default policy where no runtime applies)."""
    if not is_validated(ftj):
        namespaced, cluster = indexes.runtimes_for(key_of(ftj)[0])
        return runtimes.resolve(job, without_status(ftj), namespaced, cluster, default_policy)
    recorded = recorded_job(ftj, indexes, default_policy)
    if recorded is None:
        # Validated by an operator that recorded no effective spec: it ran the job's own.
        own = job.spec.model_dump(mode="json", exclude_none=True)
        return runtimes.Resolved(job, None, {"effectiveSpecHash": runtimes.spec_hash(own)})
    if isinstance(recorded, runtimes.Refused):
        return recorded
    return runtimes.Resolved(recorded, None, {})


def recorded_job(
    ftj: Mapping[str, Any], indexes: Indexes, default_policy: Guardrails
) -> v1alpha1.FineTuneJob | runtimes.Refused | None:
    """The job with the effective spec recorded in its status (None when none is), checked
    again before every use: only the operator writes the status (the trainer reports
    through its FineTuneJobReport), and what it recorded must still match its hash and
    keep to the guardrails it was recorded under: its runtime's while that runtime is
    unchanged, the cluster's default policy where no runtime applied."""
    status = ftj.get("status", {})
    spec = status.get("effectiveSpec")
    if spec is None:
        return None
    if runtimes.spec_hash(spec) != status.get("effectiveSpecHash"):
        return runtimes.Refused(runtimes.INVALID_SPEC, [CHANGED_EFFECTIVE_SPEC])
    spec = {**spec, "runPolicy": run_policy(ftj)}
    checked = check_document({**without_status(ftj), "spec": spec}, name_of(ftj))
    if checked.job is None:
        problems = [f"status.effectiveSpec: {problem}" for problem in checked.problems]
        return runtimes.Refused(runtimes.INVALID_SPEC, problems)
    applied = status.get("runtime")
    if applied is None:
        return runtimes.recheck_policy(checked.job, default_policy)
    document = indexes.runtime(key_of(ftj)[0], applied["kind"], applied["name"])
    if document is None or document["metadata"].get("generation") != applied["generation"]:
        return checked.job  # edited or deleted since: the recorded spec stands, as it was
    return runtimes.recheck(checked.job, document)


CHANGED_EFFECTIVE_SPEC: Final = (
    "status.effectiveSpec was changed after the job was validated (it no longer matches "
    "status.effectiveSpecHash): the operator builds no workers from it; create the job again"
)


def refuse(
    shared: OperatorState,
    ftj: Mapping[str, Any],
    refused: runtimes.Refused,
    into: kopf.Patch | None = None,
) -> None:
    """Validated=False with the refusal's reason and every message, and one Event (`into`:
    see OperatorState.write_status)."""
    update = status_rules.refused(
        ftj,
        refused.reason,
        "; ".join(refused.messages),
        final=not refused.waits,
        now=now(),
    )
    if update.patch:
        shared.write_status(ftj, update.patch, into)
    post(ftj, update.events)


def start(
    shared: OperatorState,
    resolved: runtimes.Resolved,
    ftj: Mapping[str, Any],
    indexes: Indexes,
    into: kopf.Patch | None = None,
) -> None:
    """Record what the job runs with, mark it Validated and create the children that are
    missing; the worker Job only when the operator's queue lets it start (`into`: see
    OperatorState.write_status)."""
    namespace = key_of(ftj)[0]
    status = ftj.get("status", {})
    recorded = {k: v for k, v in resolved.record.items() if status.get(k) != v}
    message = _validated_message({**status, **recorded})
    patch = {**recorded, **status_rules.validated(ftj, now=now(), message=message)}
    view = {**ftj, "status": {**status, **patch}}
    with shared.queue_locks[namespace]:
        # A job that holds its GPUs already (an operator restart) is not queued again.
        waiting = None if _holds_gpus(ftj) else _still_waiting(shared, view, indexes)
        if waiting is None and status.get("queuePosition") is not None:
            patch["queuePosition"] = None
        children = builders.build_children(
            resolved.job,
            namespace,
            shared.settings,
            restart=int(status.get("restarts", 0)),
            deadline_seconds=_deadline_left(resolved.job, ftj),
            kueue_queue=_kueue_queue(view),
        )
        wanted = children if waiting is None else children[:-1]
        created, blocked = _create_all(shared.cluster, wanted, owner=body_of(ftj))
        if blocked is not None:
            refuse(shared, ftj, blocked, into)
            return
        worker_job = children[-1]
        update = _first_look(shared, view, worker_job, created) if waiting is None else waiting
        if patch or update.patch:
            shared.write_status(ftj, {**patch, **update.patch}, into)
    post(ftj, update.events)
    if created:
        message = "created " + ", ".join(created)
        post(ftj, [status_rules.Event("Normal", status_rules.Reason.Created, message)])


def _validated_message(status: Mapping[str, Any]) -> str:
    runtime = status.get("runtime")
    digest = str(status.get("effectiveSpecHash", ""))[:19]
    if runtime is None:
        return f"the spec is valid (effective spec {digest})"
    return (
        f"the spec is valid with {runtime['kind']} {runtime['name']} "
        f"(generation {runtime['generation']}; effective spec {digest})"
    )


def _first_look(
    shared: OperatorState,
    view: Mapping[str, Any],
    worker_job: dict[str, Any],
    created: list[str],
) -> status_rules.StatusUpdate:
    """A new worker Job has no pods yet: its first status goes out with the validation."""
    if not created or created[-1] != f"Job {worker_job['metadata']['name']}":
        return status_rules.StatusUpdate({}, [], status_rules.NOTHING_TO_DO)
    shared.created_jobs[key_of(view)] = worker_job
    return _observe(view, worker_job, [])


def take_report(
    shared: OperatorState, ftj: Mapping[str, Any], report: Mapping[str, Any] | None
) -> Mapping[str, Any]:
    """The job with what its trainer reported copied into its status, which is patched when
    that changed it. A report the job does not own is not read."""
    if report is None or not builders.owned_by(report, ftj):
        return ftj
    copied = reports.status_copy(ftj.get("status", {}), report)
    for refused in copied.refused:
        LOGGER.warning("FineTuneJobReport %s: %s (not copied)", name_of(ftj), refused)
    if not copied.patch:
        return ftj
    shared.write_status(ftj, copied.patch)
    return {**ftj, "status": {**ftj.get("status", {}), **copied.patch}}


def refresh(
    shared: OperatorState,
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: list[Any],
    indexes: Indexes,
) -> str | None:
    """Recompute the status from the Job and pods and act on the verdict; the new phase."""
    key = key_of(ftj)
    if job is not None:
        shared.created_jobs.pop(key, None)
    else:
        job = shared.created_jobs.get(key)
    phase: str | None
    if job is None and waits_in_queue(ftj):
        phase = _advance_in_queue(shared, ftj, indexes)
    else:
        update = _observe(ftj, job, pods, shared.kueue.places.get(key))
        _apply(shared, ftj, job, update, indexes)
        phase = {**ftj.get("status", {}), **update.patch}.get("phase")
    verdict = (ftj.get("status", {}).get("biasAudit") or {}).get("verdict")
    metrics.JOBS.track(key, phase, verdict)
    return phase


def waits_in_queue(ftj: Mapping[str, Any]) -> bool:
    """Whether the job waits in the operator's queue (a job waiting for Kueue has its Job,
    and its queuePosition is Kueue's)."""
    status = ftj.get("status", {})
    return (
        status.get("phase") == "Queued"
        and status.get("queuePosition") is not None
        and _kueue_queue(ftj) is None
    )


# Kueue's queue (the runtime's queue.kueueLocalQueue).


def look_up_kueue_places(shared: OperatorState, indexes: Indexes) -> None:
    """Ask Kueue's visibility API where the worker Jobs waiting for it stand: one request
    per LocalQueue that has such Jobs, whatever their number (one more per page of
    kueue.PAGE_SIZE Workloads ahead of the last of them). The places are kept for every
    status computed until the next look; a LocalQueue whose API does not answer keeps the
    message without a place and rests (kueue.Visibility)."""
    waiting = _waiting_for_kueue(shared, indexes)
    memory = shared.kueue
    found: dict[Key, kueue.Place] = {}
    for queue in memory.due(waiting):
        jobs = waiting[queue]
        try:
            placed = _kueue_places_in(shared, queue, jobs)
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            # Transient (Kueue's API priority and fairness answers 429): keep the last places.
            LOGGER.debug("Kueue's pending workloads of %s/%s: %s", *queue, error)
            found |= {key: memory.places[key] for key in jobs.values() if key in memory.places}
            continue
        if placed is None:
            if memory.unanswered(queue):
                LOGGER.info(
                    "Kueue's visibility API (%s) does not answer for LocalQueue %s/%s (not "
                    "served or not allowed): jobs waiting in it show no place",
                    kube.KUEUE_VISIBILITY_GROUP,
                    *queue,
                )
            continue
        found |= placed
    memory.places = found


def _kueue_places_in(
    shared: OperatorState, queue: kueue.LocalQueue, jobs: Mapping[str, Key]
) -> dict[Key, kueue.Place] | None:
    """The places of `jobs` in a LocalQueue, page after page; None when its visibility API
    does not answer."""
    found: dict[Key, kueue.Place] = {}
    for page in range(kueue.MAX_PAGES):
        offset = page * kueue.PAGE_SIZE
        summary = shared.cluster.pending_workloads(*queue, offset=offset, limit=kueue.PAGE_SIZE)
        if summary is None:
            return found if page else None
        found |= kueue.places(summary, jobs)
        if not kueue.more_to_read(summary, len(found), len(jobs)):
            break
    return found


def _waiting_for_kueue(
    shared: OperatorState, indexes: Indexes
) -> dict[kueue.LocalQueue, dict[str, Key]]:
    """Per LocalQueue, the uids of the worker Jobs that wait for Kueue, with their jobs."""
    waiting: dict[kueue.LocalQueue, dict[str, Key]] = {}
    for key in list(indexes.finetunejobs):
        ftj = shared.own_writes_over(key, newest(indexes.finetunejobs.get(key, [])))
        job = newest(indexes.jobs.get(key, []))
        queue = _kueue_queue(ftj or {})
        uid = ((job or {}).get("metadata") or {}).get("uid")
        if queue and uid and (ftj or {}).get("status", {}).get("phase") == "Queued":
            waiting.setdefault((key[0], queue), {})[str(uid)] = key
    return waiting


# The operator's queue (the runtime's queue.maxConcurrentGpusPerNamespace).


@dataclass(frozen=True)
class _Queue:
    """Where the job stands in its namespace's queue for its runtime."""

    admission: queueing.Admission
    limit: int
    in_use: int
    gpus: int
    runtime: str


def _still_waiting(
    shared: OperatorState, ftj: Mapping[str, Any], indexes: Indexes
) -> status_rules.StatusUpdate | None:
    """The Queued status when the queue keeps the job waiting; None when it may start."""
    queue = _queue_of(shared, ftj, indexes)
    name = key_of(ftj)[1]
    if queue is None or name in queue.admission.start:
        return None
    position = queue.admission.positions[name]
    message = (
        f"waiting for GPUs: {queue.runtime} lets the started jobs of namespace "
        f"{key_of(ftj)[0]} hold {queue.limit} GPUs at once (queue.maxConcurrentGpusPerNamespace); "
        f"{queue.in_use} are held and this job needs {queue.gpus}. Place {position} in the queue."
    )
    return status_rules.queued(ftj, position, message, now=now())


def _advance_in_queue(shared: OperatorState, ftj: Mapping[str, Any], indexes: Indexes) -> str:
    """A Queued job: start its worker Job when its turn has come, else update its place."""
    with shared.queue_locks[key_of(ftj)[0]]:
        update = _still_waiting(shared, ftj, indexes)
        if update is not None:
            if update.patch:
                shared.write_status(ftj, update.patch)
            post(ftj, update.events)
            return "Queued"
        admitted = {**ftj, "status": {**ftj.get("status", {}), "queuePosition": None}}
        worker_job = _create_workers(
            shared, admitted, int(ftj["status"].get("restarts", 0)), indexes
        )
        first = _observe(admitted, worker_job, [])
        shared.write_status(ftj, {"queuePosition": None, **first.patch})
    post(ftj, first.events)
    if worker_job is not None:
        message = f"created Job {worker_job['metadata']['name']}: its turn in the queue came"
        post(ftj, [status_rules.Event("Normal", status_rules.Reason.Created, message)])
    return str(first.patch.get("phase", "Pending"))


def _queue_of(shared: OperatorState, ftj: Mapping[str, Any], indexes: Indexes) -> _Queue | None:
    """The queue decision for the job; None when its runtime sets no limit or it needs no GPU."""
    namespace, name = key_of(ftj)
    status = ftj.get("status", {})
    applied, gpus = status.get("runtime"), runtimes.job_gpus(status.get("effectiveSpec") or {})
    if applied is None or gpus == 0:
        return None
    runtime = indexes.runtime(namespace, applied["kind"], applied["name"])
    queue = ((runtime or {}).get("spec") or {}).get("queue") or {}
    limit = queue.get("maxConcurrentGpusPerNamespace")
    if not isinstance(limit, int):
        return None
    peers = [
        peer
        for peer in indexes.jobs_in(shared, namespace)
        if peer["metadata"]["name"] != name and _same_runtime(peer, applied)
    ]
    in_use = sum(_gpus(peer) for peer in peers if _holds_gpus(peer))
    waiting = [_waiting(peer) for peer in peers if waits_in_queue(peer)] + [_waiting(ftj)]
    admission = queueing.admit(waiting, in_use, limit)
    return _Queue(admission, limit, in_use, gpus, f"{applied['kind']} {applied['name']}")


def _same_runtime(ftj: Mapping[str, Any], applied: Mapping[str, Any]) -> bool:
    theirs = ftj.get("status", {}).get("runtime") or {}
    return (theirs.get("kind"), theirs.get("name")) == (applied["kind"], applied["name"])


def _holds_gpus(ftj: Mapping[str, Any]) -> bool:
    """Validated, started and not finished: its GPUs are taken (suspended ones keep them)."""
    phase = ftj.get("status", {}).get("phase")
    return is_validated(ftj) and phase not in TERMINAL_PHASES and not waits_in_queue(ftj)


def _gpus(ftj: Mapping[str, Any]) -> int:
    return runtimes.job_gpus(ftj.get("status", {}).get("effectiveSpec") or {})


def _waiting(ftj: Mapping[str, Any]) -> queueing.WaitingJob:
    metadata = ftj["metadata"]
    resources = (ftj.get("status", {}).get("effectiveSpec") or {}).get("resources") or {}
    return queueing.WaitingJob(
        name=metadata["name"],
        gpus=_gpus(ftj),
        created=str(metadata.get("creationTimestamp", "")),
        priority_class=resources.get("priorityClassName"),
    )


def _kueue_queue(ftj: Mapping[str, Any]) -> str | None:
    queue = (ftj.get("status", {}).get("runtime") or {}).get("kueueLocalQueue")
    return str(queue) if queue else None


def clean_up_when_due(shared: OperatorState, ftj: Mapping[str, Any], has_job: bool) -> None:
    """Delete the children ttlSecondsAfterFinished after the end: the ones the job owns,
    each only while it is the object read (an object of a child's name made by someone
    else stays)."""
    ttl = run_policy(ftj).get("ttlSecondsAfterFinished")
    finished_at = ftj.get("status", {}).get("completionTime")
    if ttl is None or not finished_at or not has_job:
        return
    if (now() - datetime.fromisoformat(finished_at)).total_seconds() < ttl:
        return
    namespace, name = key_of(ftj)
    for child in builders.child_references(name, namespace):
        existing = shared.cluster.read(child)
        if existing is not None and builders.owned_by(existing, ftj):
            shared.cluster.delete(child, uid=existing["metadata"]["uid"])
    message = f"children deleted {ttl}s after the end"
    post(ftj, [status_rules.Event("Normal", status_rules.Reason.CleanedUp, message)])


def _observe(
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: list[Any],
    kueue_place: kueue.Place | None = None,
) -> status_rules.StatusUpdate:
    return status_rules.observe(
        ftj,
        job,
        pods,
        now=now(),
        backoff_limit=int(run_policy(ftj).get("backoffLimit", 3)),
        active_deadline_seconds=run_policy(ftj).get("activeDeadlineSeconds"),
        kueue_place=kueue_place,
        stall_timeout=run_policy(ftj).get("stallTimeout", v1alpha1.DEFAULT_STALL_TIMEOUT),
    )


def _apply(
    shared: OperatorState,
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    update: status_rules.StatusUpdate,
    indexes: Indexes,
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
        _create_workers(shared, ftj, int(status.get("restarts", 0)), indexes)


def _create_workers(
    shared: OperatorState, ftj: Mapping[str, Any], restart: int, indexes: Indexes
) -> dict[str, Any] | None:
    """Create the worker Job of group restart `restart` from the effective spec recorded at
    validation (a runtime edited since changes nothing); the trainer resumes from the last
    checkpoint in the output volume. A restart number already used is never used again,
    even when the index still shows an older status. A recorded spec that fails its check
    fails the job instead."""
    key: Key = key_of(ftj)
    restart = max(restart, shared.restarted.get(key, 0))
    recorded = recorded_job(ftj, indexes, shared.settings.default_policy)
    if isinstance(recorded, runtimes.Refused):
        refuse(shared, ftj, recorded)
        return None
    if recorded is None:
        checked = check_document(without_status(ftj), name_of(ftj))
        if checked.job is None:
            return None
        recorded = checked.job
    replacement = builders.build_job(
        recorded,
        key[0],
        shared.settings,
        restart=restart,
        deadline_seconds=_deadline_left(recorded, ftj),
        kueue_queue=_kueue_queue(ftj),
    )
    outcome = _create_owned(shared.cluster, replacement, ftj)
    if outcome not in ("created", "ours"):
        refuse(shared, ftj, _blocked(replacement, outcome))
        return None
    shared.created_jobs[key] = replacement
    return replacement


def _create_all(
    cluster: kube.Cluster, children: list[dict[str, Any]], *, owner: kopf.Body
) -> tuple[list[str], runtimes.Refused | None]:
    """Create the children in order; the ones created, and why not all when one's name is
    held by another object (creating stops there: nothing is granted or started beside it)."""
    created: list[str] = []
    for child in children:
        outcome = _create_owned(cluster, child, owner)
        if outcome not in ("created", "ours"):
            return created, _blocked(child, outcome)
        if outcome == "created":
            created.append(f"{child['kind']} {child['metadata']['name']}")
    return created, None


Outcome = Literal["created", "ours", "leftover", "taken"]
"""A child created now, or one of its name that is the job's own (an operator restart made
it), an earlier job's of the same name (the garbage collector is deleting it), or anyone
else's (never adopted, changed or deleted)."""


def _create_owned(
    cluster: kube.Cluster, child: dict[str, Any], owner: Mapping[str, Any]
) -> Outcome:
    """Create the child, owned by the job; what holds its name when it exists already."""
    kopf.adopt(child, owner=body_of(owner))
    if cluster.create(child):
        return "created"
    existing = cluster.read(child)
    if existing is None or builders.owned_by(existing, owner):
        return "ours"  # None: deleted in between, and the next event creates it
    references = existing["metadata"].get("ownerReferences") or []
    earlier = any(
        ref.get("kind") == v1alpha1.KIND and ref.get("name") == owner["metadata"]["name"]
        for ref in references
    )
    return "leftover" if earlier else "taken"


def _blocked(child: Mapping[str, Any], outcome: Outcome) -> runtimes.Refused:
    shown = f"{child['kind']} {child['metadata']['name']}"
    if outcome == "leftover":
        return runtimes.Refused(
            runtimes.WAITING_FOR_CLEANUP,
            [
                f"{shown} still belongs to an earlier FineTuneJob of this name, which "
                "Kubernetes' garbage collector is deleting; the job starts when it is gone"
            ],
        )
    return runtimes.Refused(
        status_rules.Reason.NameTaken,
        [
            f"{shown} exists and is not this job's (no ownerReference to it): the operator "
            "neither uses nor deletes another's object; delete or rename it, or create the "
            "job under another name"
        ],
    )


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
