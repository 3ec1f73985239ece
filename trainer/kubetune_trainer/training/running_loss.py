"""The training loss and metrics a run accumulates between its logs and its evaluations.

Every batch adds to two windows on the device, so nothing waits for the GPU: the log
window (closed at every logged step, its mean reduced across processes with the stop
flags, stop_guard.py) and the interval since the last evaluation (closed by the next one,
as the training metrics beside the validation metrics: the over/underfitting gap).
Metrics that another part of the run measures per batch (a preference run's rewards,
training/preferences.py) open and close their windows with these (`ExtraMetrics`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator

from kubetune_trainer.metrics import classification_metrics, language_model_metrics


class ExtraMetrics(Protocol):
    """Training metrics besides the loss, with windows of their own."""

    def open_windows(self) -> None:
        """Forget what came before: the log and interval windows start empty."""

    def close_log_window(self) -> dict[str, float]:
        """The metrics since the last log, over every process."""

    def close_interval(self, train_metrics: dict[str, float]) -> dict[str, float]:
        """`train_metrics` (the running loss's since the last evaluation) with these metrics
        over the same interval."""


class RunningLoss:
    """One process's loss sums, and a classifier's predictions, since the last log and
    since the last evaluation; and the windows of `extra` metrics, if any."""

    def __init__(self, device: torch.device, extra: ExtraMetrics | None = None) -> None:
        self.device = device
        self.extra = extra
        if extra is not None:
            extra.open_windows()
        self._log_sum = torch.zeros((), device=device)
        self._log_batches = 0
        self._interval_sum = torch.zeros((), device=device)
        self._interval_batches = 0
        self._predictions: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def add(
        self, loss: torch.Tensor, predictions: torch.Tensor | None, labels: torch.Tensor | None
    ) -> None:
        """A batch's loss, and a classifier's predicted and true labels (on the device)."""
        self._log_sum = self._log_sum + loss.detach().float()
        self._log_batches += 1
        self._interval_sum = self._interval_sum + loss.detach().float()
        self._interval_batches += 1
        if predictions is not None and labels is not None:
            self._predictions.append(predictions)
            self._labels.append(labels)

    def close_extra_log_window(self) -> dict[str, float]:
        """The extra metrics since the last log ({} for none), and a new window."""
        return {} if self.extra is None else self.extra.close_log_window()

    def close_log_window(self) -> torch.Tensor:
        """This process's mean loss since the last log (0 for none), and a new window."""
        mean = self._log_sum / max(self._log_batches, 1)
        self._log_sum = torch.zeros((), device=self.device)
        self._log_batches = 0
        return mean

    def close_interval(
        self, accelerator: Accelerator, *, classes: int | None, language_model: bool
    ) -> dict[str, float]:
        """Training metrics since the last evaluation over every process ({} when no batch
        trained since), and a new interval. `classes`: the classifier's, if known."""
        metrics = self._interval_metrics(accelerator, classes, language_model)
        if self.extra is not None:
            metrics = self.extra.close_interval(metrics)
        self._interval_sum = torch.zeros((), device=self.device)
        self._interval_batches = 0
        self._predictions, self._labels = [], []
        return metrics

    def _interval_metrics(
        self, accelerator: Accelerator, classes: int | None, language_model: bool
    ) -> dict[str, float]:
        if not self._interval_batches:
            return {}
        loss = accelerator.reduce(self._interval_sum / self._interval_batches, "mean")
        if language_model:
            return language_model_metrics(float(loss.item()))
        predictions = gather_uneven(accelerator, torch.cat(self._predictions))
        labels = gather_uneven(accelerator, torch.cat(self._labels))
        keep = labels >= 0
        predictions, labels = predictions[keep], labels[keep]
        width = classes if classes is not None else int(labels.max()) + 1
        one_hot = np.eye(width)[predictions]
        metrics = classification_metrics(labels, one_hot, float(loss.item()))
        metrics.pop("rocAuc", None)
        return metrics


def gather_uneven(accelerator: Accelerator, values: torch.Tensor) -> np.ndarray:
    """Gather 1-d tensors whose lengths differ between processes (padding with -1)."""
    padded = accelerator.pad_across_processes(values, pad_index=-1)
    gathered: torch.Tensor = accelerator.gather(padded)
    return gathered.cpu().numpy()
