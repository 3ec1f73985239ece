"""`python -m kubetune_trainer.launch ARGS`: `accelerate launch ARGS` that passes SIGTERM on.

Kubernetes stops a pod (suspend, Kueue preemption, eviction, node drain) by sending SIGTERM
to the container's PID 1, the launcher, and nothing else. The kernel drops a signal sent to
a PID namespace's init process that has no handler for it, and accelerate's launcher of a
single process installs none: the trainer would never hear of the stop and would be killed
at the end of the grace period, losing the work since its last checkpoint. This launcher
installs a handler that sends SIGTERM on to its process group (the trainer is in it; in a
pod the group is the container's processes), then runs accelerate's launcher in this
process. Started by a script that shares its process group with other programs, the
launcher first leads a group of its own, so that the forwarded signal reaches its
processes and no others; from a terminal it stays in the shell's job, whose group is its
own already and which Ctrl-C must still reach. With several processes, torch's elastic agent
replaces the handler with its own, which passes the signal on too and waits
TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (the operator sets the grace period) before it
kills the trainers.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

from accelerate.commands.launch import main as accelerate_launch


def forward_sigterm(signum: int, frame: FrameType | None) -> None:
    """Send SIGTERM to the process group once; this process ignores the copy it gets."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGTERM)


def lead_own_process_group() -> None:
    """Leave a group shared with unrelated processes (not a terminal's job, not a pod's)."""
    if os.getpgrp() != os.getpid() and not os.isatty(0):
        os.setpgid(0, 0)


def main() -> None:
    lead_own_process_group()
    signal.signal(signal.SIGTERM, forward_sigterm)
    accelerate_launch()


if __name__ == "__main__":
    main()
