"""A FineTuneJob's status, recomputed from its worker Job and pods on every event.

Kubernetes controllers do not trust their own earlier status: they look at the children
and say what they see. These functions do that and nothing else (no API calls, no clock,
no kopf), so every reason a person may meet in `kubectl describe ftj` is a unit test.
`workers.py` calls `observe` on every change of the FineTuneJob, its Job or its pods, and
from a timer (only the clock notices runPolicy.activeDeadlineSeconds), then:

- merge-patches `status` with `StatusUpdate.patch` (operator-owned fields only; the
  trainer's progress, metrics, diagnosis, dataValidation and biasAudit are only read);
- posts each `StatusUpdate.events` entry as an Event on the FineTuneJob;
- acts on `StatusUpdate.decision`: when `delete_job`, deletes `<job>-workers` with
  propagationPolicy Foreground (its pods are gone before it is, so the next group never
  meets the old one); whenever there is no Job and the phase is not Succeeded or Failed, it
  creates the Job with the annotation `kubetune.dev/restart: "<status.restarts>"`. That one
  rule covers the first Job (restarts 0), a restart (this module sets restarts to the next
  number when it decides one) and an operator restart halfway through either.

A suspended Job means one of two things, kept apart: the user's spec.runPolicy.suspend
(phase Suspended), or a Job made for Kueue (its queue-name label) that Kueue has not
admitted yet (phase Queued, with `queuePosition` and the place in the message when
Kueue's visibility API told the operator where the Job waits: kueue.py). A job in the
operator's own GPU queue has no Job yet; `queued` gives its status, `refused` the one of
a job its runtime does not accept, and `runtime_validated` a runtime's own condition.

Two things cannot be seen in the children and are kept in the status: `startTime` (the
deadline counts from the first Job's start, across restarts) and `lastFailure` (a Job
deleted for a restart takes its pods along, yet OOMKilled twice at the same step must fail
the job). Succeeded and Failed are final: after them only the trainer-derived conditions
(DataValidated, BiasAuditPassed) are still updated, since ttlSecondsAfterFinished may
delete the children while the status must stay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from kubetune_operator import kueue
from kubetune_operator.api.plain import mapping, mappings, parse_time
from kubetune_operator.api.runtime import KUEUE_QUEUE_LABEL
from kubetune_operator.api.v1alpha1 import (
    TERMINAL_PHASES,
    ConditionType,
    Phase,
    duration_seconds,
)
from kubetune_trainer.config import (
    EXIT_BUDGET_EXCEEDED,
    EXIT_INVALID_INPUT,
    EXIT_TRAINING_FAILED,
)

RESTART_ANNOTATION: Final = "kubetune.dev/restart"
TRAINER_CONTAINER: Final = "trainer"
COMPLETION_INDEX_LABEL: Final = "batch.kubernetes.io/job-completion-index"
CONTROLLER_UID_LABELS: Final = ("batch.kubernetes.io/controller-uid", "controller-uid")
MAX_MESSAGE_CHARS: Final = 1024
DISRUPTION_CONDITION: Final = "DisruptionTarget"
"""The pod condition Kubernetes sets before it evicts, preempts or drains a pod away."""
"""Kubernetes truncates an Event's message at 1 KiB; conditions get the same text."""

ConditionValue = tuple[Literal["True", "False", "Unknown"], str, str]
"""A condition's status, reason and message."""

IMAGE_NOT_FOUND_MARKERS: Final = ("not found", "manifest unknown", "repository does not exist")
CONDITION_ORDER: Final[tuple[ConditionType, ...]] = (
    "Validated",
    "DataValidated",
    "Running",
    "Suspended",
    "BiasAuditPassed",
    "Succeeded",
    "Failed",
)


class Reason:
    """Condition, phase and Event reasons: CamelCase words a person can look up."""

    Validated: Final = "Validated"
    InvalidSpec: Final = "InvalidSpec"
    Created: Final = "Created"
    Pending: Final = "Pending"
    Unschedulable: Final = "Unschedulable"
    ImagePullBackOff: Final = "ImagePullBackOff"
    ErrImagePull: Final = "ErrImagePull"
    ImageNotFound: Final = "ImageNotFound"
    CreateContainerConfigError: Final = "CreateContainerConfigError"
    Running: Final = "Running"
    Restarting: Final = "Restarting"
    Suspended: Final = "Suspended"
    Resumed: Final = "Resumed"
    Succeeded: Final = "Succeeded"
    InvalidInput: Final = "InvalidInput"
    TrainingFailed: Final = "TrainingFailed"
    BudgetExceeded: Final = "BudgetExceeded"
    OOMKilled: Final = "OOMKilled"
    WorkerFailed: Final = "WorkerFailed"
    WorkerDisrupted: Final = "WorkerDisrupted"
    DeadlineExceeded: Final = "DeadlineExceeded"
    BackoffLimitExceeded: Final = "BackoffLimitExceeded"
    DataValidated: Final = "DataValidated"
    DataRejected: Final = "DataRejected"
    BiasAuditPassed: Final = "BiasAuditPassed"
    BiasAuditFailed: Final = "BiasAuditFailed"
    InsufficientData: Final = "InsufficientData"
    SpecChangeIgnored: Final = "SpecChangeIgnored"
    CleanedUp: Final = "CleanedUp"
    NameTaken: Final = "NameTaken"
    WaitingForCleanup: Final = "WaitingForCleanup"
    Stalled: Final = "Stalled"
    TrialPruned: Final = "TrialPruned"
    TrialFailed: Final = "TrialFailed"
    SearchFailed: Final = "SearchFailed"
    GuardrailViolated: Final = "GuardrailViolated"
    RuntimeNotFound: Final = "RuntimeNotFound"
    RuntimeNotAllowed: Final = "RuntimeNotAllowed"
    RuntimeAmbiguous: Final = "RuntimeAmbiguous"
    RuntimeInvalid: Final = "RuntimeInvalid"
    GuardrailConflict: Final = "GuardrailConflict"
    Queued: Final = "Queued"


