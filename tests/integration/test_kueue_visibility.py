"""The operator reads Kueue's visibility API into the status of jobs waiting for Kueue.

The real handlers run against the emulator, as in test_runtime_operator.py, with a clock
tick of half a second. The emulator serves only v1beta1 of the visibility API (as Kueue 0.9
to 0.14 do), so the operator's first request, for v1beta2, answers 404 and it falls back.

What this does NOT prove: Kueue itself. Here the test writes the PendingWorkloadsSummary
that Kueue's visibility server would compute (positions in the LocalQueue and in its
ClusterQueue, the Workload's ownerReferences naming the Job), and flips the Job's
`suspend` as Kueue's admission would. That a real Kueue lists a kubetune worker Job with
these fields is taken from Kueue's API types and documentation (see kueue.py), not tested;
nor are API priority and fairness (429s) or RBAC, which the emulator does not enforce.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import pytest

from kubetune_operator import kueue
from kubetune_operator.controller import workers
from tests.integration.test_operator import condition, phase_is
from tests.integration.test_runtime_operator import create_runtime, event_reasons, job, runtime
from tests.kube.client import KubeClient
from tests.kube.emulator import EmulatorServer
from tests.kube.operators import OperatorThread

VISIBILITY: Final = (
    "/apis/visibility.kueue.x-k8s.io/v1beta1/namespaces/default/localqueues/gpu-queue"
    "/pendingworkloads"
)
PENDING_REQUESTS: Final = "get localqueues/pendingworkloads"
NO_PLACE_MESSAGE: Final = (
    "waiting for Kueue to admit the worker Job from LocalQueue gpu-queue; its place in the "
    "queue: kubectl get workloads -n default"
)


class KueueQueue:
    """LocalQueue gpu-queue's pending Workloads as Kueue's visibility server would list
    them, in the order the test sets (`wait`): (Job name, Job uid) per Workload."""

    def __init__(self, server: EmulatorServer) -> None:
        self.items: list[dict[str, Any]] = []
        server.call(lambda emulator: emulator[f"get {VISIBILITY}"] << self._summary)

    def wait(self, *jobs: tuple[str, str], cluster_queue_offsets: tuple[int, ...]) -> None:
        """The Workloads of `jobs` in this order; each one's place in the ClusterQueue is its
        place here plus its offset (Workloads of other LocalQueues ahead of it)."""
        self.items = [
            {
                "metadata": {
                    "name": f"job-{name}-5f1a3",
                    "namespace": "default",
                    "ownerReferences": [
                        {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid}
                    ],
                },
                "priority": 0,
                "localQueueName": "gpu-queue",
                "positionInLocalQueue": index,
                "positionInClusterQueue": index + offset,
            }
            for index, ((name, uid), offset) in enumerate(
                zip(jobs, cluster_queue_offsets, strict=True)
            )
        ]

    def _summary(self, request: Any) -> dict[str, Any]:
        """One page, as the API's `offset` and `limit` ask (defaults 0 and 1000)."""
        offset = int(request.params.get("offset", 0))
        limit = int(request.params.get("limit", 1000))
        return {
            "kind": "PendingWorkloadsSummary",
            "apiVersion": "visibility.kueue.x-k8s.io/v1beta1",
            "metadata": {"creationTimestamp": None},
            "items": self.items[offset : offset + limit],
        }


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the operator's clock has looked up Kueue's places (a one-item list)."""
    counted = [0]
    look_up = workers.look_up_kueue_places

    def counting(*args: Any) -> None:
        counted[0] += 1
        look_up(*args)

    monkeypatch.setattr(workers, "look_up_kueue_places", counting)
    return counted


def worker_uid(kube: KubeClient, name: str) -> tuple[str, str]:
    found = kube.wait_for_object("Job", f"{name}-workers", lambda j: True)
    return found["metadata"]["name"], found["metadata"]["uid"]


def position_is(expected: int) -> Callable[[dict[str, Any]], bool]:
    return lambda ftj: ftj.get("status", {}).get("queuePosition") == expected


def running_message(ftj: dict[str, Any]) -> str:
    return str(condition(ftj, "Running")["message"])


def test_the_status_follows_kueues_places_and_drops_them_at_admission(
    kube: KubeClient,
    kube_emulator: EmulatorServer,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    looks: list[int],
) -> None:
    local_queue = KueueQueue(kube_emulator)
    operator()
    create_runtime(kube, runtime("kueue", queue={"kueueLocalQueue": "gpu-queue"}))
    for name in ("sentiment", "llama"):
        kube.create(job(sentiment, name, "kueue", gpusPerWorker=1))
    queued = kube.wait_for_object("FineTuneJob", "sentiment", phase_is("Queued"))
    assert "queuePosition" not in queued["status"]  # Kueue lists nothing yet
    assert running_message(queued) == NO_PLACE_MESSAGE

    ours, theirs = worker_uid(kube, "sentiment"), ("someone-elses-job", "uid-someone-else")
    llama = worker_uid(kube, "llama")
    local_queue.wait(theirs, ours, llama, cluster_queue_offsets=(0, 1, 1))
    placed = kube.wait_for_object("FineTuneJob", "sentiment", position_is(2))
    assert running_message(placed) == (
        "waiting for Kueue to admit the worker Job: place 2 in LocalQueue gpu-queue "
        "(3 in ClusterQueue)"
    )
    assert placed["status"]["phase"] == "Queued"
    kube.wait_for_object("FineTuneJob", "llama", position_is(3))

    local_queue.wait(ours, llama, cluster_queue_offsets=(0, 0))  # Kueue admitted theirs
    moved = kube.wait_for_object("FineTuneJob", "sentiment", position_is(1))
    assert running_message(moved) == (
        "waiting for Kueue to admit the worker Job: place 1 in LocalQueue gpu-queue "
        "(1 in ClusterQueue)"
    )
    kube.wait_for_object("FineTuneJob", "llama", position_is(2))
    requests = kube_emulator.request_counts()[PENDING_REQUESTS]
    # One request per LocalQueue per look, however many jobs wait in it; the one more is
    # the first look's v1beta2 request, which this emulator's Kueue does not serve.
    assert requests <= looks[0] + 1

    local_queue.wait(llama, cluster_queue_offsets=(0,))
    kube.patch("Job", "sentiment-workers", {"spec": {"suspend": False}})  # Kueue admits it
    admitted = kube.wait_for_object("FineTuneJob", "sentiment", lambda f: not phase_is("Queued")(f))
    assert "queuePosition" not in admitted["status"]
    kube.wait_for_object("FineTuneJob", "llama", position_is(1))
    # A new place is no transition: one Queued Event, when the job started waiting.
    assert len(kube.wait_for_event(queued, reason="Queued")) == 1


def test_without_the_visibility_api_the_job_keeps_the_message_without_a_place(
    kube: KubeClient,
    kube_emulator: EmulatorServer,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    looks: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The emulator serves no visibility API: every version answers 404, as a cluster
    without Kueue or with its VisibilityOnDemand feature off does."""
    caplog.set_level(logging.INFO, logger=workers.__name__)
    operator()
    create_runtime(kube, runtime("kueue", queue={"kueueLocalQueue": "gpu-queue"}))
    body = kube.create(job(sentiment, "sentiment", "kueue", gpusPerWorker=1))
    kube.wait_for(
        lambda: kube_emulator.request_counts()[PENDING_REQUESTS] >= 2 or None,
        "the operator to ask Kueue's visibility API",
    )
    seen = looks[0]
    kube.wait_for(lambda: looks[0] >= seen + 3 or None, "three more looks")

    queued = kube.get("FineTuneJob", "sentiment")
    assert queued is not None
    assert queued["status"]["phase"] == "Queued"
    assert "queuePosition" not in queued["status"]
    assert running_message(queued) == NO_PLACE_MESSAGE
    kube.wait_for_event(body, reason="Created")
    kube.wait_for_event(body, reason="Queued")
    assert sorted(reason for reason, _ in event_reasons(kube, body)) == ["Created", "Queued"]
    # Asked with both versions once, then the LocalQueue rests for REST_TICKS looks.
    requests = kube_emulator.request_counts()[PENDING_REQUESTS]
    assert requests <= 2 * (1 + (looks[0] - 1) // (kueue.REST_TICKS + 1))
    unanswered = [r for r in caplog.records if "does not answer for LocalQueue" in r.message]
    assert [r.getMessage() for r in unanswered] == [
        "Kueue's visibility API (visibility.kueue.x-k8s.io) does not answer for LocalQueue "
        "default/gpu-queue (not served or not allowed): jobs waiting in it show no place"
    ]


def test_a_job_far_back_in_a_long_queue_gets_its_place_from_a_later_page(
    kube: KubeClient,
    kube_emulator: EmulatorServer,
    operator: Callable[[], OperatorThread],
    sentiment: dict[str, Any],
    looks: list[int],
) -> None:
    local_queue = KueueQueue(kube_emulator)
    operator()
    create_runtime(kube, runtime("kueue", queue={"kueueLocalQueue": "gpu-queue"}))
    kube.create(job(sentiment, "sentiment", "kueue", gpusPerWorker=1))
    ahead = [(f"other-{n}-workers", f"uid-other-{n}") for n in range(2100)]  # pages of 1000
    local_queue.wait(*ahead, worker_uid(kube, "sentiment"), cluster_queue_offsets=(0,) * 2101)

    placed = kube.wait_for_object("FineTuneJob", "sentiment", position_is(2101))

    assert running_message(placed) == (
        "waiting for Kueue to admit the worker Job: place 2101 in LocalQueue gpu-queue "
        "(2101 in ClusterQueue)"
    )
    requests = kube_emulator.request_counts()[PENDING_REQUESTS]
    # Three pages per look (the last one short), and the first look's v1beta2 request; the
    # looks are counted after the requests, so a look under way is counted.
    assert requests <= 3 * looks[0] + 1
