"""Signs of progress from the code that makes it: what tells a slow run from a stuck one.

A job can hang and burn its GPUs silently: a collective that never returns, a data loader
that deadlocks, a rank that stops while its pod stays Running. Rank 0 therefore beats each
time it makes progress: every optimizer step, each stage of data preparation, the load of
the tokenizer and the model, every evaluation and examination batch, each part of the
final examination, and before, between shards of and after every save. The beat comes from
the code that made the progress, never from a thread of its own: a thread would keep
beating while the main thread is stuck. The other ranks do not beat; one that stops makes
rank 0 wait in the next collective, and rank 0 stops beating then.

A beat goes to the run's Reporter (the job's report patches it as `heartbeat`, which the
operator judges against runPolicy.stallTimeout; Prometheus serves its time and phase) and
to `<output>/heartbeat.json`, `{"time": <Unix seconds>, "phase": ..., "step": N}`, which
the watchdog of a local run reads (watchdog.py). Beats in one phase go out at most once a
second (the report's own throttling, reporting.StatusReporter, sends at most one PATCH
every 5 s, and a held-back beat within 5 s); a new phase goes out at once, so a stall names
what the run was doing.

A model download cannot beat: the hub's client fetches each file in one call. Loading
beats before and after, so a download (and the load of a large model) must fit in the
stall timeout, 30 minutes by default; a job that downloads a very large model raises
runPolicy.stallTimeout, or better, reads its model from a volume.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from kubetune_trainer.report.progress import PHASES, Beat, Phase, Reporter

logger = logging.getLogger(__name__)

HEARTBEAT_FILE: Final = "heartbeat.json"
MIN_INTERVAL_S: Final = 1.0
"""Beats in one phase closer together than this are dropped (the next one tells as much)."""


class Heartbeat:
    """Rank 0's beats to its reporter and heartbeat.json; nothing on the other ranks."""

    def __init__(
        self,
        path: Path,
        reporter: Reporter,
        step: Callable[[], int],
        *,
        enabled: bool,
        clock: Callable[[], float] = time.time,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        """`step`: the optimizer steps done, asked at each beat that goes out."""
        self.path = path
        self._reporter = reporter
        self._step = step
        self._enabled = enabled
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._last: Beat | None = None
        self._file_failed = False

    def beat(self, phase: Phase) -> None:
        """Progress now, in `phase`."""
        if not self._enabled:
            return
        now = self._clock()
        last = self._last
        if last is not None and last.phase == phase and now - last.time < self._min_interval_s:
            return
        beat = Beat(now, phase, self._step())
        self._last = beat
        self._write(beat)
        self._reporter.heartbeat(beat)

    def _write(self, beat: Beat) -> None:
        """heartbeat.json, atomically; a disk that refuses it never stops training."""
        try:
            write_heartbeat(self.path, beat)
        except OSError as error:
            if not self._file_failed:
                logger.warning(
                    "%s not written (%s): a local watchdog sees no progress", self.path, error
                )
            self._file_failed = True


def write_heartbeat(path: Path, beat: Beat) -> None:
    """`beat` as heartbeat.json: written beside it, then renamed over it, so a reader never
    sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(
        json.dumps({"time": beat.time, "phase": beat.phase, "step": beat.step}), encoding="utf-8"
    )
    os.replace(partial, path)


def read_heartbeat(path: Path) -> Beat | None:
    """The beat in heartbeat.json; None when there is none or it is not one."""
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        beat = Beat(float(fields["time"]), fields["phase"], int(fields["step"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return beat if beat.phase in PHASES else None
