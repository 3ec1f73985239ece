"""Whether a run stops before its last step, with a checkpoint to continue from.

Two things stop it so: a stop signal (SIGTERM: Kubernetes stopping the pod; SIGINT:
Ctrl-C in a terminal) and a spent GPU budget. A signal handler runs between bytecodes of
the main thread, so it only sets a flag here; the flags travel in the collective that
already reduces the logged loss (`reduce_logged_loss`), so every process stops at the same
logged step and the check costs no extra sync. In the final phase, which logs no step, the
processes agree on the signal flag alone (`stop_agreed`) at the same points.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType

import torch
from accelerate import Accelerator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""What asks a run to stop with a checkpoint: Kubernetes stopping a pod, Ctrl-C in a terminal."""
CTRL_C_NOTICE = (
    "Ctrl-C: stopping at the next logged step with a checkpoint "
    "(Ctrl-C again to stop at once, without one)"
)


class StopGuard:
    """The stop flags of one training run: this process's signal, and what all agreed."""

    def __init__(
        self, accelerator: Accelerator, env: Mapping[str, str], say: Callable[[str], None]
    ) -> None:
        """`say` prints on rank 0 (the Ctrl-C notice); `env` tells a launcher apart (LOCAL_RANK)."""
        self.accelerator = accelerator
        self.env = env
        self.say = say
        self.signal: str | None = None
        """The signal that asked this process to stop, SIGTERM or SIGINT; None until one comes."""
        self.budget_spent = False
        """Some process found the GPU budget spent at the last logged step."""
        self.interrupted = False
        """Some process was asked to stop: every process stops at this logged step (or part
        of the final phase)."""

    @property
    def asked(self) -> bool:
        """Whether this process got a stop signal."""
        return self.signal is not None

    @property
    def stopping_early(self) -> bool:
        """Stopped by the budget or by a signal: the run is to continue from a checkpoint."""
        return self.budget_spent or self.interrupted

    @property
    def resumable_interruption(self) -> bool:
        """Interrupted by a signal and not by the budget, whose stop is final."""
        return self.interrupted and not self.budget_spent

    @contextmanager
    def flagging_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT only set a flag inside (the previous handlers come back after).
        Signal handlers can only be set in the main thread: elsewhere nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self.on_signal) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Flag the stop. A second Ctrl-C without a launcher stops at once; under a launcher
        the second SIGINT is torch's elastic agent passing the first one on."""
        ctrl_c = signum == signal.SIGINT
        if ctrl_c and self.signal == "SIGINT" and "LOCAL_RANK" not in self.env:
            raise KeyboardInterrupt
        first = self.signal is None
        self.signal = signal.Signals(signum).name
        if ctrl_c and first:
            self.say(CTRL_C_NOTICE)

    def reduce_logged_loss(self, local_loss: torch.Tensor, over_budget_here: bool) -> float:
        """The mean of `local_loss` over every process; records whether any process found the
        budget spent or was asked to stop. One collective, so that all stop at one step."""
        flags = torch.tensor(
            [float(over_budget_here), float(self.asked)], device=self.accelerator.device
        )
        local = torch.cat([local_loss.reshape(1), flags])
        loss, over_budget_share, stop_share = self.accelerator.reduce(local, "mean").tolist()
        self.budget_spent, self.interrupted = over_budget_share > 0, stop_share > 0
        return float(loss)

    def stop_agreed(self) -> bool:
        """Whether any process was asked to stop; once true it stays true. A collective: every
        process asks at the same points of the final phase."""
        if not self.interrupted:
            flag = torch.tensor(float(self.asked), device=self.accelerator.device)
            self.interrupted = bool(self.accelerator.reduce(flag, "sum").item() > 0)
        return self.interrupted
