"""kopf handlers: the only place where kubetune reacts to the cluster.

Each handler is thin. It validates the FineTuneJob into the API model once and hands it
to `workers` (a plain job's worker group) or `trials` (a search parent's trials), which
perform what the pure `builders`, `status` and `search` functions decide. The operator
keeps no state of its own: the children, their annotations and the resource's status are
the state, so an operator that restarts in the middle of a job picks up where the last
one stopped and creates nothing twice.

Status is recomputed whenever the FineTuneJob, its batch Job, one of its pods or one of
its trials changes. All of them are kept in kopf indexes, so computing a status costs no
API request. The runtimes are indexed too: a job is validated with its runtime (`runtimes`
decides, `workers` records the effective spec), and a runtime's change validates again the
jobs that wait for a runtime and looks again at the jobs queued for GPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

import kopf

from kubetune_operator import builders, kube, metrics, runtimes, search
from kubetune_operator import status as status_rules
from kubetune_operator.api import runtime as runtime_api
from kubetune_operator.api import v1alpha1
from kubetune_operator.api.manifests import check_document
from kubetune_operator.api.v1alpha1 import TERMINAL_PHASES
from kubetune_operator.controller import trials, workers
from kubetune_operator.controller.state import (
    CLUSTER,
    Indexes,
    Key,
    OperatorState,
    TrackedJob,
    events_through,
    newest,
    now,
    post,
    without_status,
)

FINETUNEJOBS: Final = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
RUNTIMES: Final = (v1alpha1.GROUP, v1alpha1.VERSION, runtime_api.RUNTIME_PLURAL)
CLUSTER_RUNTIMES: Final = (v1alpha1.GROUP, v1alpha1.VERSION, runtime_api.CLUSTER_RUNTIME_PLURAL)
REPORTS: Final = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.REPORT_PLURAL)
MANAGED: Final = {v1alpha1.LABEL_MANAGED_BY: v1alpha1.MANAGED_BY}
TICK_SECONDS: Final = float(os.environ.get("KUBETUNE_TICK_SECONDS", "30"))
"""How often each job is looked at for what only the clock notices (deadline, TTL)."""
LOGGER: Final = logging.getLogger(__name__)


def settings_from_env(env: Mapping[str, str]) -> builders.OperatorSettings:
    """The operator-wide defaults the Helm chart passes as environment variables."""
    defaults = builders.OperatorSettings()
    secrets = env.get("KUBETUNE_IMAGE_PULL_SECRETS", "")
    return builders.OperatorSettings(
        trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or defaults.trainer_image,
        image_pull_secrets=tuple(name.strip() for name in secrets.split(",") if name.strip()),
        default_policy=runtimes.default_policy_from(env),
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
    return {_key(namespace, labels.get(v1alpha1.LABEL_JOB_NAME, "")): dict(body)}


@kopf.index("v1", "pods", labels=MANAGED)
def worker_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return {_key(namespace, labels.get(v1alpha1.LABEL_JOB_NAME, "")): dict(body)}


@kopf.index(*REPORTS, labels=MANAGED)
def job_reports(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return {_key(namespace, labels.get(v1alpha1.LABEL_JOB_NAME, "")): dict(body)}


@kopf.index(*FINETUNEJOBS, labels={v1alpha1.LABEL_COMPONENT: search.TRIAL_COMPONENT})
def search_trials(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return {_key(namespace, labels.get(v1alpha1.LABEL_JOB_NAME, "")): dict(body)}


@kopf.index(*RUNTIMES)
def namespace_runtimes(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {namespace or "": dict(body)}


@kopf.index(*CLUSTER_RUNTIMES)
def cluster_runtimes(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {CLUSTER: dict(body)}


@kopf.on.resume(*FINETUNEJOBS)
@kopf.on.create(*FINETUNEJOBS)
def reconcile(
    body: kopf.Body, namespace: str | None, name: str, patch: kopf.Patch, memo: Any, **kwargs: Any
) -> None:
    """Validate the spec with its runtime; create the children that are missing (existing
    ones count as done)."""
    with metrics.reconcile_timer("reconcile"), retried_soon_when_transient():
        shared, key = state(memo), _key(namespace, name)
        seen = TrackedJob.of(body)
        job, problems = seen.checked
        if job is None:
            update = status_rules.validation_failed(body, "; ".join(problems), now=now())
            patch.status.update(update.patch)
            post(body, update.events)
            return
        if seen.phase in TERMINAL_PHASES:
            return
        indexes = Indexes.of(kwargs)
        with shared.locks[key]:
            # The index has seen this event too, and the overlay holds what refreshes wrote.
            ftj = indexes.tracked(shared, key) or seen
            _validate_and_start(shared, job, ftj, indexes, into=patch)


@contextlib.contextmanager
def retried_soon_when_transient() -> Iterator[None]:
    """A 429 or 5xx from the API server makes kopf run the handler again after the
    server's Retry-After (or a second), not after kopf's default minute."""
    try:
        yield
    except Exception as error:
        delay = kube.retry_delay(error)
        if delay is None:
            raise
        raise kopf.TemporaryError(f"the API server failed: {error}", delay=delay) from error


def _validate_and_start(
    shared: OperatorState,
    job: v1alpha1.FineTuneJob,
    ftj: TrackedJob,
    indexes: Indexes,
    into: kopf.Patch | None = None,
) -> None:
    """Resolve the job's runtime (or take the effective spec recorded earlier); refuse it,
    or start its workers, or (a search parent) its trials, which resolve their own runtime."""
    resolution = workers.resolution(job, ftj, indexes, shared.settings.default_policy)
    if isinstance(resolution, runtimes.Refused):
        workers.refuse(shared, ftj, resolution, into)
        return
    if job.spec.search is None:
        workers.start(shared, resolution, ftj, indexes, into)
        return
    record = ftj.unwritten(resolution.record)
    if record:
        shared.write_status(ftj, record)
    trials.start(shared, ftj.with_status(record), list(indexes.trials.get(ftj.key, [])))


def _revalidate(shared: OperatorState, key: Key, indexes: Indexes) -> None:
    """Validate again a job that waits for its runtime (missing, ambiguous or invalid) or
    for an earlier job's children to go."""
    with shared.locks[key]:
        ftj = indexes.tracked(shared, key)
        validated = None if ftj is None else ftj.validated_condition()
        if ftj is None or validated is None or validated.reason not in runtimes.WAITING_REASONS:
            return
        if ftj.model is not None:
            _validate_and_start(shared, ftj.model, ftj, indexes)


