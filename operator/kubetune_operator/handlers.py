"""kopf handlers: the only place where kubetune reacts to the cluster.

Each handler is thin. It validates the FineTuneJob into the API model once, asks the pure
`builders` for the children and the pure `status` functions for the phase, and performs what
they decide through `kube.Cluster`. The operator keeps no state of its own: the children,
their annotations and the resource's status are the state, so an operator that restarts in
the middle of a job picks up where the last one stopped and creates nothing twice.

Status is recomputed whenever the FineTuneJob, its batch Job or one of its pods changes. The
three are kept in kopf indexes, so computing a status costs no API request.

A FineTuneJob with `spec.search` is a parent: it gets no workers but child FineTuneJobs
(trials), which these same handlers train. Whenever the parent or one of its trials changes,
the parent's `status.trials` is brought up to date from the trials (a fourth index), and the
pure `search` functions decide what to prune, which trials to start and the parent's status.
Trial numbers come from the status and creating a trial is idempotent, so an operator
restart in the middle of a search starts no trial twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, cast

import kopf

from kubetune_operator import builders, kube, metrics, search
from kubetune_operator import status as status_rules
from kubetune_operator.api import v1alpha1
from kubetune_operator.manifests import check_document

FINETUNEJOBS: Final = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
MANAGED: Final = {"app.kubernetes.io/managed-by": "kubetune"}
JOB_NAME_LABEL: Final = "kubetune.dev/job-name"
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
TICK_SECONDS: Final = float(os.environ.get("KUBETUNE_TICK_SECONDS", "30"))
"""How often each job is looked at for what only the clock notices (deadline, TTL)."""


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
    """The newest group restart this operator decided per job: an index that still shows an
    older status must not make it create an older group again."""
    written: dict[Key, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """The last status patch per job and the resourceVersion it was computed from. kopf's
    indexes lag the operator's own writes; until the index moves past that version, the
    patch is laid over it, so the next event neither repeats the patch nor its Events."""
    created_jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """The worker Job this operator created per job, until the index shows it, so the
    status does not see it missing and create it again."""

    def forget(self, key: Key) -> None:
        """Drop what is kept of a deleted job, so a new job of the same name starts clean
        (restart 0, no Job taken for created) and a long-lived operator does not grow."""
        for kept in (self.locks, self.restarted, self.written, self.created_jobs):
            kept.pop(key, None)


@dataclass(frozen=True)
class Indexes:
    """The kopf indexes, keyed by (namespace, FineTuneJob name); trials by their parent's."""

    finetunejobs: kopf.Index[Key, Any]
    jobs: kopf.Index[Key, Any]
    pods: kopf.Index[Key, Any]
    trials: kopf.Index[Key, Any]

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Indexes:
        """kopf passes each index to a handler as a keyword named after its function."""
        return cls(
            kwargs["finetunejobs"],
            kwargs["worker_jobs"],
            kwargs["worker_pods"],
            kwargs["search_trials"],
        )


def runtime(memo: Any) -> Runtime:
    found: Runtime = memo.runtime
    return found


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.dev", key="last-handled-configuration"
    )
    # Events are posted explicitly, one per transition; kopf's own log lines stay in the log.
    settings.posting.level = logging.ERROR
    memo.runtime = Runtime(kube.Cluster(kube.connect()), settings_from_env(os.environ))
    metrics.serve(os.environ)