WARNING_REASONS: Final = frozenset(
    {
        Reason.Unschedulable,
        Reason.ImagePullBackOff,
        Reason.ErrImagePull,
        Reason.CreateContainerConfigError,
        Reason.Restarting,
    }
)
PULL_REASONS: Final = {
    "ErrImagePull": Reason.ErrImagePull,
    "ImagePullBackOff": Reason.ImagePullBackOff,
}
NON_RETRYABLE_CAUSES: Final = frozenset(
    {Reason.InvalidInput, Reason.TrainingFailed, Reason.BudgetExceeded}
)
CAUSE_SEVERITY: Final = {
    Reason.InvalidInput: 0,
    Reason.TrainingFailed: 1,
    Reason.BudgetExceeded: 2,
    Reason.OOMKilled: 3,
    Reason.WorkerDisrupted: 4,
    Reason.WorkerFailed: 5,
}
"""When several workers fail, the most telling cause wins: a bad input or an OOM kill on
one worker makes the others fail too, with a collective error that says nothing."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the FineTuneJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What the handler must do besides patching the status.

    restart: the worker group failed with a retryable cause; delete the Job (delete_job is
    set) and, once it is gone, create it again with restart = status.restarts.
    fail: the job is over. With delete_job the workers would otherwise go on (a missing
    image, the operator's deadline, an invalid spec edit), so delete the Job if it exists;
    without it a worker already failed and the Job (backoffLimit 0) stops the rest itself,
    while the failed pods keep their logs until ttlSecondsAfterFinished.
    """

    action: Literal["none", "restart", "fail"]
    reason: str
    message: str
    delete_job: bool = False


NOTHING_TO_DO: Final = Decision("none", "", "")


@dataclass(frozen=True)
class StatusUpdate:
    """The result of one look at the children."""

    patch: dict[str, Any]
    """A merge patch for `status`: only operator-owned fields that changed; empty: write nothing."""
    events: list[Event]
    """One per transition; none when nothing changed."""
    decision: Decision


@dataclass(frozen=True)
class _Verdict:
    """What the children say: the phase, its reason and message, and what to do."""

    phase: Phase
    reason: str
    message: str
    decision: Decision = NOTHING_TO_DO
    restarts: int | None = None
    """The restart count to write; None: the current Job's (the status's when there is none)."""
    disruptions: int | None = None
    """The disruption count to write; None: unchanged."""
    failure: dict[str, Any] | None = None
    """A new lastFailure record."""


@dataclass(frozen=True)
class _Cause:
    """Why a worker failed."""

    reason: str
    message: str
    exit_code: int | None
    finished_at: str = ""


@dataclass(frozen=True)
class _Observed:
    """Everything one observation judges from."""

    ftj: Mapping[str, Any]
    job: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]]
    now: datetime
    start_time: str | None
    backoff_limit: int
    active_deadline_seconds: int | None
    kueue_place: kueue.Place | None = None
    """Where Kueue keeps the worker Job, when it waits for Kueue and the operator knows."""
    stall_timeout: str | None = None
    """runPolicy.stallTimeout (a duration); None: no stall is judged."""

    @property
    def status(self) -> Mapping[str, Any]:
        return mapping(self.ftj.get("status"))

    @property
    def restart(self) -> int:
        return restart_of(self.job) if self.job is not None else _int(self.status.get("restarts"))

    @property
    def expected_workers(self) -> int:
        spec = mapping(mapping(self.job).get("spec"))
        return _int(spec.get("parallelism")) or _int(spec.get("completions")) or len(self.pods) or 1


# Public functions.


def observe(
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    backoff_limit: int,
    active_deadline_seconds: int | None,
    kueue_place: kueue.Place | None = None,
    stall_timeout: str | None = None,
) -> StatusUpdate:
    """The status that the worker Job and its pods show, as a patch, Events and a decision.

    `job` is None when it does not exist yet or was deleted; a Job being deleted counts as
    gone. `pods` may include pods of an older Job: they are ignored. `kueue_place`: the
    Job's place in Kueue's queues (kueue.py), shown while Kueue has not admitted it.
    `stall_timeout`: how long running workers may show no sign of progress (the trainer's
    heartbeat) before the group is restarted as Stalled.
    """
    status = mapping(ftj.get("status"))
    live_job = None if job is None or _being_deleted(job) else job
    current_pods = [p for p in pods if live_job is not None and _belongs_to(p, live_job)]
    if status.get("phase") in TERMINAL_PHASES:
        return _final_status_update(ftj, current_pods, now)
    observed = _Observed(
        ftj=ftj,
        job=live_job,
        pods=current_pods,
        now=now,
        start_time=status.get("startTime") or _first_start(live_job, current_pods, now),
        backoff_limit=backoff_limit,
        active_deadline_seconds=active_deadline_seconds,
        kueue_place=kueue_place,
        stall_timeout=stall_timeout,
    )
    verdict = _judge(observed)
    desired = _desired_status(observed, verdict)
    return StatusUpdate(
        patch=_changed(status, desired),
        events=_transition_events(status, desired, verdict),
        decision=verdict.decision,
    )


