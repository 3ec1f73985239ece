"""kopf handlers: the only place where kubetune reacts to the cluster.

Each handler is thin. It validates the FineTuneJob into the API model once and hands it
to `workers` (a plain job's worker group) or `trials` (a search parent's trials), which
perform what the pure `builders`, `status` and `search` functions decide. The operator
keeps no state of its own: the children, their annotations and the resource's status are
the state, so an operator that restarts in the middle of a job picks up where the last
one stopped and creates nothing twice.

Status is recomputed whenever the FineTuneJob, its batch Job, one of its pods or one of
its trials changes. All of them are kept in kopf indexes, so computing a status costs no
API request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Final

import kopf

from kubetune_operator import builders, kube, metrics, search, trials, workers
from kubetune_operator import status as status_rules
from kubetune_operator.api import v1alpha1
from kubetune_operator.manifests import check_document
from kubetune_operator.state import (
    TERMINAL_PHASES,
    Indexes,
    Key,
    OperatorState,
    is_validated,
    newest,
    now,
    post,
    without_status,
)

FINETUNEJOBS: Final = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
MANAGED: Final = {"app.kubernetes.io/managed-by": "kubetune"}
JOB_NAME_LABEL: Final = "kubetune.dev/job-name"
TICK_SECONDS: Final = float(os.environ.get("KUBETUNE_TICK_SECONDS", "30"))
"""How often each job is looked at for what only the clock notices (deadline, TTL)."""


def settings_from_env(env: Mapping[str, str]) -> builders.OperatorSettings:
    """The operator-wide defaults the Helm chart passes as environment variables."""
    defaults = builders.OperatorSettings()
    secrets = env.get("KUBETUNE_IMAGE_PULL_SECRETS", "")
    return builders.OperatorSettings(
        trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or defaults.trainer_image,
        image_pull_secrets=tuple(name.strip() for name in secrets.split(",") if name.strip()),
    )


def state(memo: Any) -> OperatorState:
    found: OperatorState = memo.state
    return found


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.dev", key="last-handled-configuration"
    )
    # Events are posted explicitly, one per transition; kopf's own log lines stay in the log.
    settings.posting.level = logging.ERROR
    memo.state = OperatorState(kube.Cluster(kube.connect()), settings_from_env(os.environ))
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
        shared, key = state(memo), _key(namespace, name)
        checked = check_document(without_status(body), f"{key[0]}/{key[1]}")
        if checked.job is None:
            message = "; ".join(str(problem) for problem in checked.problems)
            update = status_rules.validation_failed(body, message, now=now())
            patch.status.update(update.patch)
            post(body, update.events)
            return
        if body.get("status", {}).get("phase") in TERMINAL_PHASES:
            return
        if checked.job.spec.search is None:
            workers.start(shared, checked.job, body, patch)
            return
        indexes = Indexes.of(kwargs)
        with shared.locks[key]:
            # The index has seen this event too, and the overlay holds what refreshes wrote.
            ftj = shared.own_writes_over(key, newest(indexes.finetunejobs.get(key, []))) or body
            trials.start(shared, ftj, list(indexes.trials.get(key, [])))


@kopf.on.field(*FINETUNEJOBS, field="spec.runPolicy.suspend")
def suspend_changed(new: Any, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """Suspend or resume the workers; a resumed group continues from its last checkpoint."""
    namespace, name = _key(namespace, name)
    state(memo).cluster.set_suspended(namespace, builders.workers_name(name), bool(new))


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
        _refresh(state(memo), _key(namespace, labels.get(search.LABEL_JOB_NAME, "")), indexes)
    if type == "DELETED" and is_finetunejob:
        metrics.JOBS.track(key, None)
        state(memo).forget(key)
        return
    _refresh(state(memo), key, indexes)


@kopf.timer(*FINETUNEJOBS, interval=TICK_SECONDS, initial_delay=TICK_SECONDS)
def tick(body: kopf.Body, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    """What only the clock notices: the deadline, and ttlSecondsAfterFinished's cleanup."""
    shared, key = state(memo), _key(namespace, name)
    indexes = Indexes.of(kwargs)
    _refresh(shared, key, indexes)
    workers.clean_up_when_due(shared, body, has_job=bool(indexes.jobs.get(key)))


def _refresh(shared: OperatorState, key: Key, indexes: Indexes) -> None:
    with metrics.reconcile_timer("status"), shared.locks[key]:
        ftj = shared.own_writes_over(key, newest(indexes.finetunejobs.get(key, [])))
        if ftj is None or not is_validated(ftj):
            return
        if ftj.get("spec", {}).get("search"):
            trials.advance(shared, ftj, list(indexes.trials.get(key, [])))
            return
        job = newest(indexes.jobs.get(key, []))
        workers.refresh(shared, ftj, job, list(indexes.pods.get(key, [])))


def _key(namespace: str | None, name: str) -> Key:
    if namespace is None:
        raise kopf.PermanentError("a FineTuneJob is namespaced; got one without a namespace")
    return namespace, name
