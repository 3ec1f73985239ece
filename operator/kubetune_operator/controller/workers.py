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
from typing import Any, Final, Literal

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from kubetune_operator import builders, kube, kueue, metrics, queueing, runtimes
from kubetune_operator import status as status_rules
from kubetune_operator.api import v1alpha1
from kubetune_operator.api.manifests import check_document
from kubetune_operator.api.plain import parse_time
from kubetune_operator.api.runtime import Guardrails
from kubetune_operator.api.v1alpha1 import TERMINAL_PHASES
from kubetune_operator.controller import reports
from kubetune_operator.controller.state import (
    Indexes,
    Key,
    OperatorState,
    TrackedJob,
    body_of,
    newest,
    now,
    post,
    without_status,
)

LOGGER: Final = logging.getLogger(__name__)


def resolution(
    job: v1alpha1.FineTuneJob,
    ftj: TrackedJob,
    indexes: Indexes,
    default_policy: Guardrails,
) -> runtimes.Resolved | runtimes.Refused:
    """What the job runs with: the effective spec recorded at its validation, or, for a job
    not validated yet, its runtime's defaults merged under its fields and checked now (the
    cluster's default policy where no runtime applies)."""
    if not ftj.is_validated():
        namespaced, cluster = indexes.runtimes_for(ftj.key[0])
        return runtimes.resolve(job, without_status(ftj.body), namespaced, cluster, default_policy)
    recorded = recorded_job(ftj, indexes, default_policy)
    if recorded is None:
        # Validated by an operator that recorded no effective spec: it ran the job's own.
        own = job.spec.model_dump(mode="json", exclude_none=True)
        return runtimes.Resolved(job, None, {"effectiveSpecHash": runtimes.spec_hash(own)})
    if isinstance(recorded, runtimes.Refused):
        return recorded
    return runtimes.Resolved(recorded, None, {})


def recorded_job(
    ftj: TrackedJob, indexes: Indexes, default_policy: Guardrails
) -> v1alpha1.FineTuneJob | runtimes.Refused | None:
    """The job with the effective spec recorded in its status (None when none is), checked
    again before every use: only the operator writes the status (the trainer reports
    through its FineTuneJobReport), and what it recorded must still match its hash and
    keep to the guardrails it was recorded under: its runtime's while that runtime is
    unchanged, the cluster's default policy where no runtime applied."""
    unreadable: list[str] = [name for name in RECORD_FIELDS if name in ftj.unread]
    if unreadable:
        return runtimes.Refused(runtimes.INVALID_SPEC, [_unreadable_record(unreadable)])
    status = ftj.status
    if status.effective_spec is None:
        return None
    if runtimes.spec_hash(status.effective_spec) != status.effective_spec_hash:
        return runtimes.Refused(runtimes.INVALID_SPEC, [CHANGED_EFFECTIVE_SPEC])
    # Another document than the job's own spec: checked as a whole, as the spec once was.
    spec = {**status.effective_spec, "runPolicy": ftj.run_policy()}
    checked = check_document({**without_status(ftj.body), "spec": spec}, ftj.name)
    if checked.job is None:
        problems = [f"status.effectiveSpec: {problem}" for problem in checked.problems]
        return runtimes.Refused(runtimes.INVALID_SPEC, problems)
    applied = status.runtime
    if applied is None:
        return runtimes.recheck_policy(checked.job, default_policy)
    document = indexes.runtime(ftj.key[0], applied.kind, applied.name)
    if document is None or document["metadata"].get("generation") != applied.generation:
        return checked.job  # edited or deleted since: the recorded spec stands, as it was
    return runtimes.recheck(checked.job, document)


RECORD_FIELDS: Final = ("effectiveSpec", "effectiveSpecHash", "runtime")
"""What the operator records at validation and builds the workers from: never read as
absent when it is there but does not validate."""


def _unreadable_record(fields: list[str]) -> str:
    shown = ", ".join(f"status.{name}" for name in fields)
    return (
        f"{shown} no longer validates (changed after the job was validated): the operator "
        "builds no workers from it; create the job again"
    )


CHANGED_EFFECTIVE_SPEC: Final = (
    "status.effectiveSpec was changed after the job was validated (it no longer matches "
    "status.effectiveSpecHash): the operator builds no workers from it; create the job again"
)


