"""The operator's own GPU queue, for runtimes without Kueue: which waiting jobs start now.

A runtime's `queue.maxConcurrentGpusPerNamespace` bounds the GPUs that the started jobs of
that runtime hold at once in one namespace. A job that does not fit waits in phase Queued
without a worker Job; whenever GPUs are given back (a job ends or is deleted) or the limit
changes, the waiting jobs are looked at again. These functions decide, on plain data; the
operator (workers.py) performs the decision and keeps no queue of its own: the waiting
jobs are the FineTuneJobs in phase Queued.

Order: first created, first started (creationTimestamp). The timestamps have a resolution
of one second and `kubectl apply -f folder/` creates many jobs in the same second, so ties
are common; on a tie a job that names a `resources.priorityClassName` goes before one that
names none (someone asked for priority), then the class names and the job names decide in
alphabetical order, so the order is total and the same on every look. The class's value is
not read: that would take a cluster-wide read of PriorityClasses for a tie-break, and the
scheduler still uses the values between the pods that run.

The order is strict: when the head of the queue does not fit, nothing behind it starts
(no backfilling), so a large job is never starved by a stream of small ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WaitingJob:
    """A job that waits for GPUs, as far as its place in the queue goes."""

    name: str
    gpus: int
    """GPUs the job needs in all (workers times gpusPerWorker)."""
    created: str
    """Its creationTimestamp (RFC 3339, UTC, whole seconds: sorts as text)."""
    priority_class: str | None = None
    """Its resources.priorityClassName, the tie-breaker."""


@dataclass(frozen=True)
class Admission:
    """What to do with the waiting jobs now."""

    start: list[str] = field(default_factory=list)
    """The jobs to start now, in queue order."""
    positions: dict[str, int] = field(default_factory=dict)
    """The place of each job that keeps waiting (1: next to start)."""


def queue_order(waiting: Iterable[WaitingJob]) -> list[WaitingJob]:
    """The waiting jobs, next to start first."""
    return sorted(waiting, key=_place)


def _place(job: WaitingJob) -> tuple[str, bool, str, str]:
    return job.created, job.priority_class is None, job.priority_class or "", job.name


def admit(waiting: Iterable[WaitingJob], in_use: int, limit: int) -> Admission:
    """Start the jobs at the head of the queue while they fit in `limit` GPUs beside the
    `in_use` ones the started jobs hold; the rest keep waiting, numbered from 1."""
    order = queue_order(waiting)
    free = limit - in_use
    start: list[str] = []
    for job in order:
        if job.gpus > free:
            break
        start.append(job.name)
        free -= job.gpus
    rest = order[len(start) :]
    return Admission(start, {job.name: place for place, job in enumerate(rest, start=1)})
