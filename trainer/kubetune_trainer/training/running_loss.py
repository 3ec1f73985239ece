"""The training loss and metrics a run accumulates between its logs.

Every batch adds to the log window on the device, so nothing waits for the GPU; the window
is closed at every logged step, its mean reduced across processes with the stop flags
(stop_guard.py). Metrics that another part of the run measures per batch (a preference
run's rewards, training/preferences.py) open and close their windows with it
(`ExtraMetrics`). The training side of the generalization gap is not a running metric: each
evaluation scores a fixed sample of training rows (loaders.training_sample).
"""

from __future__ import annotations

from typing import Protocol

import torch


class ExtraMetrics(Protocol):
    """Training metrics besides the loss, with a log window of their own."""

    def open_windows(self) -> None:
        """Forget what came before: the log window starts empty."""

    def close_log_window(self) -> dict[str, float]:
        """The metrics since the last log, over every process."""


class RunningLoss:
    """One process's loss sum since the last log; and the log window of `extra` metrics."""

    def __init__(self, device: torch.device, extra: ExtraMetrics | None = None) -> None:
        self.device = device
        self.extra = extra
        if extra is not None:
            extra.open_windows()
        self._log_sum = torch.zeros((), device=device)
        self._log_batches = 0

    def add(self, loss: torch.Tensor) -> None:
        """A batch's loss (on the device)."""
        self._log_sum = self._log_sum + loss.detach().float()
        self._log_batches += 1

    def close_extra_log_window(self) -> dict[str, float]:
        """The extra metrics since the last log ({} for none), and a new window."""
        return {} if self.extra is None else self.extra.close_log_window()

    def close_log_window(self) -> torch.Tensor:
        """This process's mean loss since the last log (0 for none), and a new window."""
        mean = self._log_sum / max(self._log_batches, 1)
        self._log_sum = torch.zeros((), device=self.device)
        self._log_batches = 0
        return mean