def refuse(
    shared: OperatorState,
    ftj: TrackedJob,
    refused: runtimes.Refused,
    into: kopf.Patch | None = None,
) -> None:
    """Validated=False with the refusal's reason and every message, and one Event (`into`:
    see OperatorState.write_status)."""
    update = status_rules.refused(
        ftj.body,
        refused.reason,
        "; ".join(refused.messages),
        final=not refused.waits,
        now=now(),
    )
    if update.patch:
        shared.write_status(ftj, update.patch, into)
    post(ftj.body, update.events)


def start(
    shared: OperatorState,
    resolved: runtimes.Resolved,
    ftj: TrackedJob,
    indexes: Indexes,
    into: kopf.Patch | None = None,
) -> None:
    """Record what the job runs with, mark it Validated and create the children that are
    missing; the worker Job only when the operator's queue lets it start (`into`: see
    OperatorState.write_status)."""
    namespace = ftj.key[0]
    recorded = ftj.unwritten(resolved.record)
    validated = ftj.with_status(recorded)
    message = _validated_message(validated.status)
    patch = {**recorded, **status_rules.validated(ftj.body, now=now(), message=message)}
    view = ftj.with_status(patch)
    with shared.queue_locks[namespace]:
        # A job that holds its GPUs already (an operator restart) is not queued again.
        waiting = None if _holds_gpus(ftj) else _still_waiting(shared, view, indexes)
        if waiting is None and ftj.status.queue_position is not None:
            patch["queuePosition"] = None
        children = builders.build_children(
            resolved.job,
            namespace,
            shared.settings,
            restart=ftj.status.restarts,
            deadline_seconds=_deadline_left(resolved.job, ftj),
            kueue_queue=_kueue_queue(view),
        )
        wanted = children if waiting is None else children[:-1]
        created, blocked = _create_all(shared.cluster, wanted, owner=body_of(ftj.body))
        if blocked is not None:
            refuse(shared, ftj, blocked, into)
            return
        worker_job = children[-1]
        update = _first_look(shared, view, worker_job, created) if waiting is None else waiting
        if patch or update.patch:
            shared.write_status(ftj, {**patch, **update.patch}, into)
    post(ftj.body, update.events)
    if created:
        message = "created " + ", ".join(created)
        post(ftj.body, [status_rules.Event("Normal", status_rules.Reason.Created, message)])


def _validated_message(status: v1alpha1.FineTuneJobStatus) -> str:
    runtime = status.runtime
    digest = (status.effective_spec_hash or "")[:19]
    if runtime is None:
        return f"the spec is valid (effective spec {digest})"
    return (
        f"the spec is valid with {runtime.kind} {runtime.name} "
        f"(generation {runtime.generation}; effective spec {digest})"
    )


def _first_look(
    shared: OperatorState,
    view: TrackedJob,
    worker_job: dict[str, Any],
    created: list[str],
) -> status_rules.StatusUpdate:
    """A new worker Job has no pods yet: its first status goes out with the validation."""
    if not created or created[-1] != f"Job {worker_job['metadata']['name']}":
        return status_rules.StatusUpdate({}, [], status_rules.NOTHING_TO_DO)
    shared.created_jobs[view.key] = worker_job
    return _observe(view, worker_job, [])


def take_report(
    shared: OperatorState, ftj: TrackedJob, report: Mapping[str, Any] | None
) -> TrackedJob:
    """The job with what its trainer reported copied into its status, which is patched when
    that changed it. A report the job does not own is not read."""
    if report is None or not builders.owned_by(report, ftj.body):
        return ftj
    copied = reports.status_copy(ftj.body.get("status") or {}, report)
    for refused in copied.refused:
        LOGGER.warning("FineTuneJobReport %s: %s (not copied)", ftj.name, refused)
    if not copied.patch:
        return ftj
    shared.write_status(ftj, copied.patch)
    return ftj.with_status(copied.patch)


def refresh(
    shared: OperatorState,
    ftj: TrackedJob,
    job: Mapping[str, Any] | None,
    pods: list[Any],
    indexes: Indexes,
) -> str | None:
    """Recompute the status from the Job and pods and act on the verdict; the new phase."""
    key = ftj.key
    if job is not None:
        shared.created_jobs.pop(key, None)
    else:
        job = shared.created_jobs.get(key)
    phase: str | None
    if job is None and waits_in_queue(ftj):
        phase = _advance_in_queue(shared, ftj, indexes)
    else:
        update = _observe(ftj, job, pods, shared.kueue.places.get(key))
        phase = _apply(shared, ftj, job, update, indexes)
    audit = ftj.status.bias_audit
    metrics.JOBS.track(key, phase, None if audit is None else audit.verdict)
    return phase


