"""The heartbeat: throttled beats to heartbeat.json and the reporter, the report's patch
checked against the operator's model, the watchdog's rule on a beat's age."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kubetune_operator.api.v1alpha1 import TrainerReport
from kubetune_trainer.heartbeat import Heartbeat, read_heartbeat, write_heartbeat
from kubetune_trainer.report.progress import Beat, NullReporter, StatusReporter, heartbeat_patch
from kubetune_trainer.watchdog import StallWatchdog, duration_text
from tests.unit.trainer.report.test_progress import FakeClock


class Beats(NullReporter):
    """A reporter that keeps the beats it hears."""

    def __init__(self) -> None:
        self.beats: list[Beat] = []

    def heartbeat(self, beat: Beat) -> None:
        self.beats.append(beat)


def test_beats_in_one_phase_go_out_once_a_second_and_a_new_phase_at_once(tmp_path: Path) -> None:
    clock, sink, step = FakeClock(100.0), Beats(), [0]
    heartbeat = Heartbeat(
        tmp_path / "heartbeat.json", sink, lambda: step[0], enabled=True, clock=clock
    )
    for now, phase in [(100.0, "Training"), (100.5, "Training"), (100.6, "Evaluating"),
                       (100.9, "Evaluating"), (101.6, "Evaluating")]:  # fmt: skip
        clock.now, step[0] = now, step[0] + 1
        heartbeat.beat(phase)  # type: ignore[arg-type]

    assert [(b.time, b.phase, b.step) for b in sink.beats] == [
        (100.0, "Training", 1),
        (100.6, "Evaluating", 3),
        (101.6, "Evaluating", 5),
    ]
    assert read_heartbeat(tmp_path / "heartbeat.json") == Beat(101.6, "Evaluating", 5)


def test_other_ranks_do_not_beat(tmp_path: Path) -> None:
    sink = Beats()
    Heartbeat(tmp_path / "heartbeat.json", sink, lambda: 0, enabled=False).beat("Training")
    assert sink.beats == []
    assert not (tmp_path / "heartbeat.json").exists()


def test_a_file_that_is_not_a_beat_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.json"
    assert read_heartbeat(path) is None
    path.write_text('{"time": 1, "phase": "Dreaming", "step": 0}')
    assert read_heartbeat(path) is None


def test_the_reports_heartbeat_is_the_operators_model() -> None:
    patch = heartbeat_patch(Beat(1796655523.25, "Evaluating", 7))
    assert patch == {"heartbeat": {"time": "2026-12-07T14:58:43Z", "phase": "Evaluating"}}
    TrainerReport.model_validate(patch, by_name=False)


class ManualTimer:
    """Timers that fire when the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay_s: float, function: Callable[[], None]) -> Callable[[], None]:
        self.calls.append((delay_s, function))
        return lambda: self.calls.remove((delay_s, function))


class Patches:
    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.url = "fake"

    def patch(self, fields: dict[str, object]) -> None:
        self.bodies.append(dict(fields))


def test_a_beat_held_back_by_the_interval_goes_out_within_it_though_none_follows() -> None:
    clock, timers, client = FakeClock(), ManualTimer(), Patches()
    reporter = StatusReporter(client, clock=clock, schedule=timers)  # type: ignore[arg-type]
    reporter.heartbeat(Beat(1796655520.0, "Training", 1))
    clock.now = 2.0
    reporter.heartbeat(Beat(1796655522.0, "Saving", 1))  # then the run hangs
    assert len(client.bodies) == 1
    ((delay, send),) = timers.calls

    clock.now = 5.0
    send()

    assert delay == 3.0
    assert client.bodies[-1] == {"heartbeat": {"time": "2026-12-07T14:58:42Z", "phase": "Saving"}}
    for body in client.bodies:
        TrainerReport.model_validate(body, by_name=False)


def test_an_event_after_the_interval_sends_at_once_and_cancels_the_timer() -> None:
    clock, timers, client = FakeClock(), ManualTimer(), Patches()
    reporter = StatusReporter(client, clock=clock, schedule=timers)  # type: ignore[arg-type]
    reporter.heartbeat(Beat(10.0, "Training", 1))
    clock.now = 1.0
    reporter.heartbeat(Beat(11.0, "Training", 2))
    clock.now = 6.0
    reporter.heartbeat(Beat(16.0, "Training", 3))
    assert timers.calls == []
    assert [body["heartbeat"]["time"] for body in client.bodies] == [  # type: ignore[index]
        "1970-01-01T00:00:10Z",
        "1970-01-01T00:00:16Z",
    ]


def test_the_watchdog_counts_from_the_last_fresh_beat_or_the_start(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    watchdog = StallWatchdog(tmp_path, 40, lambda stall: None, clock=clock)
    write_heartbeat(tmp_path / "heartbeat.json", Beat(900.0, "Saving", 3))  # an earlier start's
    clock.now = 1039.0
    assert watchdog.check() is None
    clock.now = 1040.0
    stall = watchdog.check()
    assert stall is not None
    assert (stall.phase, stall.checkpoint) == (None, None)
    assert "since it started, before its first beat" in stall.describe()

    (tmp_path / "fold-2").mkdir()
    write_heartbeat(tmp_path / "fold-2/heartbeat.json", Beat(1030.0, "Evaluating", 9))
    assert watchdog.check() is None
    clock.now = 1075.0
    stall = watchdog.check()
    assert stall is not None
    assert stall.describe() == "no progress for 45 s while Evaluating (runPolicy.stallTimeout 40s)"


def test_timeouts_are_spelt_as_in_the_manifest() -> None:
    assert [duration_text(s) for s in (10, 90, 1800, 5400, 3600)] == [
        "10s",
        "1m30s",
        "30m",
        "1h30m",
        "1h",
    ]