@kopf.index(*FINETUNEJOBS)
def finetunejobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {_key(namespace, name): dict(body)}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def worker_jobs(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return {_key(namespace, labels.get(JOB_NAME_LABEL, "")): dict(body)}


@kopf.index("v1", "pods", labels=MANAGED)
def worker_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return {_key(namespace, labels.get(JOB_NAME_LABEL, "")): dict(body)}


@kopf.index(*FINETUNEJOBS, labels={search.LABEL_COMPONENT: search.TRIAL_COMPONENT})
def search_trials(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return {_key(namespace, labels.get(search.LABEL_JOB_NAME, "")): dict(body)}


@kopf.on.resume(*FINETUNEJOBS)
@kopf.on.create(*FINETUNEJOBS)
def reconcile(
    body: kopf.Body, namespace: str | None, name: str, patch: kopf.Patch, memo: Any, **kwargs: Any
) -> None:
    """Validate the spec; create the children that are missing (existing ones count as done)."""
    with metrics.reconcile_timer("reconcile"):
        shared, (namespace, name) = runtime(memo), _key(namespace, name)
        checked = check_document(_without_status(body), f"{namespace}/{name}")
        if checked.job is None:
            message = "; ".join(str(problem) for problem in checked.problems)
            update = status_rules.validation_failed(body, message, now=now())
            patch.status.update(update.patch)
            _post(body, update.events)
            return
        if body.get("status", {}).get("phase") in TERMINAL_PHASES:
            return
        if checked.job.spec.search is not None:
            _start_search(shared, (namespace, name), body, Indexes.of(kwargs))
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
        validated = status_rules.validated(body, now=now())
        patch.status.update(validated)
        job = children[-1]
        if created and created[-1] == f"Job {job['metadata']['name']}":
            # A new worker Job has no pods yet: its first status goes out with this patch.
            shared.created_jobs[(namespace, name)] = job
            first = _observe({**body, "status": {**body.get("status", {}), **validated}}, job, [])
            patch.status.update(first.patch)
            _post(body, first.events)
        if created:
            kopf.event(
                body,
                type="Normal",
                reason=status_rules.Reason.Created,
                message=_created_message(created),
            )


@kopf.on.field(*FINETUNEJOBS, field="spec.runPolicy.suspend")
def suspend_changed(new: Any, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """Suspend or resume the workers; a resumed group continues from its last checkpoint."""
    namespace, name = _key(namespace, name)
    runtime(memo).cluster.set_suspended(namespace, builders.workers_name(name), bool(new))


@kopf.on.update(*FINETUNEJOBS, field="spec")
def spec_changed(body: kopf.Body, diff: kopf.Diff, **_: Any) -> None:
    """Tell the user which spec changes a running job does not take (all but suspend)."""
    changed = sorted({".".join(map(str, entry[1])) for entry in diff} - {"runPolicy.suspend"})
    if changed:
        kopf.event(
            body,
            type="Warning",
            reason=status_rules.Reason.SpecChangeIgnored,
            message=f"spec.{', spec.'.join(changed)} changed after the job started; a running "
            "job only takes spec.runPolicy.suspend. Create a new FineTuneJob for the rest.",
        )


@kopf.on.event(*FINETUNEJOBS)
@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("v1", "pods", labels=MANAGED)
def refresh_status(
    resource: kopf.Resource,
    type: str,
    namespace: str | None,
    name: str,
    labels: kopf.Labels,
    memo: Any,
    **kwargs: Any,
) -> None:
    """Recompute the owning FineTuneJob's status from its children and act on the verdict;
    a trial's change refreshes its search parent too."""
    indexes = Indexes.of(kwargs)
    is_finetunejob = resource.plural == v1alpha1.PLURAL
    key = _key(namespace, name if is_finetunejob else labels.get(JOB_NAME_LABEL, ""))
    if is_finetunejob and labels.get(search.LABEL_COMPONENT) == search.TRIAL_COMPONENT:
        _refresh(runtime(memo), _key(namespace, labels.get(search.LABEL_JOB_NAME, "")), indexes)
    if type == "DELETED" and is_finetunejob:
        metrics.JOBS.track(key, None)
        runtime(memo).forget(key)
        return
    _refresh(runtime(memo), key, indexes)


@kopf.timer(*FINETUNEJOBS, interval=TICK_SECONDS, initial_delay=TICK_SECONDS)
def tick(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: Any,
    **kwargs: Any,
) -> None:
    """What only the clock notices: the deadline, and ttlSecondsAfterFinished's cleanup."""
    shared, key = runtime(memo), _key(namespace, name)
    indexes = Indexes.of(kwargs)
    _refresh(shared, key, indexes)
    ttl = _run_policy(body).get("ttlSecondsAfterFinished")
    finished_at = body.get("status", {}).get("completionTime")
    if ttl is None or not finished_at or not indexes.jobs.get(key):
        return
    if (now() - datetime.fromisoformat(finished_at)).total_seconds() < ttl:
        return
    for child in builders.child_references(*reversed(key)):
        shared.cluster.delete(child)
    kopf.event(
        body,
        type="Normal",
        reason=status_rules.Reason.CleanedUp,
        message=f"children deleted {ttl}s after the end",
    )


def _refresh(shared: Runtime, key: Key, indexes: Indexes) -> None:
    with metrics.reconcile_timer("status"), shared.locks[key]:
        ftj = _own_writes_over(shared, key, _newest(indexes.finetunejobs.get(key, [])))
        if ftj is None or not _validated(ftj):
            return
        if _is_search(ftj):
            _advance_search(shared, ftj, list(indexes.trials.get(key, [])))
            return
        job = _newest(indexes.jobs.get(key, []))
        if job is not None:
            shared.created_jobs.pop(key, None)
        else:
            job = shared.created_jobs.get(key)
        update = _observe(ftj, job, list(indexes.pods.get(key, [])))
        _apply(shared, ftj, job, update)
        status = {**ftj.get("status", {}), **update.patch}
        verdict = (ftj.get("status", {}).get("biasAudit") or {}).get("verdict")
        metrics.JOBS.track(key, status.get("phase"), verdict)


def _start_search(shared: Runtime, key: Key, body: kopf.Body, indexes: Indexes) -> None:
    """A new or resumed search parent: Validated, Running, and its first trials, in one patch."""
    with shared.locks[key]:
        # The index has seen this event too, and the overlay holds what refreshes wrote since.
        ftj = _own_writes_over(shared, key, _newest(indexes.finetunejobs.get(key, []))) or body
        first = status_rules.validated(ftj, now=now())
        _advance_search(shared, ftj, list(indexes.trials.get(key, [])), first=first)


def _advance_search(
    shared: Runtime,
    ftj: Mapping[str, Any],
    children: list[Mapping[str, Any]],
    first: Mapping[str, Any] | None = None,
) -> None:
    """Record what the trials show, prune, start the next trials, write the parent's status.

    `first`: status fields to lay over the stored ones and write along (the validation).
    """
    stored = ftj.get("status", {})
    status = {**stored, **(first or {})}
    if status.get("phase") in TERMINAL_PHASES:
        return
    view = {**ftj, "status": status}
    checked = check_document(_without_status(ftj), _name_of(ftj))
    if checked.job is None:
        return
    try:
        desired, events = _search_step(shared, view, checked.job, children)
    except search.SearchError as error:
        failed = status_rules.validation_failed(view, str(error), now=now())
        desired, events = failed.patch, failed.events
    final = {**status, **desired}
    patch = {field: value for field, value in final.items() if stored.get(field) != value}
    if patch:
        key = _key(ftj["metadata"]["namespace"], ftj["metadata"]["name"])
        shared.cluster.patch_status(*key, patch)
        shared.written[key] = (ftj["metadata"]["resourceVersion"], final)
    _post(ftj, events)


def _search_step(
    shared: Runtime,
    ftj: Mapping[str, Any],
    parent: v1alpha1.FineTuneJob,
    children: list[Mapping[str, Any]],
) -> tuple[dict[str, Any], list[status_rules.Event]]:
    """The parent's desired status and its Events, after pruning and creating trials."""
    spec, by_name = parent.spec, {child["metadata"]["name"]: child for child in children}
    previous = list(ftj["status"].get("trials") or [])
    trials = [_trial_seen(spec, trial, by_name.get(trial["name"])) for trial in previous]
    events = _trial_events(previous, trials)
    trials, pruned = _pruned(shared, ftj, spec, trials)
    events += pruned
    outcome = search.search_outcome(spec, trials)
    if outcome.phase == "Running":
        created, started = _start_trials(shared, ftj, parent, trials, by_name)
        trials, events = trials + created, events + started
        outcome = search.search_outcome(spec, trials)
    desired = {**search.search_status(spec, trials), **_search_phase(ftj, outcome)}
    if ftj["status"].get("phase") != outcome.phase and outcome.phase != "Running":
        events.append(_outcome_event(outcome))
    return desired, events


def _trial_seen(
    spec: v1alpha1.FineTuneJobSpec, trial: Mapping[str, Any], child: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A Pending/Running trial as its child shows it: state, objective, new intermediate value."""
    if trial["state"] not in search.ACTIVE_STATES or child is None:
        return dict(trial)
    status = child.get("status") or {}
    seen = {**trial, "intermediate": _with_intermediate(spec, trial, status)}
    phase = status.get("phase")
    if phase == "Succeeded":
        seen |= {"state": "Complete", "objective": search.objective_of(spec, status)}
    elif phase == "Failed":
        seen["state"] = "Failed"
    elif phase is not None:
        seen["state"] = "Running"
    return seen


def _with_intermediate(
    spec: v1alpha1.FineTuneJobSpec, trial: Mapping[str, Any], child_status: Mapping[str, Any]
) -> dict[str, float]:
    """The trial's intermediate values plus the child's current one, keyed by its step."""
    known = dict(trial.get("intermediate") or {})
    step = (child_status.get("progress") or {}).get("step")
    value = search.objective_of(spec, child_status)
    if isinstance(step, int) and value is not None:
        known.setdefault(str(step), value)
    return known


def _trial_events(
    previous: list[Mapping[str, Any]], trials: list[dict[str, Any]]
) -> list[status_rules.Event]:
    return [
        status_rules.Event(
            "Warning",
            status_rules.Reason.TrialFailed,
            f"trial {after['number']} ({after['name']}) failed",
        )
        for before, after in zip(previous, trials, strict=True)
        if after["state"] == "Failed" and before["state"] != "Failed"
    ]


def _pruned(
    shared: Runtime,
    ftj: Mapping[str, Any],
    spec: v1alpha1.FineTuneJobSpec,
    trials: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[status_rules.Event]]:
    """Delete the trials the median rule stops and record them Pruned."""
    events = []
    for trial in trials:
        if not search.should_prune(spec, trials, trial["number"]):
            continue
        shared.cluster.delete(_child_reference(ftj, trial["name"]))
        trial["state"] = "Pruned"
        message = f"trial {trial['number']} ({trial['name']}) is worse than the median; deleted"
        events.append(status_rules.Event("Normal", status_rules.Reason.TrialPruned, message))
    return trials, events


def _start_trials(
    shared: Runtime,
    ftj: Mapping[str, Any],
    parent: v1alpha1.FineTuneJob,
    trials: list[dict[str, Any]],
    children: Mapping[str, Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[status_rules.Event]]:
    """Create the trials the engine proposes (409: an earlier operator did), as Pending records."""
    created, events = [], []
    for plan in search.next_trials(parent, trials):
        manifest = search.trial_manifest(parent, plan)
        kopf.adopt(manifest, owner=_body(ftj))
        params = plan.params
        if shared.cluster.create(manifest):
            message = f"trial {plan.number}: created {plan.name} with {plan.params}"
            events.append(status_rules.Event("Normal", status_rules.Reason.Created, message))
        elif plan.name in children:
            params = _recorded_params(children[plan.name], plan.params)
        created.append(
            {"number": plan.number, "name": plan.name, "state": "Pending", "params": params}
        )
    return created, events


def _recorded_params(child: Mapping[str, Any], proposed: dict[str, Any]) -> dict[str, Any]:
    """The values an existing trial was created with (its annotation), else the proposal."""
    annotations = child["metadata"].get("annotations") or {}
    recorded = annotations.get(search.TRIAL_PARAMS_ANNOTATION)
    return dict(json.loads(recorded)) if recorded else proposed


def _search_phase(ftj: Mapping[str, Any], outcome: search.SearchOutcome) -> dict[str, Any]:
    """The parent's phase, conditions and completionTime for where the search stands."""
    status, moment = ftj["status"], now()
    generation = int(ftj["metadata"].get("generation", 1))
    previous = {c["type"]: c for c in status.get("conditions", [])}
    reason = _outcome_reason(outcome)
    running: Literal["True", "False"] = "True" if outcome.phase == "Running" else "False"
    wanted: dict[str, tuple[Literal["True", "False"], str]] = {"Running": (running, reason)}
    if outcome.phase != "Running":
        succeeded = outcome.phase == "Succeeded"
        wanted["Succeeded"] = ("True" if succeeded else "False", reason)
        wanted["Failed"] = ("False" if succeeded else "True", reason)
    conditions = dict(previous)
    for kind, (value, why) in wanted.items():
        conditions[kind] = status_rules.condition(
            cast(v1alpha1.ConditionType, kind),
            value,
            why,
            outcome.message,
            now=moment,
            generation=generation,
            previous=previous.get(kind),
        )
    desired: dict[str, Any] = {
        "phase": outcome.phase,
        "conditions": [conditions[k] for k in status_rules.CONDITION_ORDER if k in conditions],
    }
    if outcome.phase != "Running":
        desired["completionTime"] = status.get("completionTime") or status_rules.rfc3339(moment)
    return desired


def _outcome_reason(outcome: search.SearchOutcome) -> str:
    return {
        "Running": status_rules.Reason.Running,
        "Succeeded": status_rules.Reason.Succeeded,
        "Failed": status_rules.Reason.SearchFailed,
    }[outcome.phase]


def _outcome_event(outcome: search.SearchOutcome) -> status_rules.Event:
    kind: Literal["Normal", "Warning"] = "Normal" if outcome.phase == "Succeeded" else "Warning"
    return status_rules.Event(kind, _outcome_reason(outcome), outcome.message)


def _child_reference(ftj: Mapping[str, Any], name: str) -> dict[str, Any]:
    namespace = ftj["metadata"]["namespace"]
    return {"kind": v1alpha1.KIND, "metadata": {"namespace": namespace, "name": name}}


def _is_search(ftj: Mapping[str, Any]) -> bool:
    return bool(ftj.get("spec", {}).get("search"))


def _name_of(ftj: Mapping[str, Any]) -> str:
    return f"{ftj['metadata'].get('namespace')}/{ftj['metadata']['name']}"


def _observe(
    ftj: Mapping[str, Any], job: Mapping[str, Any] | None, pods: list[Any]
) -> status_rules.StatusUpdate:
    return status_rules.observe(
        ftj,
        job,
        pods,
        now=now(),
        backoff_limit=int(_run_policy(ftj).get("backoffLimit", 3)),
        active_deadline_seconds=_run_policy(ftj).get("activeDeadlineSeconds"),
    )


def _apply(
    shared: Runtime,
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    update: status_rules.StatusUpdate,
) -> None:
    """Write the patch, post the Events, then delete or (re)create the worker Job."""
    namespace, name = ftj["metadata"]["namespace"], ftj["metadata"]["name"]
    status = {**ftj.get("status", {}), **update.patch}
    if update.decision.action == "restart":
        # Before the Job goes: a refresh from an index that has not seen this status yet
        # must create the next group, not the one that failed.
        shared.restarted[(namespace, name)] = int(status.get("restarts", 0))
        metrics.RESTARTS.inc()
    if update.patch:
        shared.cluster.patch_status(namespace, name, update.patch)
        shared.written[(namespace, name)] = (ftj["metadata"]["resourceVersion"], status)
    _post(ftj, update.events)
    if update.decision.delete_job and job is not None:
        shared.created_jobs.pop((namespace, name), None)
        shared.cluster.delete_job(namespace, builders.workers_name(name))
        return
    if status.get("phase") not in TERMINAL_PHASES and _gone(job):
        _create_workers(shared, ftj, int(status.get("restarts", 0)))


def _create_workers(shared: Runtime, ftj: Mapping[str, Any], restart: int) -> None:
    """Create the worker Job of group restart `restart`; the trainer resumes from the last
    checkpoint in the output volume. A restart number already used is never used again,
    even when the index still shows an older status."""
    key = (ftj["metadata"]["namespace"], ftj["metadata"]["name"])
    restart = max(restart, shared.restarted.get(key, 0))
    checked = check_document(_without_status(ftj), f"{key[0]}/{key[1]}")
    if checked.job is None:
        return
    replacement = builders.build_job(
        checked.job,
        key[0],
        shared.settings,
        restart=restart,
        deadline_seconds=_deadline_left(checked.job, ftj),
    )
    kopf.adopt(replacement, owner=_body(ftj))
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


def _created_message(created: list[str]) -> str:
    return "created " + ", ".join(created)


def _post(ftj: Mapping[str, Any], events: Iterable[status_rules.Event]) -> None:
    for event in events:
        kopf.event(_body(ftj), type=event.type, reason=event.reason, message=event.message)


def _body(ftj: Mapping[str, Any]) -> kopf.Body:
    """A FineTuneJob kept in an index, as kopf's functions take it."""
    return ftj if isinstance(ftj, kopf.Body) else kopf.Body(cast(kopf.RawBody, ftj))


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


def _key(namespace: str | None, name: str) -> Key:
    if namespace is None:
        raise kopf.PermanentError("a FineTuneJob is namespaced; got one without a namespace")
    return namespace, name


def _own_writes_over(
    shared: Runtime, key: Key, ftj: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The indexed FineTuneJob with this operator's last status patch laid over it while
    the index still shows the version the patch was computed from."""
    mine = shared.written.get(key)
    if ftj is None or mine is None:
        return ftj
    version, status = mine
    if ftj["metadata"].get("resourceVersion") != version:
        del shared.written[key]
        return ftj
    return {**ftj, "status": status}


def _gone(job: Mapping[str, Any] | None) -> bool:
    return job is None or bool(job["metadata"].get("deletionTimestamp"))