def waits_in_queue(ftj: TrackedJob) -> bool:
    """Whether the job waits in the operator's queue (a job waiting for Kueue has its Job,
    and its queuePosition is Kueue's)."""
    return (
        ftj.phase == "Queued"
        and ftj.status.queue_position is not None
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
        ftj = indexes.tracked(shared, key)
        job = newest(indexes.jobs.get(key, []))
        queue = None if ftj is None else _kueue_queue(ftj)
        uid = ((job or {}).get("metadata") or {}).get("uid")
        if queue and uid and ftj is not None and ftj.phase == "Queued":
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
    shared: OperatorState, ftj: TrackedJob, indexes: Indexes
) -> status_rules.StatusUpdate | None:
    """The Queued status when the queue keeps the job waiting; None when it may start."""
    queue = _queue_of(shared, ftj, indexes)
    name = ftj.key[1]
    if queue is None or name in queue.admission.start:
        return None
    position = queue.admission.positions[name]
    message = (
        f"waiting for GPUs: {queue.runtime} lets the started jobs of namespace "
        f"{ftj.key[0]} hold {queue.limit} GPUs at once (queue.maxConcurrentGpusPerNamespace); "
        f"{queue.in_use} are held and this job needs {queue.gpus}. Place {position} in the queue."
    )
    return status_rules.queued(ftj.body, position, message, now=now())


def _advance_in_queue(shared: OperatorState, ftj: TrackedJob, indexes: Indexes) -> str:
    """A Queued job: start its worker Job when its turn has come, else update its place."""
    with shared.queue_locks[ftj.key[0]]:
        update = _still_waiting(shared, ftj, indexes)
        if update is not None:
            if update.patch:
                shared.write_status(ftj, update.patch)
            post(ftj.body, update.events)
            return "Queued"
        admitted = ftj.with_status({"queuePosition": None})
        worker_job = _create_workers(shared, admitted, ftj.status.restarts, indexes)
        first = _observe(admitted, worker_job, [])
        shared.write_status(ftj, {"queuePosition": None, **first.patch})
    post(ftj.body, first.events)
    if worker_job is not None:
        message = f"created Job {worker_job['metadata']['name']}: its turn in the queue came"
        post(ftj.body, [status_rules.Event("Normal", status_rules.Reason.Created, message)])
    return str(first.patch.get("phase", "Pending"))


def _queue_of(shared: OperatorState, ftj: TrackedJob, indexes: Indexes) -> _Queue | None:
    """The queue decision for the job; None when its runtime sets no limit or it needs no GPU."""
    namespace, name = ftj.key
    applied, gpus = ftj.status.runtime, _gpus(ftj)
    if applied is None or gpus == 0:
        return None
    runtime = indexes.runtime(namespace, applied.kind, applied.name)
    queue = ((runtime or {}).get("spec") or {}).get("queue") or {}
    limit = queue.get("maxConcurrentGpusPerNamespace")
    if not isinstance(limit, int):
        return None
    peers = [
        peer
        for peer in indexes.jobs_in(shared, namespace)
        if peer.key[1] != name and _same_runtime(peer, applied)
    ]
    in_use = sum(_gpus(peer) for peer in peers if _holds_gpus(peer))
    waiting = [_waiting(peer) for peer in peers if waits_in_queue(peer)] + [_waiting(ftj)]
    admission = queueing.admit(waiting, in_use, limit)
    return _Queue(admission, limit, in_use, gpus, f"{applied.kind} {applied.name}")


def _same_runtime(ftj: TrackedJob, applied: v1alpha1.AppliedRuntime) -> bool:
    theirs = ftj.status.runtime
    return theirs is not None and (theirs.kind, theirs.name) == (applied.kind, applied.name)


def _holds_gpus(ftj: TrackedJob) -> bool:
    """Validated, started and not finished: its GPUs are taken (suspended ones keep them)."""
    return ftj.is_validated() and ftj.phase not in TERMINAL_PHASES and not waits_in_queue(ftj)


def _gpus(ftj: TrackedJob) -> int:
    return runtimes.job_gpus(ftj.status.effective_spec or {})


def _waiting(ftj: TrackedJob) -> queueing.WaitingJob:
    resources = (ftj.status.effective_spec or {}).get("resources") or {}
    return queueing.WaitingJob(
        name=ftj.key[1],
        gpus=_gpus(ftj),
        created=str(ftj.body["metadata"].get("creationTimestamp", "")),
        priority_class=resources.get("priorityClassName"),
    )


