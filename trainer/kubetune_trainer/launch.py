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

accelerate's launcher reports a failed trainer by raising (CalledProcessError for one
process, torch's ChildFailedError for several) and exits with code 1 whatever the trainer
said. This launcher exits with the trainer's own code instead (kubetune's exit codes mean
invalid input, a spent budget, an interruption) and prints one line, not a traceback: the
trainer has printed why already. Likewise when torch's elastic agent was stopped by a
signal (it raises once it has passed the signal on and its trainers have ended): the exit
code is the signal's, 128 + N.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

from accelerate.commands.launch import main as accelerate_launch
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


def forward_sigterm(signum: int, frame: FrameType | None) -> None:
    """Send SIGTERM to the process group once; this process ignores the copy it gets."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGTERM)


def lead_own_process_group() -> None:
    """Leave a group shared with unrelated processes (not a terminal's job, not a pod's)."""
    if os.getpgrp() != os.getpid() and not os.isatty(0):
        os.setpgid(0, 0)


def shell_exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N for one killed by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def failed_trainer(error: subprocess.CalledProcessError | ChildFailedError) -> tuple[str, int]:
    """Which trainer process failed first, and its exit code."""
    if isinstance(error, subprocess.CalledProcessError):
        return "the trainer", shell_exit_code(error.returncode)
    rank, failure = error.get_first_failure()
    return f"trainer process {rank}", shell_exit_code(failure.exitcode)


def main() -> int:
    lead_own_process_group()
    signal.signal(signal.SIGTERM, forward_sigterm)
    try:
        accelerate_launch()
    except (subprocess.CalledProcessError, ChildFailedError) as error:
        process, code = failed_trainer(error)
        print(f"kubetune launcher: {process} exited with code {code}", file=sys.stderr)
        return code
    except SignalException as stopped:
        name = signal.Signals(stopped.sigval).name
        print(f"kubetune launcher: stopped by {name}", file=sys.stderr)
        return shell_exit_code(-stopped.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
