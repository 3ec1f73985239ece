"""kueue.py and the Queued status built from it: Kueue's pending Workloads mapped to jobs.

The summaries are shaped as Kueue's visibility API answers them (PendingWorkloadsSummary,
positions counted from 0, the owning Job in each item's ownerReferences): two LocalQueues,
`team-a/gpus` and `team-b/gpus`, feed one ClusterQueue, so the ClusterQueue positions of
one LocalQueue's items interleave with the other's.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator import kueue
from kubetune_operator.status import observe
from tests.unit.operator.test_status import (
    NOW,
    applied,
    assert_fits_model,
    conditions_of,
    finetunejob,
    pod,
    worker_job,
)


def pending(
    name: str, namespace: str, queue: str, job_uid: str | None, in_lq: int, in_cq: int
) -> dict[str, Any]:
    """One PendingWorkload; `job_uid` None: a Workload the API lists without an owner."""
    metadata: dict[str, Any] = {
        "name": f"job-{name}-5f1a3",
        "namespace": namespace,
        "creationTimestamp": "2025-03-01T11:00:00Z",
    }
    if job_uid is not None:
        metadata["ownerReferences"] = [
            {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job_uid}
        ]
    return {
        "metadata": metadata,
        "priority": 0,
        "localQueueName": queue,
        "positionInClusterQueue": in_cq,
        "positionInLocalQueue": in_lq,
    }


def summary(*items: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "PendingWorkloadsSummary",
        "apiVersion": "visibility.kueue.x-k8s.io/v1beta1",
        "metadata": {"creationTimestamp": None},
        "items": list(items),
    }


# ClusterQueue order: a-first, b-first, a-llama, a-other (not kubetune's), b-bert.
TEAM_A = summary(
    pending("a-first-workers", "team-a", "gpus", "uid-a1", 0, 0),
    pending("a-llama-workers", "team-a", "gpus", "uid-a2", 1, 2),
    pending("a-other", "team-a", "gpus", "uid-other", 2, 3),
)
TEAM_B = summary(
    pending("b-first-workers", "team-b", "gpus", "uid-b1", 0, 1),
    pending("b-bert-workers", "team-b", "gpus", "uid-b2", 1, 4),
)


def test_each_listed_job_gets_its_places_counted_from_one() -> None:
    jobs = {"uid-a1": ("team-a", "a-first"), "uid-a2": ("team-a", "a-llama")}
    assert kueue.places(TEAM_A, jobs) == {
        ("team-a", "a-first"): kueue.Place("gpus", 1, 1),
        ("team-a", "a-llama"): kueue.Place("gpus", 2, 3),
    }


def test_two_local_queues_of_one_cluster_queue_keep_their_own_local_places() -> None:
    jobs = {
        "uid-a2": ("team-a", "a-llama"),
        "uid-b1": ("team-b", "b-first"),
        "uid-b2": ("team-b", "b-bert"),
    }
    found = kueue.places(TEAM_A, jobs) | kueue.places(TEAM_B, jobs)
    assert found == {
        ("team-a", "a-llama"): kueue.Place("gpus", 2, 3),
        ("team-b", "b-first"): kueue.Place("gpus", 1, 2),
        ("team-b", "b-bert"): kueue.Place("gpus", 2, 5),
    }


def test_a_job_the_summary_does_not_list_has_no_place() -> None:
    jobs = {"uid-a1": ("team-a", "a-first"), "uid-admitted": ("team-a", "admitted")}
    assert ("team-a", "admitted") not in kueue.places(TEAM_A, jobs)
    assert kueue.places(summary(), jobs) == {}


def test_the_job_is_found_by_uid_so_an_old_groups_workload_is_not_taken_for_the_new_one() -> None:
    """A restarted group's Job has the old Job's name; only the uid tells them apart."""
    stale = summary(pending("sentiment-workers", "ml", "gpus", "uid-restart-0", 0, 0))
    assert kueue.places(stale, {"uid-restart-1": ("ml", "sentiment")}) == {}


def test_items_without_an_owner_or_positions_are_skipped() -> None:
    unowned = pending("a-first-workers", "team-a", "gpus", None, 0, 0)
    unplaced = pending("a-llama-workers", "team-a", "gpus", "uid-a2", 1, 2)
    del unplaced["positionInLocalQueue"]
    jobs = {"uid-a1": ("team-a", "a-first"), "uid-a2": ("team-a", "a-llama")}
    assert kueue.places(summary(unowned, unplaced), jobs) == {}
    assert kueue.places({"kind": "Status"}, jobs) == {}


# The memory between ticks.


def test_the_next_page_is_read_only_after_a_full_page_with_jobs_still_unplaced() -> None:
    full = summary(
        *(pending(f"w{n}", "team-a", "gpus", f"uid-{n}", n, n) for n in range(kueue.PAGE_SIZE))
    )
    assert kueue.more_to_read(full, found=0, waiting=1)
    assert not kueue.more_to_read(full, found=1, waiting=1)  # every waiting job placed
    assert not kueue.more_to_read(TEAM_A, found=0, waiting=1)  # the last page


def test_a_queue_whose_api_does_not_answer_rests_then_is_asked_again() -> None:
    memory = kueue.Visibility()
    queue, other = ("team-a", "gpus"), ("team-b", "gpus")
    assert memory.due([queue, other, queue]) == [queue, other]
    assert memory.unanswered(queue) is True
    asked = [memory.due([queue, other]) for _ in range(kueue.REST_TICKS)]
    assert asked == [[other]] * kueue.REST_TICKS
    assert memory.due([queue, other]) == [queue, other]
    assert memory.unanswered(queue) is False  # reported once


# The Queued status with and without a place.


def kueue_job(*, suspend: bool = True) -> dict[str, Any]:
    job = worker_job(suspend=suspend, start_time=None if suspend else "2025-03-01T11:00:00Z")
    job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "gpus"
    return job


def observed(ftj: dict[str, Any], job: dict[str, Any], pods: list[Any], place: Any) -> Any:
    update = observe(
        ftj, job, pods, now=NOW, backoff_limit=3, active_deadline_seconds=None, kueue_place=place
    )
    assert_fits_model(ftj, update.patch)
    return update


def test_a_job_waiting_for_kueue_shows_its_place_and_loses_it_when_admitted() -> None:
    place = kueue.Place("gpus", 2, 5)
    queued = observed(finetunejob(), kueue_job(), [], place)
    assert queued.patch["phase"] == "Queued"
    assert queued.patch["queuePosition"] == 2
    running = conditions_of(queued.patch)["Running"]
    assert (running["status"], running["reason"]) == ("False", "Queued")
    assert running["message"] == (
        "waiting for Kueue to admit the worker Job: place 2 in LocalQueue gpus (5 in ClusterQueue)"
    )

    moved = observed(
        applied(finetunejob(), queued.patch), kueue_job(), [], kueue.Place("gpus", 1, 3)
    )
    assert moved.patch["queuePosition"] == 1
    assert moved.events == []  # a new place is no transition

    admitted = observed(
        applied(finetunejob(), {**queued.patch, **moved.patch}),
        kueue_job(suspend=False),
        [pod(0), pod(1)],
        None,
    )
    assert admitted.patch["phase"] == "Running"
    assert admitted.patch["queuePosition"] is None  # the merge patch deletes it


def test_without_a_place_the_queued_message_is_the_one_without_the_visibility_api() -> None:
    update = observed(finetunejob(), kueue_job(), [], None)
    assert update.patch["phase"] == "Queued"
    assert "queuePosition" not in update.patch
    assert conditions_of(update.patch)["Running"]["message"] == (
        "waiting for Kueue to admit the worker Job from LocalQueue gpus; its place in the "
        "queue: kubectl get workloads -n ml"
    )