def validated(
    ftj: Mapping[str, Any], *, now: datetime, message: str = "the spec is valid"
) -> dict[str, Any]:
    """The patch for a valid spec whose children are being created: Validated=True,
    observedGeneration, and phase Pending for a new job or one that was not valid."""
    status = mapping(ftj.get("status"))
    generation = _generation(ftj)
    previous = _conditions_by_type(status)
    conditions = {
        kind: c
        for kind, c in previous.items()
        if not (kind == "Failed" and c.get("reason") == Reason.InvalidSpec)
    }
    conditions["Validated"] = condition(
        "Validated",
        "True",
        Reason.Validated,
        message,
        now=now,
        generation=generation,
        previous=previous.get("Validated"),
    )
    desired: dict[str, Any] = {
        "conditions": _ordered(conditions),
        "observedGeneration": generation,
    }
    if status.get("phase") is None or _invalid_spec(previous):
        desired["phase"] = "Pending"
    return _changed(status, desired)


def validation_failed(
    ftj: Mapping[str, Any], problems_message: str, *, now: datetime
) -> StatusUpdate:
    """Validated=False and Failed=True with reason InvalidSpec, phase Failed, and an Event;
    `problems_message` names the field paths. The Job is deleted if an edit broke a
    running job's spec."""
    return refused(ftj, Reason.InvalidSpec, problems_message, final=True, now=now)


def refused(
    ftj: Mapping[str, Any], reason: str, message: str, *, final: bool, now: datetime
) -> StatusUpdate:
    """Validated=False with `reason` and an Event; nothing may be created.

    final: the job can never run as it is (an invalid spec, a broken guardrail): phase
    Failed and Failed=True. Otherwise it waits for its runtime (missing, ambiguous or
    invalid) in phase Pending, and is validated again when a runtime changes.
    """
    status = mapping(ftj.get("status"))
    generation = _generation(ftj)
    message = _clip(message)
    conditions = dict(_conditions_by_type(status))
    invalid: list[tuple[ConditionType, Literal["True", "False"]]] = [("Validated", "False")]
    if final:
        invalid.append(("Failed", "True"))
    for kind, value in invalid:
        conditions[kind] = condition(
            kind,
            value,
            reason,
            message,
            now=now,
            generation=generation,
            previous=conditions.get(kind),
        )
    desired = {
        "phase": "Failed" if final else "Pending",
        "conditions": _ordered(conditions),
        "observedGeneration": generation,
    }
    patch = _changed(status, desired)
    events = [Event("Warning", reason, message)] if patch else []
    decision = Decision("fail", reason, message, delete_job=True) if final else NOTHING_TO_DO
    return StatusUpdate(patch, events, decision)


def queued(ftj: Mapping[str, Any], position: int, message: str, *, now: datetime) -> StatusUpdate:
    """A job waiting in the operator's GPU queue, without a worker Job: phase Queued, its
    place, Running=False with reason Queued; an Event when it starts waiting."""
    status = mapping(ftj.get("status"))
    previous = _conditions_by_type(status)
    conditions = dict(previous)
    conditions["Running"] = condition(
        "Running",
        "False",
        Reason.Queued,
        _clip(message),
        now=now,
        generation=_generation(ftj),
        previous=previous.get("Running"),
    )
    desired = {"phase": "Queued", "queuePosition": position, "conditions": _ordered(conditions)}
    patch = _changed(status, desired)
    events = [] if status.get("phase") == "Queued" else [Event("Normal", Reason.Queued, message)]
    return StatusUpdate(patch, events, NOTHING_TO_DO)


def runtime_validated(
    runtime: Mapping[str, Any], problems: Sequence[str], reason: str, *, now: datetime
) -> StatusUpdate:
    """A runtime's own status: Validated True, or False with `reason` and every problem
    (one Warning Event with them when that changes)."""
    status = mapping(runtime.get("status"))
    previous = _conditions_by_type(status).get("Validated")
    if problems:
        value: Literal["True", "False"] = "False"
        message = _clip("; ".join(problems))
    else:
        value, reason = "True", Reason.Validated
        message = "the runtime is valid and its defaults keep its guardrails"
    generation = _generation(runtime)
    validated_condition = condition(
        "Validated", value, reason, message, now=now, generation=generation, previous=previous
    )
    desired = {"conditions": [validated_condition], "observedGeneration": generation}
    patch = _changed(status, desired)
    changed = (previous or {}).get("message") != message or (previous or {}).get("status") != value
    events = [Event("Warning", reason, message)] if problems and changed else []
    return StatusUpdate(patch, events, NOTHING_TO_DO)