def _kueue_queue(ftj: TrackedJob) -> str | None:
    runtime = ftj.status.runtime
    return None if runtime is None else runtime.kueue_local_queue


def clean_up_when_due(shared: OperatorState, ftj: TrackedJob, has_job: bool) -> None:
    """Delete the children ttlSecondsAfterFinished after the end: the ones the job owns,
    each only while it is the object read (an object of a child's name made by someone
    else stays)."""
    ttl = ftj.run_policy().get("ttlSecondsAfterFinished")
    finished_at = ftj.status.completion_time
    if ttl is None or not finished_at or not has_job:
        return
    if (now() - parse_time(finished_at)).total_seconds() < ttl:
        return
    namespace, name = ftj.key
    for child in builders.child_references(name, namespace):
        existing = shared.cluster.read(child)
        if existing is not None and builders.owned_by(existing, ftj.body):
            shared.cluster.delete(child, uid=existing["metadata"]["uid"])
    message = f"children deleted {ttl}s after the end"
    post(ftj.body, [status_rules.Event("Normal", status_rules.Reason.CleanedUp, message)])


def _observe(
    ftj: TrackedJob,
    job: Mapping[str, Any] | None,
    pods: list[Any],
    kueue_place: kueue.Place | None = None,
) -> status_rules.StatusUpdate:
    run_policy = ftj.run_policy()
    return status_rules.observe(
        ftj.body,
        job,
        pods,
        now=now(),
        backoff_limit=int(run_policy.get("backoffLimit", 3)),
        active_deadline_seconds=run_policy.get("activeDeadlineSeconds"),
        kueue_place=kueue_place,
        stall_timeout=run_policy.get("stallTimeout", v1alpha1.DEFAULT_STALL_TIMEOUT),
    )


def _apply(
    shared: OperatorState,
    ftj: TrackedJob,
    job: Mapping[str, Any] | None,
    update: status_rules.StatusUpdate,
    indexes: Indexes,
) -> v1alpha1.Phase | None:
    """Write the patch, post the Events, then delete or (re)create the worker Job; the
    phase the status has now."""
    key = ftj.key
    status = ftj.with_status(update.patch).status
    if update.decision.action == "restart":
        # Before the Job goes: a refresh from an index that has not seen this status yet
        # must create the next group, not the one that failed.
        shared.restarted[key] = status.restarts
        metrics.RESTARTS.inc()
    if update.patch:
        shared.write_status(ftj, update.patch)
    post(ftj.body, update.events)
    if update.decision.delete_job and job is not None:
        shared.created_jobs.pop(key, None)
        shared.cluster.delete_job(key[0], builders.workers_name(key[1]))
        return status.phase
    if status.phase not in TERMINAL_PHASES and _gone(job):
        _create_workers(shared, ftj, status.restarts, indexes)
    return status.phase


def _create_workers(
    shared: OperatorState, ftj: TrackedJob, restart: int, indexes: Indexes
) -> dict[str, Any] | None:
    """Create the worker Job of group restart `restart` from the effective spec recorded at
    validation (a runtime edited since changes nothing); the trainer resumes from the last
    checkpoint in the output volume. A restart number already used is never used again,
    even when the index still shows an older status. A recorded spec that fails its check
    fails the job instead."""
    key: Key = ftj.key
    restart = max(restart, shared.restarted.get(key, 0))
    recorded = recorded_job(ftj, indexes, shared.settings.default_policy)
    if isinstance(recorded, runtimes.Refused):
        refuse(shared, ftj, recorded)
        return None
    recorded = recorded or ftj.model
    if recorded is None:
        return None
    replacement = builders.build_job(
        recorded,
        key[0],
        shared.settings,
        restart=restart,
        deadline_seconds=_deadline_left(recorded, ftj),
        kueue_queue=_kueue_queue(ftj),
    )
    outcome = _create_owned(shared.cluster, replacement, ftj.body)
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


def _deadline_left(job: v1alpha1.FineTuneJob, ftj: TrackedJob) -> int | None:
    """What is left of runPolicy.activeDeadlineSeconds since the job first started."""
    deadline = job.spec.run_policy.active_deadline_seconds
    started = ftj.status.start_time
    if deadline is None or not started:
        return deadline
    elapsed = (now() - parse_time(started)).total_seconds()
    return max(1, int(deadline - elapsed))


def _gone(job: Mapping[str, Any] | None) -> bool:
    return job is None or bool(job["metadata"].get("deletionTimestamp"))
