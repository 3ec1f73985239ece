"""Where Kueue keeps a waiting worker Job: its place, read from Kueue's visibility API.

A runtime with `queue.kueueLocalQueue` hands the worker Job to Kueue, which admits it when
the LocalQueue's ClusterQueue has quota. Kueue's on-demand visibility API (the
VisibilityOnDemand feature) lists a LocalQueue's pending Workloads in the order Kueue will
admit them: `GET /apis/visibility.kueue.x-k8s.io/<version>/namespaces/<ns>/localqueues/
<name>/pendingworkloads` answers a PendingWorkloadsSummary whose `items` are
PendingWorkloads with `metadata` (name, namespace, ownerReferences), `priority`,
`localQueueName`, `positionInLocalQueue` and `positionInClusterQueue`, both counted from 0.
The operator asks once per LocalQueue per tick of its clock (kube.Cluster does the request,
asking v1beta1 after v1beta2 where v1beta2 is not served, and remembers the version that
answered; workers.py decides whom to ask for) and this module, on plain data, says which FineTuneJob
stands where, counted from 1 as the operator's own queue counts (1: admitted next). The API
answers a page of PAGE_SIZE Workloads at a time; the next page is asked for only while a
full page leaves some waiting Job unfound, up to MAX_PAGES pages.

How a Workload is matched to its Job: Kueue names a Job's Workload `job-<job name>-<hash>`,
cut to fit, so the name cannot be parsed back reliably; but Kueue sets the Job as the
Workload's owner, and the visibility API copies the Workload's ownerReferences (apiVersion,
kind, name, uid) into each PendingWorkload, as it has since the API first appeared (Kueue
0.6). So a PendingWorkload belongs to the Job whose uid its ownerReferences name. The uid,
not the name: after a restart the new worker Job has the old one's name, and the old
Workload may still be listed for a moment. This needs no read of `workloads.kueue.x-k8s.io`
and no permission for it. A Job that no item names (not pending in Kueue's queue, or past
the first MAX_PAGES pages) has no place, and its status says what it said without one.

`Visibility` is what the operator remembers between ticks: the places found, and the
LocalQueues whose visibility API did not answer (not served: the feature gate off or an
old Kueue; not allowed: RBAC), which are left alone for a while so that a cluster without
the API gets no request storm, and reported in the log once.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from kubetune_operator.api.plain import mapping, mappings

K = TypeVar("K", bound=Hashable)

LocalQueue = tuple[str, str]
"""(namespace, LocalQueue name)."""
REST_TICKS: Final = 10
"""Ticks of the operator's clock a LocalQueue is not asked about after its visibility API
did not answer (five minutes at the default tick of 30 seconds)."""


PAGE_SIZE: Final = 1000
"""Pending Workloads per request: the visibility API's default limit."""
MAX_PAGES: Final = 10
"""Pages read per LocalQueue and tick at most: jobs further back than 10000 Workloads show
no place rather than cost more requests."""


@dataclass(frozen=True)
class Place:
    """A worker Job's place in Kueue's queues."""

    local_queue: str
    """The LocalQueue the Workload waits in."""
    in_local_queue: int
    """1: the LocalQueue's next Workload to be admitted."""
    in_cluster_queue: int
    """Its place among the pending Workloads of every LocalQueue of the ClusterQueue."""


def places(summary: Mapping[str, Any], jobs: Mapping[str, K]) -> dict[K, Place]:
    """The place of each waiting Job that the PendingWorkloadsSummary lists.

    `jobs` maps a worker Job's uid to whatever the caller knows the job by (its
    FineTuneJob's key); jobs that no PendingWorkload names are left out.
    """
    found: dict[K, Place] = {}
    for item in mappings(summary.get("items")):
        place = _place(item)
        owners = [uid for uid in _owner_uids(item) if uid in jobs]
        if place is not None and owners:
            found[jobs[owners[0]]] = place
    return found


def more_to_read(summary: Mapping[str, Any], found: int, waiting: int) -> bool:
    """Whether the page after `summary` may hold a waiting Job: this page was full and only
    `found` of the `waiting` Jobs are placed so far."""
    return len(mappings(summary.get("items"))) >= PAGE_SIZE and found < waiting


@dataclass
class Visibility:
    """What the operator remembers of Kueue's visibility API between ticks."""

    places: dict[tuple[str, str], Place] = field(default_factory=dict)
    """The place of each FineTuneJob (namespace, name) found at the last look."""
    resting: dict[LocalQueue, int] = field(default_factory=dict)
    """LocalQueues whose visibility API did not answer: ticks left before asking again."""
    reported: set[LocalQueue] = field(default_factory=set)
    """LocalQueues whose unanswered request was logged already."""

    def due(self, queues: Iterable[LocalQueue]) -> list[LocalQueue]:
        """The LocalQueues to ask this tick; a resting one counts one tick down instead."""
        asked = []
        for queue in sorted(set(queues)):
            left = self.resting.get(queue, 0)
            if left > 0:
                self.resting[queue] = left - 1
            else:
                asked.append(queue)
        return asked

    def unanswered(self, queue: LocalQueue) -> bool:
        """Rest a LocalQueue whose API did not answer; True the first time (log it)."""
        self.resting[queue] = REST_TICKS
        first = queue not in self.reported
        self.reported.add(queue)
        return first


def _place(item: Mapping[str, Any]) -> Place | None:
    in_local, in_cluster = item.get("positionInLocalQueue"), item.get("positionInClusterQueue")
    if not isinstance(in_local, int) or not isinstance(in_cluster, int):
        return None
    return Place(str(item.get("localQueueName", "")), in_local + 1, in_cluster + 1)


def _owner_uids(item: Mapping[str, Any]) -> list[str]:
    references = mappings(mapping(item.get("metadata")).get("ownerReferences"))
    return [str(ref["uid"]) for ref in references if ref.get("uid")]
