"""What the operator's handlers share: the API client, per-job locks, and what it wrote.

The operator keeps no state of its own that matters after a restart (the children, their
annotations and the resources' status are the state). What it does keep is a courtesy to
kopf's indexes, which lag the operator's own writes: the last status patch and the worker
Job it created per job are laid over the indexed objects until the index catches up, so
the next event neither repeats a patch nor creates a child twice. The helpers at the end
read the indexed objects, which are plain dicts, the same way everywhere.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, cast

import kopf

from kubetune_operator import builders, kube
from kubetune_operator import status as status_rules

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})

Key = tuple[str, str]
"""(namespace, FineTuneJob name): how children find their FineTuneJob in the indexes."""


def now() -> datetime:
    return datetime.now(UTC)


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

    def write_status(self, ftj: Mapping[str, Any], patch: dict[str, Any]) -> None:
        """Patch the status and remember the result until the index shows it."""
        key = key_of(ftj)
        self.cluster.patch_status(*key, patch)
        self.written[key] = (ftj["metadata"]["resourceVersion"], {**ftj.get("status", {}), **patch})

    def own_writes_over(self, key: Key, ftj: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The indexed FineTuneJob with this operator's last status patch laid over it while
        the index still shows the version the patch was computed from."""
        mine = self.written.get(key)
        if ftj is None or mine is None:
            return ftj
        version, status = mine
        if ftj["metadata"].get("resourceVersion") != version:
            del self.written[key]
            return ftj
        return {**ftj, "status": status}


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


def key_of(ftj: Mapping[str, Any]) -> Key:
    return ftj["metadata"]["namespace"], ftj["metadata"]["name"]


def name_of(ftj: Mapping[str, Any]) -> str:
    return f"{ftj['metadata'].get('namespace')}/{ftj['metadata']['name']}"


def post(ftj: Mapping[str, Any], events: Iterable[status_rules.Event]) -> None:
    for event in events:
        kopf.event(body_of(ftj), type=event.type, reason=event.reason, message=event.message)


def body_of(ftj: Mapping[str, Any]) -> kopf.Body:
    """A FineTuneJob kept in an index, as kopf's functions take it."""
    return ftj if isinstance(ftj, kopf.Body) else kopf.Body(cast(kopf.RawBody, ftj))


def without_status(body: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "status"}


def run_policy(ftj: Mapping[str, Any]) -> Mapping[str, Any]:
    policy: Mapping[str, Any] = ftj.get("spec", {}).get("runPolicy", {})
    return policy


def is_validated(ftj: Mapping[str, Any]) -> bool:
    conditions = ftj.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Validated" and c.get("status") == "True" for c in conditions)


def newest(bodies: Iterable[Any]) -> Mapping[str, Any] | None:
    found = list(bodies)
    return found[-1] if found else None
