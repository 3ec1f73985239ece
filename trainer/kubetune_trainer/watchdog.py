"""The stall watchdog of a run without a cluster: no progress for stallTimeout ends it.

A hung run (a collective that never returns, a deadlocked data loader) keeps its processes
alive and its GPUs busy while nothing moves, and nothing fails. In a cluster the operator
judges the report's heartbeat; a run of `kubetune run` has no operator, so the process that
started the trainers watches their heartbeat.json (heartbeat.py) instead: the launcher
(launch.py) when it is given KUBETUNE_STALL_TIMEOUT_SECONDS and the trainer's --output,
`kubetune run` itself for a run in its own process. The rule is the operator's: when
neither a beat nor the run's start is newer than runPolicy.stallTimeout, the run is stuck.

A stuck process will not save a checkpoint, so it gets SIGTERM and, after KILL_GRACE_S,
SIGKILL; the run continues from its last checkpoint when started again. The watchdog writes
report.json (outcome "stalled", with what it saw) since the trainer cannot, and the run
ends with EXIT_STALLED. A slow run that still beats is never stopped: only the time since
its last beat counts. Only heartbeat.json files count: a beat of an earlier start, older
than this one, does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil

from kubetune_trainer.checkpoints import CHECKPOINTS, latest_checkpoint
from kubetune_trainer.heartbeat import HEARTBEAT_FILE, read_heartbeat
from kubetune_trainer.report.progress import Beat

STALL_TIMEOUT_ENV: Final = "KUBETUNE_STALL_TIMEOUT_SECONDS"
"""runPolicy.stallTimeout in seconds, for the launcher (`kubetune run` sets it)."""
KILL_GRACE_S: Final = 5.0
"""Between SIGTERM and SIGKILL: a stuck process saves nothing, so the grace is short."""
STALLED: Final = "stalled"
"""report.json's outcome for a run its watchdog stopped (a checkpoint, if any, is kept)."""
REPORT_FILE: Final = "report.json"