@kopf.on.resume(*RUNTIMES)
@kopf.on.create(*RUNTIMES)
@kopf.on.update(*RUNTIMES)
@kopf.on.resume(*CLUSTER_RUNTIMES)
@kopf.on.create(*CLUSTER_RUNTIMES)
@kopf.on.update(*CLUSTER_RUNTIMES)
def validate_runtime(body: kopf.Body, name: str, patch: kopf.Patch, **_: Any) -> None:
    """The runtime's own Validated condition: a well-formed runtime whose defaults keep its
    own guardrails (else every job that uses it would be refused)."""
    checked = check_document(without_status(body), f"{body.get('kind')} {name}")
    if checked.runtime is None:
        problems = [str(problem) for problem in checked.problems]
        reason: str = status_rules.Reason.InvalidSpec
    else:
        problems = [v.message for v in runtimes.runtime_problems(checked.runtime)]
        reason = status_rules.Reason.GuardrailConflict
    update = status_rules.runtime_validated(body, problems, reason, now=now())
    patch.status.update(update.patch)
    post(body, update.events)


@kopf.on.event(*RUNTIMES)
@kopf.on.event(*CLUSTER_RUNTIMES)
def runtime_event(namespace: str | None, memo: Any, **kwargs: Any) -> None:
    """A runtime appeared, changed or went: validate again the jobs that wait for one, and
    look again at the jobs queued for GPUs (its limit may have changed)."""
    shared, indexes = state(memo), Indexes.of(kwargs)
    for key in list(indexes.finetunejobs):
        if namespace is not None and key[0] != namespace:
            continue
        _revalidate(shared, key, indexes)
        ftj = indexes.tracked(shared, key)
        if ftj is not None and workers.waits_in_queue(ftj):
            _refresh(shared, key, indexes)


def _refresh_queue(shared: OperatorState, namespace: str, indexes: Indexes) -> None:
    """Look again at the jobs of a namespace that wait in the operator's queue."""
    for ftj in indexes.jobs_in(shared, namespace):
        if workers.waits_in_queue(ftj):
            _refresh(shared, ftj.key, indexes)