def condition(
    type: ConditionType,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int,
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A condition in the Kubernetes shape; lastTransitionTime moves only when status does."""
    transition = rfc3339(now)
    if previous is not None and previous.get("status") == status:
        transition = previous.get("lastTransitionTime") or transition
    return {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }


def restart_of(job: Mapping[str, Any] | None) -> int:
    """Which group restart a worker Job is (its kubetune.dev/restart annotation; 0 first)."""
    annotations = mapping(mapping(mapping(job).get("metadata")).get("annotations"))
    return _int(annotations.get(RESTART_ANNOTATION))


def rfc3339(moment: datetime) -> str:
    """A time as Kubernetes writes it: UTC, whole seconds, Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Judging the children, most decisive first.


def _judge(observed: _Observed) -> _Verdict:
    if observed.job is None:
        return _without_job(observed)
    rules = (_completed, _suspended, _failed, _past_deadline, _stalled, _pending_problem)
    for rule in rules:
        verdict = rule(observed)
        if verdict is not None:
            return verdict
    return _progressing(observed)


def _without_job(observed: _Observed) -> _Verdict:
    running = _conditions_by_type(observed.status).get("Running", {})
    if running.get("reason") != Reason.Restarting:
        return _Verdict("Pending", Reason.Created, "creating the worker Job")
    phase = observed.status.get("phase")
    return _Verdict(
        "Running" if phase == "Running" else "Pending",
        Reason.Restarting,
        str(running.get("message", "")),
    )


def _completed(observed: _Observed) -> _Verdict | None:
    if _job_condition(observed.job, "Complete") is None:
        return None
    message = f"all {observed.expected_workers} workers finished"
    summary = observed.status.get("metricSummary")
    return _Verdict("Succeeded", Reason.Succeeded, f"{message}; {summary}" if summary else message)


def _suspended(observed: _Observed) -> _Verdict | None:
    if not mapping(mapping(observed.job).get("spec")).get("suspend"):
        return None
    run_policy = mapping(mapping(observed.ftj.get("spec")).get("runPolicy"))
    labels = mapping(mapping(mapping(observed.job).get("metadata")).get("labels"))
    queue = labels.get(KUEUE_QUEUE_LABEL)
    if run_policy.get("suspend"):
        message = (
            "spec.runPolicy.suspend is true: the workers are stopped and resume from the "
            "last checkpoint when it is set back to false"
        )
    elif queue:
        return _Verdict("Queued", Reason.Queued, _kueue_message(observed, str(queue)))
    else:
        message = (
            "the worker Job is suspended by another controller (e.g. Kueue waiting for "
            "quota); the workers start when it resumes it"
        )
    return _Verdict("Suspended", Reason.Suspended, message)


def _kueue_message(observed: _Observed, queue: str) -> str:
    place = observed.kueue_place
    if place is None:
        namespace = mapping(mapping(observed.ftj.get("metadata"))).get("namespace", "")
        return (
            f"waiting for Kueue to admit the worker Job from LocalQueue {queue}; its place "
            f"in the queue: kubectl get workloads -n {namespace}"
        )
    return (
        f"waiting for Kueue to admit the worker Job: place {place.in_local_queue} in "
        f"LocalQueue {queue} ({place.in_cluster_queue} in ClusterQueue)"
    )


def _failed(observed: _Observed) -> _Verdict | None:
    job_failure = _job_condition(observed.job, "Failed")
    if job_failure is not None and job_failure.get("reason") == "DeadlineExceeded":
        message = f"the worker Job ran past its deadline: {job_failure.get('message', '')}"
        return _fail(Reason.DeadlineExceeded, message)
    cause = _worst_cause(observed)
    if cause is None and _names_a_disruption(job_failure):
        cause = _Cause(
            Reason.WorkerDisrupted,
            "a worker was disrupted (evicted, preempted or its node drained): "
            f"{mapping(job_failure).get('message', '')}",
            None,
        )
    if cause is None and job_failure is not None:
        cause = _Cause(
            Reason.WorkerFailed,
            f"the worker Job failed ({job_failure.get('reason', 'Failed')}): "
            f"{job_failure.get('message', '')}",
            None,
        )
    return None if cause is None else _act_on_failure(observed, cause)


def _act_on_failure(observed: _Observed, cause: _Cause) -> _Verdict:
    restart = observed.restart
    step = _progress_step(observed.status)
    record = {
        "reason": cause.reason,
        "restart": restart,
        "step": step,
        "exitCode": cause.exit_code,
    }
    if cause.reason in NON_RETRYABLE_CAUSES:
        return _fail(cause.reason, cause.message, failure=record)
    disruptions = _int(observed.status.get("disruptions"))
    if cause.reason == Reason.WorkerDisrupted:
        # Seen again before the next group exists: the status counts this one already.
        counted_already = _int(observed.status.get("restarts")) > restart
        return _restart(observed, cause, record, disruptions + (0 if counted_already else 1))
    earlier = mapping(observed.status.get("lastFailure"))
    if cause.reason == Reason.OOMKilled and _same_oom_again(earlier, restart, step):
        message = (
            f"{cause.message}; the second OOM kill at step {step} (the first was in "
            f"restart {earlier.get('restart')}): give the workers more memory "
            "(spec.resources.memory) or lower training.batchSize"
        )
        return _fail(Reason.OOMKilled, message, failure=record)
    counted = restart - disruptions
    if counted >= observed.backoff_limit:
        message = (
            f"the worker group failed {counted + 1} times ({counted} restarts, "
            f"runPolicy.backoffLimit {observed.backoff_limit}); last cause: {cause.message}"
        )
        return _fail(Reason.BackoffLimitExceeded, message, failure=record)
    return _restart(observed, cause, record)


def _restart(
    observed: _Observed,
    cause: _Cause,
    record: dict[str, Any],
    disruptions: int | None = None,
) -> _Verdict:
    """Restart the group from its last checkpoint. A disruption (`disruptions`: the new
    count) is the cluster's doing, not the job's, so it does not count against the limit."""
    counted = observed.restart - _int(observed.status.get("disruptions"))
    if disruptions is None:
        why = f"restart {counted + 1} of {observed.backoff_limit}"
    else:
        why = f"disruption {disruptions}, not counted against runPolicy.backoffLimit"
    message = _clip(
        f"{cause.message}; restarting the worker group from its last checkpoint ({why})"
    )
    return _Verdict(
        "Running" if observed.status.get("phase") == "Running" else "Pending",
        Reason.Restarting,
        message,
        Decision("restart", cause.reason, message, delete_job=True),
        restarts=observed.restart + 1,
        disruptions=disruptions,
        failure=record,
    )


def _names_a_disruption(job_failure: Mapping[str, Any] | None) -> bool:
    """The Job failed by its pod failure policy's disruption rule (builders.DISRUPTION_RULE):
    the pod may be gone by now, the Job's condition still says it."""
    failure = mapping(job_failure)
    return failure.get("reason") == "PodFailurePolicy" and DISRUPTION_CONDITION in str(
        failure.get("message", "")
    )


def _same_oom_again(earlier: Mapping[str, Any], restart: int, step: int | None) -> bool:
    """An OOM kill of an earlier group at the step this group reached: resuming from the
    checkpoint only walks into the same wall again."""
    return (
        earlier.get("reason") == Reason.OOMKilled
        and _int(earlier.get("restart")) < restart
        and step is not None
        and earlier.get("step") == step
    )


def _past_deadline(observed: _Observed) -> _Verdict | None:
    deadline = observed.active_deadline_seconds
    if deadline is None or observed.start_time is None:
        return None
    elapsed = (observed.now - parse_time(observed.start_time)).total_seconds()
    if elapsed <= deadline:
        return None
    message = (
        f"the job has run for {int(elapsed)} s since {observed.start_time}, past "
        f"spec.runPolicy.activeDeadlineSeconds ({deadline})"
    )
    return _fail(Reason.DeadlineExceeded, message, delete_job=True)


def _stalled(observed: _Observed) -> _Verdict | None:
    """Every worker runs, yet neither an optimizer step nor a heartbeat of the trainer came
    for runPolicy.stallTimeout: a collective that never returns, a data loader that
    deadlocked. Restarted from the last checkpoint, counted against the backoff limit."""
    timeout = observed.stall_timeout
    group_start = _group_start(observed)
    if timeout is None or group_start is None:
        return None
    heartbeat = mapping(observed.status.get("heartbeat"))
    beat = heartbeat.get("time")
    beat_time = parse_time(str(beat)) if beat else None
    if beat_time is not None and beat_time > group_start:
        alive, phase = beat_time, str(heartbeat.get("phase", "Training"))
    else:
        alive, phase = group_start, "Starting"
    idle = int((observed.now - alive).total_seconds())
    if idle <= duration_seconds(timeout):
        return None
    message = (
        f"no sign of progress for {idle} s while {phase} (last at {rfc3339(alive)}; "
        f"spec.runPolicy.stallTimeout {timeout})"
    )
    return _act_on_failure(observed, _Cause(Reason.Stalled, message, None))


def _group_start(observed: _Observed) -> datetime | None:
    """When the last of the group's workers started running; None while any does not run."""
    if len(observed.pods) < observed.expected_workers or not observed.pods:
        return None
    starts = []
    for pod in observed.pods:
        running = [
            mapping(mapping(c.get("state")).get("running"))
            for c in mappings(mapping(pod.get("status")).get("containerStatuses"))
        ]
        started = [str(r["startedAt"]) for r in running if r.get("startedAt")]
        if _pod_phase(pod) != "Running" or not started:
            return None
        starts.append(max(parse_time(text) for text in started))
    return max(starts)


def _pending_problem(observed: _Observed) -> _Verdict | None:
    pending = [p for p in observed.pods if _pod_phase(p) == "Pending"]
    for find in (_image_pull_problem, _container_config_problem, _scheduling_problem):
        for pod in pending:
            verdict = find(pod)
            if verdict is not None:
                return verdict
    return None


def _image_pull_problem(pod: Mapping[str, Any]) -> _Verdict | None:
    for container in _container_statuses(pod):
        waiting = mapping(mapping(container.get("state")).get("waiting"))
        reason = PULL_REASONS.get(str(waiting.get("reason")))
        if reason is None:
            continue
        kubelet_message = str(waiting.get("message", ""))
        if any(marker in kubelet_message.lower() for marker in IMAGE_NOT_FOUND_MARKERS):
            message = (
                f"the image {container.get('image', '')} does not exist: {kubelet_message}; "
                "check spec.resources.image"
            )
            return _fail(Reason.ImageNotFound, message, delete_job=True)
        return _Verdict("Pending", reason, _clip(f"{_worker(pod)}: {kubelet_message}"))
    return None


def _container_config_problem(pod: Mapping[str, Any]) -> _Verdict | None:
    for container in _container_statuses(pod):
        waiting = mapping(mapping(container.get("state")).get("waiting"))
        if waiting.get("reason") == Reason.CreateContainerConfigError:
            message = _clip(f"{_worker(pod)}: {waiting.get('message', '')}")
            return _Verdict("Pending", Reason.CreateContainerConfigError, message)
    return None


def _scheduling_problem(pod: Mapping[str, Any]) -> _Verdict | None:
    for pod_condition in mappings(mapping(pod.get("status")).get("conditions")):
        if (
            pod_condition.get("type") == "PodScheduled"
            and pod_condition.get("status") == "False"
            and pod_condition.get("reason") == Reason.Unschedulable
        ):
            message = f"{_worker(pod)} cannot be scheduled: {pod_condition.get('message', '')}"
            return _Verdict("Pending", Reason.Unschedulable, _clip(message))
    return None


def _progressing(observed: _Observed) -> _Verdict:
    counts = _worker_counts(observed.pods)
    expected = observed.expected_workers
    again = f" (restart {observed.restart})" if observed.restart else ""
    if counts["running"] or counts["succeeded"]:
        finished = f", {counts['succeeded']} finished" if counts["succeeded"] else ""
        message = f"{counts['running']} of {expected} workers running{finished}{again}"
        return _Verdict("Running", Reason.Running, message)
    if observed.pods:
        message = f"{counts['pending']} of {expected} workers pending{again}"
    else:
        message = f"waiting for the Job controller to create {expected} workers{again}"
    return _Verdict("Pending", Reason.Pending, message)


def _fail(
    reason: str,
    message: str,
    *,
    delete_job: bool = False,
    failure: dict[str, Any] | None = None,
) -> _Verdict:
    message = _clip(message)
    return _Verdict(
        "Failed",
        reason,
        message,
        Decision("fail", reason, message, delete_job=delete_job),
        failure=failure,
    )


# Why a worker failed.


def _worst_cause(observed: _Observed) -> _Cause | None:
    causes = [c for c in (_pod_cause(p, observed.ftj) for p in observed.pods) if c is not None]
    if not causes:
        return None
    return min(causes, key=lambda c: (CAUSE_SEVERITY[c.reason], c.finished_at))


def _pod_cause(pod: Mapping[str, Any], ftj: Mapping[str, Any]) -> _Cause | None:
    """Why a worker failed, or None. A pod being deleted is left to the Job's own Failed
    condition: the Job controller deletes the rest of a failed group and a suspended
    Job's pods, and neither is a cause."""
    if _is_disrupted(pod):
        disruption = _condition_of(pod, DISRUPTION_CONDITION)
        why = f"{disruption.get('reason', DISRUPTION_CONDITION)}: {disruption.get('message', '')}"
        return _Cause(Reason.WorkerDisrupted, f"{_worker(pod)} was disrupted ({why})", None)
    if _being_deleted(pod):
        return None
    terminated = _trainer_termination(pod)
    if terminated is not None and _int(terminated.get("exitCode")) != 0:
        return _classify_exit(pod, terminated, ftj)
    if _pod_phase(pod) != "Failed":
        return None
    pod_status = mapping(pod.get("status"))
    detail = f"{pod_status.get('reason', 'Failed')}: {pod_status.get('message', '')}"
    return _Cause(Reason.WorkerFailed, f"{_worker(pod)} failed ({detail})", None)


def _classify_exit(
    pod: Mapping[str, Any], terminated: Mapping[str, Any], ftj: Mapping[str, Any]
) -> _Cause:
    """The cause of a trainer exit. A trainer image whose launcher is accelerate's own
    reports every failed child as exit code 1, so the trainer's own verdicts in the status
    count as much as codes 3 and 4."""
    status = mapping(ftj.get("status"))
    exit_code = _int(terminated.get("exitCode"))
    worker = _worker(pod)
    finished_at = str(terminated.get("finishedAt", ""))
    said = _last_line(terminated.get("message"))
    said = f": {said}" if said else ""
    if terminated.get("reason") == "OOMKilled":
        step = _progress_step(status)
        at_step = f" at step {step}" if step is not None else ""
        message = f"{worker} was OOMKilled{at_step} (exit code {exit_code})"
        return _Cause(Reason.OOMKilled, message, exit_code, finished_at)
    data_validation = mapping(status.get("dataValidation"))
    if exit_code == EXIT_INVALID_INPUT or data_validation.get("passed") is False:
        message = (
            f"the trainer refused its input (exit code {exit_code}) on {worker}{said}"
            f"{_data_rejection(data_validation)}; see status.dataValidation and "
            f"`kubectl logs {_pod_name(pod)} -c {TRAINER_CONTAINER}`"
        )
        return _Cause(Reason.InvalidInput, message, exit_code, finished_at)
    if exit_code == EXIT_BUDGET_EXCEEDED:
        message = (
            f"the trainer stopped at its GPU budget (exit code {exit_code}) on {worker}{said}; "
            "raise spec.runPolicy.maxGpuHours and start a job on the same output to continue"
        )
        return _Cause(Reason.BudgetExceeded, message, exit_code, finished_at)
    unusable = _unusable_result(status, mapping(ftj.get("spec")))
    if exit_code == EXIT_TRAINING_FAILED or unusable:
        message = (
            f"the trainer's result must not be used (exit code {exit_code}) on {worker}"
            f"{said}{unusable}; see status.diagnosis, status.biasAudit and report.json"
        )
        return _Cause(Reason.TrainingFailed, message, exit_code, finished_at)
    reason = terminated.get("reason", "Error")
    message = f"{worker} failed with exit code {exit_code} ({reason}){said}"
    return _Cause(Reason.WorkerFailed, message, exit_code, finished_at)


def _data_rejection(data_validation: Mapping[str, Any]) -> str:
    if data_validation.get("passed") is not False:
        return ""
    return f"; the data was rejected: {data_validation.get('message', '')}"


def _unusable_result(status: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    """What the trainer said makes its result unusable ('' when it said nothing so)."""
    diagnosis = mapping(status.get("diagnosis"))
    if diagnosis.get("verdict") == "Diverged":
        return f": training diverged; {diagnosis.get('suggestion', '')}".rstrip("; ")
    audit = mapping(status.get("biasAudit"))
    if audit.get("verdict") == "Failed" and mapping(spec.get("bias")).get("onFailure") == "fail":
        return (
            f": the bias audit failed with bias.onFailure fail (worst group "
            f"{audit.get('worstGroup', '')}): {audit.get('message', '')}"
        )
    return ""


def _trainer_termination(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    statuses = _container_statuses(pod)
    trainer = next((c for c in statuses if c.get("name") == TRAINER_CONTAINER), None)
    if trainer is None:
        return None
    terminated = mapping(mapping(trainer.get("state")).get("terminated"))
    # restartPolicy OnFailure restarts the container in place; its last exit is the cause.
    last = terminated or mapping(mapping(trainer.get("lastState")).get("terminated"))
    return _with_trainer_record(last) if last else None


def _with_trainer_record(terminated: Mapping[str, Any]) -> Mapping[str, Any]:
    """The container's exit, with the exit code and message the trainer wrote to its
    termination message (JSON) when it did, with the trainer's message; a trainer image
    whose launcher is accelerate's own reports every failed child as exit code 1."""
    try:
        record = json.loads(str(terminated.get("message") or ""))
    except ValueError:
        return terminated
    if not isinstance(record, dict) or not isinstance(record.get("exitCode"), int):
        return terminated
    return {**terminated, "exitCode": record["exitCode"], "message": str(record.get("message", ""))}


# The desired status, its patch and its Events.


def _desired_status(observed: _Observed, verdict: _Verdict) -> dict[str, Any]:
    desired: dict[str, Any] = {
        "phase": verdict.phase,
        "observedGeneration": _generation(observed.ftj),
        "workers": _worker_counts(observed.pods),
        "restarts": observed.restart if verdict.restarts is None else verdict.restarts,
        "conditions": _conditions(observed, verdict),
    }
    if observed.start_time is not None:
        desired["startTime"] = observed.start_time
    if verdict.phase in TERMINAL_PHASES:
        finished = mapping(mapping(observed.job).get("status")).get("completionTime")
        desired["completionTime"] = finished or rfc3339(observed.now)
    if verdict.disruptions is not None:
        desired["disruptions"] = verdict.disruptions
    if verdict.failure is not None:
        desired["lastFailure"] = {k: v for k, v in verdict.failure.items() if v is not None}
    # A job in the operator's queue has no Job to observe, so a place here is Kueue's;
    # None removes a place once the Job is admitted (a merge patch deletes on null).
    place = observed.kueue_place if verdict.phase == "Queued" else None
    desired["queuePosition"] = None if place is None else place.in_local_queue
    return desired


def _conditions(observed: _Observed, verdict: _Verdict) -> list[dict[str, Any]]:
    previous = _conditions_by_type(observed.status)
    wanted = _lifecycle_conditions(verdict, previous) | _trainer_conditions(observed.status)
    generation = _generation(observed.ftj)
    conditions = dict(previous)
    for kind, (value, reason, message) in wanted.items():
        conditions[kind] = condition(
            kind,
            value,
            reason,
            message,
            now=observed.now,
            generation=generation,
            previous=previous.get(kind),
        )
    return _ordered(conditions)


def _lifecycle_conditions(
    verdict: _Verdict, previous: Mapping[ConditionType, Mapping[str, Any]]
) -> dict[ConditionType, ConditionValue]:
    said = (verdict.reason, verdict.message)
    running: Literal["True", "False"] = "True" if verdict.phase == "Running" else "False"
    wanted: dict[ConditionType, ConditionValue] = {"Running": (running, *said)}
    if verdict.phase == "Suspended":
        wanted["Suspended"] = ("True", *said)
    elif previous.get("Suspended", {}).get("status") == "True":
        wanted["Suspended"] = ("False", Reason.Resumed, "the worker Job was resumed")
    if verdict.phase in TERMINAL_PHASES:
        succeeded = verdict.phase == "Succeeded"
        wanted["Succeeded"] = ("True" if succeeded else "False", *said)
        wanted["Failed"] = ("False" if succeeded else "True", *said)
    return wanted


def _trainer_conditions(status: Mapping[str, Any]) -> dict[ConditionType, ConditionValue]:
    """DataValidated and BiasAuditPassed, from what the trainer wrote (absent: no condition)."""
    wanted: dict[ConditionType, ConditionValue] = {}
    data = mapping(status.get("dataValidation"))
    if data:
        message = _clip(str(data.get("message", "")))
        wanted["DataValidated"] = (
            ("True", Reason.DataValidated, message)
            if data.get("passed", True)
            else ("False", Reason.DataRejected, message)
        )
    audit = mapping(status.get("biasAudit"))
    verdict = audit.get("verdict")
    message = _clip(str(audit.get("message", "")))
    if verdict == "Passed":
        wanted["BiasAuditPassed"] = ("True", Reason.BiasAuditPassed, message)
    elif verdict == "Failed":
        worst = f"worst group {audit.get('worstGroup', '')}: "
        wanted["BiasAuditPassed"] = ("False", Reason.BiasAuditFailed, _clip(worst + message))
    elif verdict == "InsufficientData":
        wanted["BiasAuditPassed"] = ("Unknown", Reason.InsufficientData, message)
    return wanted


def _final_status_update(
    ftj: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: datetime
) -> StatusUpdate:
    """A finished job: only the trainer-derived conditions and the worker counts may still
    change. Pod and Job changes come on separate watches, so the last pods may finish after
    the Job did; once the children are cleaned up, the last counts stay."""
    status = mapping(ftj.get("status"))
    previous = _conditions_by_type(status)
    conditions = dict(previous)
    for kind, (value, reason, message) in _trainer_conditions(status).items():
        conditions[kind] = condition(
            kind,
            value,
            reason,
            message,
            now=now,
            generation=_generation(ftj),
            previous=previous.get(kind),
        )
    desired: dict[str, Any] = {"conditions": _ordered(conditions)}
    if pods:
        desired["workers"] = _worker_counts(pods)
    return StatusUpdate(
        patch=_changed(status, desired),
        events=_trainer_condition_events(previous, conditions),
        decision=NOTHING_TO_DO,
    )


def _changed(status: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in desired.items() if status.get(key) != value}


def _transition_events(
    status: Mapping[str, Any], desired: Mapping[str, Any], verdict: _Verdict
) -> list[Event]:
    previous = _conditions_by_type(status)
    events: list[Event] = []
    if _headline(status.get("phase"), previous) != (verdict.phase, verdict.reason):
        warning = verdict.phase == "Failed" or verdict.reason in WARNING_REASONS
        events.append(Event("Warning" if warning else "Normal", verdict.reason, verdict.message))
    new = {c["type"]: c for c in desired["conditions"]}
    return events + _trainer_condition_events(previous, new)


def _headline(phase: Any, conditions: Mapping[ConditionType, Mapping[str, Any]]) -> tuple[Any, Any]:
    """The phase and the reason of the condition that explains it."""
    carrier: ConditionType = phase if phase in ("Succeeded", "Failed", "Suspended") else "Running"
    return phase, conditions.get(carrier, {}).get("reason")


def _trainer_condition_events(
    previous: Mapping[ConditionType, Mapping[str, Any]],
    new: Mapping[ConditionType, Mapping[str, Any]],
) -> list[Event]:
    events = []
    for kind in ("DataValidated", "BiasAuditPassed"):
        before, after = previous.get(kind, {}), new.get(kind)
        if after is None or (before.get("status"), before.get("reason")) == (
            after["status"],
            after["reason"],
        ):
            continue
        kind_of_event: Literal["Normal", "Warning"] = (
            "Normal" if after["status"] == "True" else "Warning"
        )
        events.append(Event(kind_of_event, after["reason"], after["message"]))
    return events


# Reading Kubernetes objects.


def _belongs_to(pod: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    """Whether a pod is the current Job's: same owner uid, or failing that (an emulator
    without uids) the same restart annotation; a pod that carries neither counts."""
    job_uid = mapping(job.get("metadata")).get("uid")
    pod_uid = _owner_uid(pod)
    if job_uid and pod_uid:
        return bool(pod_uid == job_uid)
    annotations = mapping(mapping(pod.get("metadata")).get("annotations"))
    if RESTART_ANNOTATION in annotations:
        return _int(annotations[RESTART_ANNOTATION]) == restart_of(job)
    return True


def _owner_uid(pod: Mapping[str, Any]) -> str | None:
    metadata = mapping(pod.get("metadata"))
    for owner in mappings(metadata.get("ownerReferences")):
        if owner.get("kind") == "Job" and owner.get("uid"):
            return str(owner["uid"])
    labels = mapping(metadata.get("labels"))
    return next((str(labels[k]) for k in CONTROLLER_UID_LABELS if labels.get(k)), None)


def _being_deleted(obj: Mapping[str, Any]) -> bool:
    return bool(mapping(obj.get("metadata")).get("deletionTimestamp"))


def _is_disrupted(pod: Mapping[str, Any]) -> bool:
    return _condition_of(pod, DISRUPTION_CONDITION).get("status") == "True"


def _condition_of(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    conditions = mapping(obj.get("status")).get("conditions") or []
    found = [c for c in conditions if isinstance(c, Mapping) and c.get("type") == kind]
    return found[-1] if found else {}


def _first_start(
    job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], now: datetime
) -> str | None:
    """When the first worker Job started: as Kubernetes counts a Job's deadline (so a job
    stuck Pending still meets it), or failing that when a worker ran."""
    started = mapping(mapping(job).get("status")).get("startTime")
    if started:
        return str(started)
    if any(_pod_phase(p) in ("Running", "Succeeded", "Failed") for p in pods):
        return rfc3339(now)
    return None


def _job_condition(job: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    for job_condition in mappings(mapping(mapping(job).get("status")).get("conditions")):
        if job_condition.get("type") == kind and job_condition.get("status") == "True":
            return job_condition
    return None


def _worker_counts(pods: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Pods by phase; Unknown (node unreachable) counts as none of them."""
    phases = [_pod_phase(p) for p in pods]
    return {
        "pending": phases.count("Pending"),
        "running": phases.count("Running"),
        "succeeded": phases.count("Succeeded"),
        "failed": phases.count("Failed"),
    }


def _pod_phase(pod: Mapping[str, Any]) -> str:
    return str(mapping(pod.get("status")).get("phase", "Pending"))


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    pod_status = mapping(pod.get("status"))
    return [
        *mappings(pod_status.get("initContainerStatuses")),
        *mappings(pod_status.get("containerStatuses")),
    ]


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str(mapping(pod.get("metadata")).get("name", "?"))


def _worker(pod: Mapping[str, Any]) -> str:
    """'worker 1 (pod name)': the rank a person reads in logs, and the pod to inspect."""
    metadata = mapping(pod.get("metadata"))
    index = mapping(metadata.get("labels")).get(COMPLETION_INDEX_LABEL)
    if index is None:
        index = mapping(metadata.get("annotations")).get(COMPLETION_INDEX_LABEL, "?")
    return f"worker {index} ({_pod_name(pod)})"


# Reading the status.


def _conditions_by_type(status: Mapping[str, Any]) -> dict[ConditionType, Mapping[str, Any]]:
    return {c["type"]: c for c in mappings(status.get("conditions")) if "type" in c}


def _ordered(conditions: Mapping[ConditionType, Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(conditions[kind]) for kind in CONDITION_ORDER if kind in conditions]


def _invalid_spec(conditions: Mapping[ConditionType, Mapping[str, Any]]) -> bool:
    return conditions.get("Validated", {}).get("status") == "False"


def _progress_step(status: Mapping[str, Any]) -> int | None:
    step = mapping(status.get("progress")).get("step")
    return step if isinstance(step, int) else None


def _generation(ftj: Mapping[str, Any]) -> int:
    return _int(mapping(ftj.get("metadata")).get("generation"))


# Small helpers for untyped API objects.


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _last_line(text: Any) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
