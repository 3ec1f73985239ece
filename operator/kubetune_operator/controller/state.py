"""What the operator's handlers share: the API client, per-job locks, and what it wrote.

The operator keeps no state of its own that matters after a restart (the children, their
annotations and the resources' status are the state). What it does keep is a courtesy to
kopf's indexes, which lag the operator's own writes: the last status patch and the worker
Job it created per job are laid over the indexed objects until the index catches up, so
the next event neither repeats a patch nor creates a child twice.

The indexes hold plain dicts, as kopf gives them. A FineTuneJob leaves them once, through
`TrackedJob.of`: its status read into the typed model, its spec validated into the API
model (when first asked for), and that object is what the workers and trials work on.
Status patches stay dicts, as kopf and the API take them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Final, cast

import kopf

from kubetune_operator import builders, kube, kueue
from kubetune_operator import status as status_rules
from kubetune_operator.api import v1alpha1
from kubetune_operator.api.manifests import Checked, check_document

LOGGER: Final = logging.getLogger(__name__)
OWN_WRITES_TTL_S: Final = 15.0
"""How long the operator's own status writes are laid over an index that does not show them:
far longer than the index lags, short enough that a write undone by a late one is redone."""

Key = tuple[str, str]
"""(namespace, FineTuneJob name): how children find their FineTuneJob in the indexes."""
CLUSTER: Final = ""
"""The key of the ClusterFineTuneRuntimes index."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TrackedJob:
    """A FineTuneJob as the controller works on it: its body as kopf's index holds it (this
    operator's own writes laid over), read once into the API model."""

    body: Mapping[str, Any]
    """The plain object: what kopf.adopt, the Events and the pure status rules take."""
    status: v1alpha1.FineTuneJobStatus
    """The status, typed; the fields that do not validate are left unread (logged)."""
    unread: tuple[str, ...] = ()
    """The status fields left unread (v1alpha1.readable_status): a bad value's field, an
    unknown field by its path."""
    spec_check: list[Checked] = field(default_factory=list, repr=False, compare=False)
    """The spec's validation once it was asked for, shared with the views of this job that
    differ only in their status (`with_status`)."""

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> TrackedJob:
        """The kopf boundary: read a FineTuneJob's status into the model (its spec is
        validated when first asked for: a queue decision reads only its peers' status)."""
        status, unread = v1alpha1.readable_status(body.get("status"))
        if unread:
            LOGGER.warning("FineTuneJob %s: status fields left unread: %s", name_of(body), unread)
        return cls(body, status, tuple(unread))

    @cached_property
    def checked(self) -> tuple[v1alpha1.FineTuneJob | None, list[str]]:
        """The API model with this status, or why the spec is invalid; validated once."""
        if not self.spec_check:
            self.spec_check.append(check_document(without_status(self.body), self.name))
        checked = self.spec_check[0]
        if checked.job is None:
            return None, [str(problem) for problem in checked.problems]
        return checked.job.model_copy(update={"status": self.status}), []

    @property
    def model(self) -> v1alpha1.FineTuneJob | None:
        """The API model, spec and typed status; None when the spec does not validate."""
        return self.checked[0]

    @property
    def key(self) -> Key:
        return key_of(self.body)

    @property
    def name(self) -> str:
        return name_of(self.body)

    @property
    def phase(self) -> v1alpha1.Phase | None:
        return self.status.phase

    @property
    def is_search(self) -> bool:
        """A search parent, also when its spec no longer validates (it then makes no trials)."""
        return bool(self.body.get("spec", {}).get("search"))

    def validated_condition(self) -> v1alpha1.Condition | None:
        return next((c for c in self.status.conditions if c.type == "Validated"), None)

    def is_validated(self) -> bool:
        validated = self.validated_condition()
        return validated is not None and validated.status == "True"

    def unwritten(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Of the status `fields`, those the status does not hold yet: what a patch changes."""
        stored = self.status.model_dump(mode="json", exclude_unset=True)
        return {name: value for name, value in fields.items() if stored.get(name) != value}

    def with_status(self, patch: Mapping[str, Any]) -> TrackedJob:
        """The job as it is once the status `patch` is written (a None field reads as absent,
        as the API leaves it out); its spec is not validated again."""
        status = {**(self.body.get("status") or {}), **patch}
        read, unread = v1alpha1.readable_status(status)
        return TrackedJob({**self.body, "status": status}, read, tuple(unread), self.spec_check)

    def run_policy(self) -> dict[str, Any]:
        """The effective runPolicy (the runtime may have set a deadline or a backoff limit)
        with what the job's own spec says now on top: suspend and the deadline may be
        edited."""
        recorded = (self.status.effective_spec or {}).get("runPolicy") or {}
        own = self.body.get("spec", {}).get("runPolicy") or {}
        return {**recorded, **own}


@dataclass
class OperatorState:
    """What the handlers share: the API client, the settings, and per-job locks."""

    cluster: kube.Cluster
    settings: builders.OperatorSettings
    locks: defaultdict[Key, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    restarted: dict[Key, int] = field(default_factory=dict)
    """The newest group restart this operator decided per job: an index that still shows an
    older status must not make it create an older group again."""
    written: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """The status fields this operator patched per job that the index may not show yet.
    kopf's indexes lag the operator's own writes, and a patch sent through kopf (the create
    handler's) reaches the API after one sent directly from another handler, so the index
    can move to a newer version that still lacks it: the fields are laid over the index
    until it shows every one of them, so the next event neither repeats the patch nor its
    Events, and a queue decision sees the GPUs a job has just taken. At most
    OWN_WRITES_TTL_S after the last write, though: a patch that kopf retried through API
    faults can land after a later one and undo it, and the index, which then shows the
    undone status, must be believed again so that the status is written once more."""
    written_at: dict[Key, float] = field(default_factory=dict)
    """When `written` last grew, per job (clock())."""
    clock: Callable[[], float] = time.monotonic
    created_jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """The worker Job this operator created per job, until the index shows it, so the
    status does not see it missing and create it again."""
    queue_locks: defaultdict[str, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    """Per namespace: one decision at a time on who may take the GPUs of the operator's
    queue, each seeing the ones before it (through the own-writes overlay)."""
    kueue: kueue.Visibility = field(default_factory=kueue.Visibility)
    """The places in Kueue's queues found at the clock's last look, and the LocalQueues
    whose visibility API did not answer."""

    def forget(self, key: Key) -> None:
        """Drop what is kept of a deleted job, so a new job of the same name starts clean
        (restart 0, no Job taken for created) and a long-lived operator does not grow."""
        for kept in (self.locks, self.restarted, self.written, self.written_at, self.created_jobs):
            kept.pop(key, None)
        self.kueue.places.pop(key, None)

    def write_status(
        self, ftj: TrackedJob, patch: dict[str, Any], into: kopf.Patch | None = None
    ) -> None:
        """Patch the status and remember the result until the index shows it.

        `into`: the create handler's kopf patch, which kopf sends together with its record
        that the creation was handled. A status request of its own would come first, and
        its event, without that record, would make kopf run the create handler again.
        """
        key = ftj.key
        if into is None:
            self.cluster.patch_status(*key, patch)
        else:
            into.status.update(patch)
        self.written[key] = {**self.written.get(key, {}), **patch}
        self.written_at[key] = self.clock()

    def own_writes_over(self, key: Key, ftj: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The indexed FineTuneJob with the status fields this operator wrote laid over it,
        until the index shows them all or OWN_WRITES_TTL_S have passed."""
        mine = self.written.get(key)
        if ftj is None or mine is None:
            return ftj
        status = ftj.get("status") or {}
        expired = self.clock() - self.written_at.get(key, 0.0) > OWN_WRITES_TTL_S
        if expired or shows(status, mine):
            del self.written[key]
            self.written_at.pop(key, None)
            return ftj
        return {**ftj, "status": {**status, **mine}}


def shows(status: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """Whether `status` holds `fields` as a merge patch of them would leave it: equal values,
    nested objects at least these keys, a None field absent."""
    for name, value in fields.items():
        found = status.get(name)
        if isinstance(value, Mapping) and isinstance(found, Mapping):
            if not shows(found, value):
                return False
        elif found != value:
            return False
    return True


@dataclass(frozen=True)
class Indexes:
    """The kopf indexes, keyed by (namespace, FineTuneJob name); trials by their parent's."""

    finetunejobs: kopf.Index[Key, Any]
    jobs: kopf.Index[Key, Any]
    pods: kopf.Index[Key, Any]
    trials: kopf.Index[Key, Any]
    reports: kopf.Index[Key, Any]
    """The FineTuneJobReports the trainers write."""
    runtimes: kopf.Index[str, Any]
    """FineTuneRuntimes by namespace."""
    cluster_runtimes: kopf.Index[str, Any]
    """ClusterFineTuneRuntimes, all under the key CLUSTER."""

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Indexes:
        """kopf passes each index to a handler as a keyword named after its function."""
        return cls(
            kwargs["finetunejobs"],
            kwargs["worker_jobs"],
            kwargs["worker_pods"],
            kwargs["search_trials"],
            kwargs["job_reports"],
            kwargs["namespace_runtimes"],
            kwargs["cluster_runtimes"],
        )

    def runtimes_for(self, namespace: str) -> tuple[list[Any], list[Any]]:
        """The FineTuneRuntimes of a namespace and every ClusterFineTuneRuntime."""
        return list(self.runtimes.get(namespace, [])), list(self.cluster_runtimes.get(CLUSTER, []))

    def runtime(self, namespace: str, kind: str, name: str) -> Mapping[str, Any] | None:
        """One runtime as it is now, by kind and name; None when it is gone."""
        namespaced, cluster = self.runtimes_for(namespace)
        candidates = cluster if kind == v1alpha1.CLUSTER_RUNTIME_KIND else namespaced
        return next((r for r in candidates if r["metadata"]["name"] == name), None)

    def tracked(self, shared: OperatorState, key: Key) -> TrackedJob | None:
        """The FineTuneJob as the index shows it, this operator's own writes laid over; None
        when the index has none."""
        ftj = shared.own_writes_over(key, newest(self.finetunejobs.get(key, [])))
        return None if ftj is None else TrackedJob.of(ftj)

    def jobs_in(self, shared: OperatorState, namespace: str) -> list[TrackedJob]:
        """The FineTuneJobs of a namespace, with this operator's own writes laid over them."""
        found = (
            self.tracked(shared, key) for key in list(self.finetunejobs) if key[0] == namespace
        )
        return [ftj for ftj in found if ftj is not None]


def key_of(ftj: Mapping[str, Any]) -> Key:
    return ftj["metadata"]["namespace"], ftj["metadata"]["name"]


def name_of(ftj: Mapping[str, Any]) -> str:
    return f"{ftj['metadata'].get('namespace')}/{ftj['metadata']['name']}"


_API_POSTER: ContextVar[kube.Cluster | None] = ContextVar("kubetune_api_poster", default=None)


@contextlib.contextmanager
def events_through(cluster: kube.Cluster) -> Iterator[None]:
    """Post the Events of the work inside with API calls. kopf's event queue exists only in
    its per-object tasks, and the operator's clock runs outside them."""
    token = _API_POSTER.set(cluster)
    try:
        yield
    finally:
        _API_POSTER.reset(token)


def post(ftj: Mapping[str, Any], events: Iterable[status_rules.Event]) -> None:
    cluster = _API_POSTER.get()
    for event in events:
        if cluster is None:
            kopf.event(body_of(ftj), type=event.type, reason=event.reason, message=event.message)
        else:
            moment = status_rules.rfc3339(now())
            cluster.post_event(ftj, event.type, event.reason, event.message, moment)


def body_of(ftj: Mapping[str, Any]) -> kopf.Body:
    """A FineTuneJob kept in an index, as kopf's functions take it."""
    return ftj if isinstance(ftj, kopf.Body) else kopf.Body(cast(kopf.RawBody, ftj))


def without_status(body: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "status"}


def newest(bodies: Iterable[Any]) -> Mapping[str, Any] | None:
    found = list(bodies)
    return found[-1] if found else None