@kopf.on.field(*FINETUNEJOBS, field="spec.runPolicy.suspend")
def suspend_changed(
    new: Any, body: kopf.Body, namespace: str | None, name: str, memo: Any, **kwargs: Any
) -> None:
    """Suspend or resume the workers; a resumed group continues from its last checkpoint.
    A Job that Kueue admits is left to Kueue, which would resume it anyway."""
    key = _key(namespace, name)
    job = newest(Indexes.of(kwargs).jobs.get(key, []))
    queue = ((job or {}).get("metadata", {}).get("labels") or {}).get(runtime_api.KUEUE_QUEUE_LABEL)
    if queue:
        kopf.event(
            body,
            type="Warning",
            reason=status_rules.Reason.SpecChangeIgnored,
            message=f"spec.runPolicy.suspend is not passed on: Kueue (LocalQueue {queue}) "
            "decides when the workers run; deactivate the job's Workload instead "
            '(kubectl patch workload NAME --type merge -p \'{"spec":{"active":false}}\')',
        )
        return
    state(memo).cluster.set_suspended(key[0], builders.workers_name(key[1]), bool(new))


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
@kopf.on.event(*REPORTS, labels=MANAGED)
def refresh_status(
    resource: kopf.Resource,
    type: str,
    namespace: str | None,
    name: str,
    labels: kopf.Labels,
    memo: Any,
    **kwargs: Any,
) -> None:
    """Recompute the owning FineTuneJob's status from its children (its trainer's report
    copied in first) and act on the verdict; a trial's change refreshes its search parent
    too."""
    indexes = Indexes.of(kwargs)
    is_finetunejob = resource.plural == v1alpha1.PLURAL
    key = _key(namespace, name if is_finetunejob else labels.get(v1alpha1.LABEL_JOB_NAME, ""))
    if is_finetunejob and labels.get(v1alpha1.LABEL_COMPONENT) == search.TRIAL_COMPONENT:
        _refresh(state(memo), _key(namespace, labels.get(v1alpha1.LABEL_JOB_NAME, "")), indexes)
    if type == "DELETED" and is_finetunejob:
        metrics.JOBS.track(key, None)
        state(memo).forget(key)
        _refresh_queue(state(memo), key[0], indexes)
        return
    if _refresh(state(memo), key, indexes):
        _refresh_queue(state(memo), key[0], indexes)


@kopf.on.startup()
async def start_clock(memo: Any, **kwargs: Any) -> None:
    """One operator-wide loop for what only the clock notices. A `kopf.timer` would do it
    per job, but kopf guards every object a timer serves with a finalizer: a FineTuneJob
    could then not be deleted while the operator is down or uninstalled."""
    memo.clock = asyncio.create_task(_clock(memo, Indexes.of(kwargs)))


@kopf.on.cleanup()
async def stop_clock(memo: Any, **_: Any) -> None:
    memo.clock.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await memo.clock


async def _clock(memo: Any, indexes: Indexes) -> None:
    """Every TICK_SECONDS, where Kueue keeps the jobs waiting for it (one request per
    LocalQueue), then each FineTuneJob's tick, one at a time off the event loop."""
    while True:
        await asyncio.sleep(TICK_SECONDS)
        try:
            await asyncio.to_thread(workers.look_up_kueue_places, state(memo), indexes)
        except Exception:
            # Without places the Queued jobs say what they said before; the ticks go on.
            LOGGER.exception("looking up the places in Kueue's queues failed")
        for key in list(indexes.finetunejobs):
            try:
                await asyncio.to_thread(tick, state(memo), key, indexes)
            except Exception:
                # One job's trouble must not stop the clock for the others.
                LOGGER.exception("tick of FineTuneJob %s/%s failed", *key)


def tick(shared: OperatorState, key: Key, indexes: Indexes) -> None:
    """What only the clock notices: the deadline, ttlSecondsAfterFinished's cleanup, and a
    new place in Kueue's queue; and a job waiting for its runtime is validated again,
    should a runtime event have been missed."""
    with events_through(shared.cluster):
        _revalidate(shared, key, indexes)
        if _refresh(shared, key, indexes):  # ended by its deadline: its GPUs are free
            _refresh_queue(shared, key[0], indexes)
        ftj = indexes.tracked(shared, key)
        if ftj is not None:
            workers.clean_up_when_due(shared, ftj, has_job=bool(indexes.jobs.get(key)))


def _refresh(shared: OperatorState, key: Key, indexes: Indexes) -> bool:
    """Bring the job's status up to date; True when it just ended (its GPUs are free)."""
    with metrics.reconcile_timer("status"), shared.locks[key]:
        ftj = indexes.tracked(shared, key)
        if ftj is None or not ftj.is_validated():
            return False
        if ftj.is_search:
            trials.advance(shared, ftj, list(indexes.trials.get(key, [])))
            return False
        ftj = workers.take_report(shared, ftj, newest(indexes.reports.get(key, [])))
        job = newest(indexes.jobs.get(key, []))
        before = ftj.phase
        after = workers.refresh(shared, ftj, job, list(indexes.pods.get(key, [])), indexes)
        return before not in TERMINAL_PHASES and after in TERMINAL_PHASES


def _key(namespace: str | None, name: str) -> Key:
    if namespace is None:
        raise kopf.PermanentError("a FineTuneJob is namespaced; got one without a namespace")
    return namespace, name
