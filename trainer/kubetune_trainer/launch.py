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

One process is started here, from accelerate's own command line and environment: since
accelerate 1.1x its launcher of one process answers SIGTERM by terminating the trainer and
killing it 5 seconds later, too soon for the checkpoint a stopped trainer saves. Here the
trainer gets its signal and all the time it needs (the pod's grace period bounds it). A
Ctrl-C reaches the trainer, which stops at its next logged step: from a terminal the
trainer hears it itself, from a script this launcher passes it on.

Given KUBETUNE_STALL_TIMEOUT_SECONDS (runPolicy.stallTimeout; `kubetune run` sets it) and
the trainer's --output, the launcher also watches the trainers' heartbeat (watchdog.py):
when they made no progress for that long it says so in one line, stops them (SIGTERM, then
SIGKILL: a stuck process saves nothing), writes report.json (outcome stalled) and exits
with EXIT_STALLED (6).

accelerate's launcher reports a failed group by raising (torch's ChildFailedError) and
exits with code 1 whatever the trainer said. This launcher exits with the trainer's own
code instead (kubetune's exit codes mean invalid input, a spent budget, an interruption)
and prints one line, not a traceback: the trainer has printed why already. Likewise when
torch's elastic agent was stopped by a signal N (it raises, or with accelerate 1.1x exits
128 + N, once it has passed the signal on and its trainers have ended): the exit code is
the signal's, 128 + N.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from accelerate.commands.launch import (
    _validate_launch_command,
    launch_command,
    launch_command_parser,
)
from accelerate.utils.launch import prepare_simple_launcher_cmd_env
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from kubetune_trainer.config import EXIT_STALLED
from kubetune_trainer.watchdog import (
    Stall,
    StallWatchdog,
    end_child_processes,
    stall_timeout,
    write_stalled_report,
)


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


def stopping_signal(code: object) -> signal.Signals | None:
    """The signal an exit code 128 + N names, as accelerate 1.1x exits once its elastic
    agent was stopped by signal N; None for any other code."""
    if not isinstance(code, int) or code <= 128:
        return None
    try:
        return signal.Signals(code - 128)
    except ValueError:
        return None


def launches_one_process(args: argparse.Namespace) -> bool:
    """Whether the command line asks for accelerate's launcher of a single process: one
    process, no torchrun, DeepSpeed, FSDP, Megatron or TPU. kubetune passes every setting
    on the command line (the pods' builder and `kubetune run`)."""
    distributed = (args.multi_gpu, args.use_deepspeed, args.use_fsdp, args.use_megatron_lm)
    return args.num_processes == 1 and not any(distributed) and not args.tpu


def run_one_process(args: argparse.Namespace) -> int:
    """The trainer with accelerate's command and environment; its exit code once it ended."""
    args, _, _ = _validate_launch_command(args)
    command, environment = prepare_simple_launcher_cmd_env(args)
    trainer = subprocess.Popen(command, env=environment)
    while True:
        try:
            code = shell_exit_code(trainer.wait())
            break
        except KeyboardInterrupt:  # the trainer stops at its next logged step: wait for it
            if not os.isatty(0):  # a script's Ctrl-C reached this process alone
                trainer.send_signal(signal.SIGINT)
    if code:
        print(f"kubetune launcher: the trainer exited with code {code}", file=sys.stderr)
    return code


def run_group(args: argparse.Namespace) -> int:
    """accelerate's launcher of several processes; the first failed trainer's exit code."""
    try:
        launch_command(args)
    except (subprocess.CalledProcessError, ChildFailedError) as error:
        process, code = failed_trainer(error)
        print(f"kubetune launcher: {process} exited with code {code}", file=sys.stderr)
        return code
    except SignalException as stopped:
        return stopped_by(signal.Signals(stopped.sigval))
    except SystemExit as exiting:
        stopped_with = stopping_signal(exiting.code)
        if stopped_with is None:
            raise
        return stopped_by(stopped_with)
    return 0


def stopped_by(signum: signal.Signals) -> int:
    print(f"kubetune launcher: stopped by {signum.name}", file=sys.stderr)
    return shell_exit_code(-signum)


def trainer_output(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The trainer's --output and --job-name, from its command line (kubetune run passes
    them; a pod's trainer finds its output in its config instead)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--job-name", default="local")
    known, _ = parser.parse_known_args(args.training_script_args)
    return known.output, known.job_name


def watchdog_for(args: argparse.Namespace) -> StallWatchdog | None:
    """The stall watchdog of these trainers, when a timeout and an output are given."""
    timeout_s = stall_timeout(os.environ)
    output, job_name = trainer_output(args)
    if timeout_s is None or output is None:
        return None
    return StallWatchdog(output, timeout_s, lambda stall: stop_stalled(output, job_name, stall))


def stop_stalled(output: Path, job_name: str, stall: Stall) -> None:
    """Say why, end the stuck trainers, and write the report they cannot."""
    print(f"kubetune launcher: {stall.describe()}: stopping the trainers", file=sys.stderr)
    end_child_processes()
    try:
        write_stalled_report(output, job_name, stall)
    except OSError as error:
        print(f"kubetune launcher: report.json not written: {error}", file=sys.stderr)


def main() -> int:
    lead_own_process_group()
    signal.signal(signal.SIGTERM, forward_sigterm)
    args = launch_command_parser().parse_args()
    watchdog = watchdog_for(args)
    if watchdog is None:
        return run_trainers(args)
    watchdog.start()
    try:
        code = run_trainers(args)
    finally:
        watchdog.stop()
    return EXIT_STALLED if watchdog.stall is not None else code


def run_trainers(args: argparse.Namespace) -> int:
    return run_one_process(args) if launches_one_process(args) else run_group(args)


if __name__ == "__main__":
    sys.exit(main())
