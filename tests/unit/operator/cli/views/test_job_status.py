"""The pure rendering of `kubetune status`: durations, progress, workers, Events, escaping."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from kubetune_operator.cli.views import job_status

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def rendered(job: dict[str, object], events: list[dict[str, object]] | None = None) -> str:
    console = Console(width=120, record=True, file=io.StringIO())
    for part in job_status.renderables(job, events or [], NOW):
        console.print(part)
    return console.export_text()


def test_durations_are_short_and_human() -> None:
    assert [job_status.duration_text(s) for s in (0, 45, 725, 11_220, 187_200, -3)] == [
        "0s",
        "45s",
        "12m 05s",
        "3h 07m",
        "2d 04h",
        "0s",
    ]
    assert job_status.age_text("2025-03-01T11:58:30Z", NOW) == "1m 30s"
    assert job_status.age_text("not a time", NOW) == "\u2013"


def test_progress_leaves_out_what_is_not_known_yet() -> None:
    assert job_status.progress_text({}) == "\u2013"
    assert job_status.progress_text({"epoch": 1, "epochs": 3}) == "epoch 1/3"
    full = {"epoch": 2, "epochs": 3, "step": 1500, "totalSteps": 3000, "percent": 50}
    assert job_status.progress_text(full | {"etaSeconds": 3725}) == (
        "epoch 2/3  step 1,500/3,000 (50%)  ETA 1h 02m"
    )


def test_workers_and_the_last_failure() -> None:
    status = {"workers": {"running": 3, "pending": 1, "failed": 0}, "restarts": 2}
    assert job_status.workers_text(status) == "3 running, 1 pending; restarts 2"
    assert job_status.workers_text({}) == "none yet; restarts 0"
    assert job_status.last_failure_text({"reason": "WorkerFailed", "restart": 1}) == (
        "WorkerFailed (worker group 1)"
    )


def test_recent_events_are_the_last_ones_by_time_whatever_the_field() -> None:
    events = [
        {"reason": "C", "lastTimestamp": "2025-03-01T11:00:03Z"},
        {"reason": "A", "eventTime": "2025-03-01T11:00:01.000000Z"},
        {"reason": "D", "metadata": {"creationTimestamp": "2025-03-01T11:00:04Z"}},
        {"reason": "B", "lastTimestamp": "2025-03-01T11:00:02Z"},
        {"reason": "timeless"},
    ]
    assert [e["reason"] for e in job_status.recent_events(events, 3)] == ["B", "C", "D"]
    assert job_status.recent_events(events, 5)[0]["reason"] == "timeless"
    assert job_status.recent_events(events, 0) == []


def test_an_event_repeated_shows_its_count() -> None:
    event = {"lastTimestamp": "2025-03-01T11:59:00Z", "count": 4}
    assert job_status.age_text_of_event(event, NOW) == "1m 00s (x4)"


def test_a_job_the_operator_has_not_seen_shows_only_its_name() -> None:
    text = rendered({"metadata": {"name": "sentiment", "namespace": "ml"}})
    assert "FineTuneJob ml/sentiment  not seen by the operator yet" in text
    assert "none yet; restarts 0" in text
    for section in ("conditions", "metrics", "events"):
        assert section not in text


def test_strings_from_the_cluster_are_not_markup() -> None:
    job = {
        "metadata": {"name": "x", "namespace": "ml"},
        "status": {
            "phase": "Failed",
            "diagnosis": {"verdict": "Diverged", "suggestion": "[red]lower[/red] the rate"},
            "trials": [
                {"name": "x-trial-0", "state": "Complete"},
                {"name": "x-trial-1", "state": "Complete"},
                {"name": "x-trial-2", "state": "Pruned"},
            ],
            "bestTrial": {"name": "x-trial-1", "objective": 0.9123},
        },
    }
    text = rendered(job, [{"reason": "Bad", "message": "[bold]boom[/]", "type": "Warning"}])
    assert "Diverged: [red]lower[/red] the rate" in text
    assert "[bold]boom[/]" in text
    assert "trials  3: 2 complete, 1 pruned; best x-trial-1 (0.9123)" in text


def test_a_queued_job_shows_its_place_and_the_runtime_it_runs_with() -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    job = {
        "metadata": {"name": "big", "namespace": "ml"},
        "status": {
            "phase": "Queued",
            "queuePosition": 2,
            "runtime": {"kind": "ClusterFineTuneRuntime", "name": "a100", "generation": 3},
            "effectiveSpecHash": digest,
        },
    }
    text = rendered(job)
    assert "FineTuneJob ml/big  Queued" in text
    assert "queue position  2" in text
    assert (
        "runtime         ClusterFineTuneRuntime a100 (generation 3), spec sha256:0123456789ab"
        in text
    )
