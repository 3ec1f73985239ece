"""The training speed a run logs: samples/s, tokens/s and MFU per logging window.

Between two logged steps each process counts the batches it trained on, from their shapes
on the host (flops.py's `ThroughputCounts`), so counting never waits for the device. A
logged step closes the window, and the closed windows add up to this start's mean speed,
which the report shows. MFU needs the device's peak and the model's shape; `mfu_basis`
finds both or neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from kubetune_trainer.flops import (
    ModelShape,
    Throughput,
    ThroughputCounts,
    device_peak,
    shape_from_config,
)


def mfu_basis(
    model: torch.nn.Module, device: torch.device, *, causal_lm: bool
) -> tuple[float | None, ModelShape | None]:
    """The device's peak and the model's shape, both needed for MFU: known on a GPU in
    flops.py's table for a model whose config names its sizes, else (None, None), and
    MFU is never estimated (flops.py says what the count leaves out, LoRA among it)."""
    peak = device_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if peak is None:
        return None, None
    try:  # a LoRA model hands its base model's config on
        shape = shape_from_config(getattr(model, "config", None), causal_lm=causal_lm)
    except ValueError:
        return None, None
    return peak.bf16_flops, shape


class ThroughputMeter:
    """One process's logging windows and this start's total, as the speed of all processes."""

    def __init__(
        self,
        processes: int,
        gpus: int,
        peak_flops: float | None = None,
        shape: ModelShape | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.processes = processes
        self.gpus = gpus
        self.peak_flops = peak_flops
        self.shape = shape
        self._clock = clock
        self._window = ThroughputCounts()
        self._run = ThroughputCounts()
        """This start's closed windows together: the report's mean tokens/s and MFU."""
        self._window_started = clock()

    def add_batch(self, rows: int, width: int) -> None:
        """A batch of `rows` sequences padded to `width` tokens, trained on in this window."""
        self._window.add_batch(rows, width, self.shape)

    def close_window(self) -> Throughput:
        """The speed since the window opened (counted into this start's total)."""
        self._window.seconds = self._clock() - self._window_started
        self._run.add(self._window)
        return self._window.throughput(self.processes, self.peak_flops, self.gpus)

    def open_window(self) -> None:
        """Count from now: after a logged step, once its record is out."""
        self._window = ThroughputCounts()
        self._window_started = self._clock()

    def run_throughput(self) -> dict[str, float | None]:
        """This start's mean tokens/s and MFU over its closed windows, for the report; None
        for both when it logged no step (a start that found the training done)."""
        if self._run.tokens == 0:
            return {"tokensPerSecond": None, "mfu": None}
        throughput = self._run.throughput(self.processes, self.peak_flops, self.gpus)
        return {"tokensPerSecond": throughput.tokens_per_second, "mfu": throughput.mfu}