def duration_text(seconds: float) -> str:
    """Seconds as runPolicy.stallTimeout spells them: 40s, 30m, 1h30m."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{value}{unit}" for value, unit in parts if value) or "0s"


@dataclass(frozen=True)
class Stall:
    """What the watchdog saw when it stopped a run."""

    seconds: float
    """Since the last sign of progress (or the start, before the first one)."""
    phase: str | None
    """The phase of the last beat; None when the run never beat since it started."""
    step: int | None
    timeout_s: float
    checkpoint: Path | None
    """The newest checkpoint, the one the run continues from."""

    def describe(self) -> str:
        """no progress for 45 s while Evaluating (runPolicy.stallTimeout 40s)"""
        doing = f"while {self.phase}" if self.phase else "since it started, before its first beat"
        return (
            f"no progress for {self.seconds:.0f} s {doing} "
            f"(runPolicy.stallTimeout {duration_text(self.timeout_s)})"
        )

    def continuation(self) -> str:
        """Where the next start begins."""
        if self.checkpoint is None:
            return "it saved no checkpoint, so the next start begins again"
        return f"the next start continues from its last checkpoint {self.checkpoint}"

    def verdict(self, again: str) -> str:
        """The line that ends a stopped run, `again` being the command that continues it."""
        if self.checkpoint is None:
            return (
                f"{self.describe()}: the run was stopped; it saved no checkpoint, "
                f"so {again} starts it over"
            )
        return (
            f"{self.describe()}: the run was stopped; continue from its last checkpoint "
            f"{self.checkpoint} with: {again}"
        )

    def to_report(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "phase": self.phase,
            "step": self.step,
            "stallTimeoutSeconds": self.timeout_s,
            "lastCheckpoint": str(self.checkpoint) if self.checkpoint else "",
        }


def stall_from_report(report: Mapping[str, Any]) -> Stall | None:
    """The stall that write_stalled_report recorded in report.json; None without one."""
    seen = report.get("stall")
    if report.get("outcome") != STALLED or not isinstance(seen, Mapping):
        return None
    checkpoint = seen.get("lastCheckpoint")
    return Stall(
        seconds=float(seen["seconds"]),
        phase=seen.get("phase"),
        step=seen.get("step"),
        timeout_s=float(seen["stallTimeoutSeconds"]),
        checkpoint=Path(checkpoint) if checkpoint else None,
    )


def stall_timeout(env: Mapping[str, str]) -> float | None:
    """KUBETUNE_STALL_TIMEOUT_SECONDS; None when unset (no watchdog). ValueError when it is
    not a positive number."""
    text = env.get(STALL_TIMEOUT_ENV)
    if text is None:
        return None
    seconds = float(text)
    if not seconds > 0:
        raise ValueError(f"{STALL_TIMEOUT_ENV} must be a positive number of seconds, not {text}")
    return seconds


def last_beat(output_dir: Path) -> Beat | None:
    """The newest beat in the output directory or a folder in it (cross-validation's folds
    beat in fold-<n>/)."""
    paths = [output_dir / HEARTBEAT_FILE, *output_dir.glob(f"*/{HEARTBEAT_FILE}")]
    beats = [beat for beat in map(read_heartbeat, paths) if beat is not None]
    return max(beats, key=lambda beat: beat.time, default=None)


class StallWatchdog:
    """A thread that calls `on_stall` once when the run in `output_dir` made no progress
    for `timeout_s`, counted from `started` before the first beat."""

    def __init__(
        self,
        output_dir: Path,
        timeout_s: float,
        on_stall: Callable[[Stall], None],
        *,
        started: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.output_dir = output_dir
        self.timeout_s = timeout_s
        self._on_stall = on_stall
        self._clock = clock
        self._started = clock() if started is None else started
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self.stall: Stall | None = None

    def start(self) -> StallWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No more checks (the run ended); waits for a stop under way to finish."""
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def check(self) -> Stall | None:
        """The stall, if the run is stalled now."""
        beat = last_beat(self.output_dir)
        fresh = beat if beat is not None and beat.time >= self._started else None
        since = self._started if fresh is None else fresh.time
        seconds = self._clock() - since
        if seconds < self.timeout_s:
            return None
        return Stall(
            seconds=seconds,
            phase=None if fresh is None else fresh.phase,
            step=None if fresh is None else fresh.step,
            timeout_s=self.timeout_s,
            checkpoint=latest_checkpoint(self.output_dir / CHECKPOINTS),
        )

    def _watch(self) -> None:
        poll_s = min(1.0, self.timeout_s / 10)
        while not self._done.wait(poll_s):
            stall = self.check()
            if stall is not None:
                self.stall = stall
                self._on_stall(stall)
                return


def end_child_processes(grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM to every process this one started (and theirs), SIGKILL to those left after
    `grace_s`: what a launcher does to its stuck trainers."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, left = psutil.wait_procs(children, timeout=grace_s)
    for child in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def write_stalled_report(output_dir: Path, job_name: str, stall: Stall) -> None:
    """report.json of the stopped run, which the stuck trainer could not write: outcome
    "stalled", the message, what the watchdog saw and the checkpoint to continue from.
    Written beside it and renamed, so that a reader never sees half of it."""
    report = {
        "job": job_name,
        "succeeded": False,
        "outcome": STALLED,
        "message": f"{stall.describe()}: stopped; {stall.continuation()}",
        "steps": stall.step,
        "stall": stall.to_report(),
        "artifacts": {"lastCheckpoint": str(stall.checkpoint) if stall.checkpoint else ""},
    }
    partial = output_dir / f".{REPORT_FILE}.partial"
    partial.write_text(json.dumps(report, indent=2), encoding="utf-8")
    os.replace(partial, output_dir / REPORT_FILE)
