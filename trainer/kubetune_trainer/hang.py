"""A test hook: KUBETUNE_TEST_HANG makes a run really hang, once per output directory.

Stall watchdogs (watchdog.py for `kubetune run`, the operator's runPolicy.stallTimeout)
are tested against real hangs, not mocks, so the hook ships with the trainer. Unset, it
does nothing: no run in production sets it. Its values:

- `collective`: at optimizer step 2 rank 1 stops for good (sleeps), so rank 0 blocks in
  the next gradient all-reduce, a real collective. A run of one process has no collective
  to block in: its only process stops there itself, which a watchdog sees alike (no beat).
- `dataloader`: the training batch iterator blocks for good when producing batch 3 (on
  every process).
- `evaluation`: the evaluation loop blocks for good at its first batch (every process).
- `slow-evaluation[:SECONDS]`: every evaluation batch sleeps SECONDS (3 by default), then
  beats as usual: a slow run that is alive, which no watchdog may stop.

Before it hangs, a process writes the marker `<output>/.kubetune-test-hang`; a start that
finds it does not hang again, so the same run, resumed from its checkpoint, finishes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar, get_args

HANG_ENV: Final = "KUBETUNE_TEST_HANG"
MARKER: Final = ".kubetune-test-hang"
Kind = Literal["collective", "dataloader", "evaluation", "slow-evaluation"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
SLOW_BATCH_S: Final = 3.0
COLLECTIVE_STEP: Final = 2
DATALOADER_BATCH: Final = 3

T = TypeVar("T")


@dataclass
class HangHook:
    """What KUBETUNE_TEST_HANG asks of this process; `kind` None: nothing."""

    kind: Kind | None
    marker: Path
    seconds: float = SLOW_BATCH_S

    @classmethod
    def from_env(cls, env: Mapping[str, str], output_dir: Path) -> HangHook:
        """The hook KUBETUNE_TEST_HANG names; none once this output directory has hung.
        ValueError for a value it does not know."""
        kind, _, seconds = env.get(HANG_ENV, "").partition(":")
        marker = output_dir / MARKER
        if not kind or (kind != "slow-evaluation" and marker.exists()):
            return cls(None, marker)
        if kind not in KINDS or (seconds and kind != "slow-evaluation"):
            raise ValueError(
                f"{HANG_ENV}={env[HANG_ENV]!r}: a test hook; one of {', '.join(KINDS)} "
                "(slow-evaluation:SECONDS)"
            )
        return cls(kind, marker, float(seconds) if seconds else SLOW_BATCH_S)

    def at_optimizer_step(self, step: int, rank: int, processes: int) -> None:
        """`collective`: the process that stops (rank 1, or the only one) stops at step 2."""
        if self.kind == "collective" and step == COLLECTIVE_STEP and rank == min(1, processes - 1):
            self._hang()

    def training_batches(self, batches: Iterable[T]) -> Iterator[T]:
        """`batches`; with `dataloader`, blocking for good before the third."""
        for produced, batch in enumerate(batches, start=1):
            if self.kind == "dataloader" and produced == DATALOADER_BATCH:
                self._hang()
            yield batch

    def after_evaluation_batch(self) -> None:
        """`evaluation`: block at the first batch; `slow-evaluation`: sleep after each."""
        if self.kind == "evaluation":
            self._hang()
        if self.kind == "slow-evaluation":
            time.sleep(self.seconds)

    def _hang(self) -> None:
        self.marker.write_text(f"{self.kind}\n", encoding="utf-8")
        while True:  # signals still run their handlers; nothing ends this but a kill
            time.sleep(3600)
