"""`kubetune run`: the same FineTuneJob on this machine, without a cluster.

One process trains in this Python process; more are started with the pods' launcher
(`kubetune_trainer.launch`, accelerate's with the trainer's exit codes passed on) and the
same trainer entry point. The trainer (and torch) is imported only when a run starts, so
the rest of the CLI stays light. A job with `spec.search` is planned here like any other
(its output directory, its paths) and its trials are run by `searches.py`, which builds on
these functions.

Both ways, a run that makes no progress for the job's runPolicy.stallTimeout is stopped
(kubetune_trainer.watchdog): the launcher watches its trainers; a run in this process is
watched by a thread of this process, which ends it, since its main thread is stuck.
A search's trials are not watched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_operator.api.v1alpha1 import FineTuneJob, duration_seconds
from kubetune_trainer.config import EXIT_INVALID_INPUT, EXIT_STALLED, TrainingConfig
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON

if TYPE_CHECKING:  # the watchdog loads with the trainer, when a run starts
    from kubetune_trainer.watchdog import Stall

CONFIG_FILE = "config.json"


class LocalRunError(Exception):
    """A local run that cannot start or did not finish; the message says why."""


class StalledRunError(Exception):
    """The watchdog stopped a run that made no progress for runPolicy.stallTimeout."""

    def __init__(self, stall: Stall) -> None:
        super().__init__(stall.describe())
        self.stall = stall


@dataclass(frozen=True)
class LocalRun:
    """What `kubetune run` needs to know about one job."""

    name: str
    config: TrainingConfig
    output_dir: Path
    stall_timeout_s: float | None = None
    """runPolicy.stallTimeout in seconds; None: not watched (a search's trials)."""


def plan_local_run(job: FineTuneJob, manifest: Path, output: Path | None) -> LocalRun:
    """Resolve paths against the manifest's folder and pick the output directory.

    For a search, `config` is the parent's own recipe (the trials change it) and the
    output directory holds the search: search.json, trial-<n>/ and the best model.
    """
    config = job.spec.training_config().relative_to(manifest.resolve().parent)
    return LocalRun(
        job.metadata.name,
        config,
        output or _default_output(config, job),
        duration_seconds(job.spec.run_policy.stall_timeout),
    )


def _default_output(config: TrainingConfig, job: FineTuneJob) -> Path:
    directory = config.output_directory(job.metadata.name, pvc_root=None)
    if directory is None:
        raise LocalRunError(
            f"spec.output.uri: {config.output.uri} needs a cluster; pass --output DIR "
            "to run locally"
        )
    return directory


RUN_ENTRIES = frozenset(
    {
        *(REPORT_JSON, REPORT_HTML, CONFIG_FILE, "metrics.jsonl", "cost.json"),
        *("checkpoints", "cache", "model", "search.json", "search.html", "trainer.log"),
        *("heartbeat.json", ".kubetune-test-hang"),
    }
)
"""What a run (the trainer, or a local search) writes at the top of its output directory."""
CONTINUED_OUTCOMES = frozenset({"interrupted", "budgetExceeded", "stalled"})
"""report.json outcomes of a run stopped with a checkpoint (if it saved one) to continue
from; "stalled" is written by the stall watchdog."""
RUN_ENTRY_PATTERN = re.compile(r"(trial|fold)-\d+|\.partial-.+|\..+\.partial")
"""A search's trials, cross-validation's folds, and files being written atomically."""


def prepare_output(run: LocalRun, overwrite: bool) -> None:
    """Refuse to mix a new run into a finished one unless asked to start over; start over
    only in a directory that holds nothing but a run's files, so no other file is lost."""
    directory = run.output_dir
    if directory.exists() and not directory.is_dir():
        raise LocalRunError(f"output directory {directory}: is a file, not a directory")
    finished = directory / REPORT_JSON
    if finished.exists() and not overwrite and _stopped_with_a_checkpoint(finished):
        finished.unlink()  # the run continues from its checkpoint and writes its own report
    if finished.exists() and not overwrite:
        raise LocalRunError(
            f"{directory} already holds a finished run ({finished}); pass --overwrite "
            "to start again, or --output DIR for another directory"
        )
    try:
        if overwrite and directory.exists():
            _check_only_run_files(directory)
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LocalRunError(
            f"output directory {directory}: cannot be written ({error.strerror or error})"
        ) from None


def _stopped_with_a_checkpoint(report: Path) -> bool:
    """Whether report.json is that of a run stopped by Ctrl-C, SIGTERM, its GPU budget or
    its stall watchdog, which the same command continues."""
    try:
        outcome = json.loads(report.read_text(encoding="utf-8")).get("outcome")
    except (OSError, ValueError, AttributeError):
        return False
    return outcome in CONTINUED_OUTCOMES


def _check_only_run_files(directory: Path) -> None:
    foreign = sorted(
        entry.name
        for entry in directory.iterdir()
        if entry.name not in RUN_ENTRIES and not RUN_ENTRY_PATTERN.fullmatch(entry.name)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise LocalRunError(
            f"output directory {directory}: --overwrite deletes it, and it holds what no run "
            f"wrote ({shown}); move those away, or pass --output DIR for another directory"
        )


TRAINER_PACKAGES = ("torch", "transformers", "accelerate", "datasets")
"""What training imports, which the trainer extra installs and the base install has not."""


def check_trainer_installed(*, search: bool) -> None:
    """Before anything is written: ModuleNotFoundError naming the first package that a run
    (a search: Optuna too) needs and this environment lacks, found without importing it."""
    for package in (*TRAINER_PACKAGES, *(("optuna",) if search else ())):
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(f"No module named {package!r}", name=package)


def run_in_process(
    run: LocalRun, on_stall: Callable[[Stall], None] | None = None
) -> dict[str, Any]:
    """Train in this process; return report.json's content.

    With `on_stall` (and a stall timeout), a run that makes no progress is ended from a
    thread: report.json says so, `on_stall` tells the user, and this process exits with
    EXIT_STALLED at once (os._exit), since its main thread is stuck and cleans up nothing.
    """
    from kubetune_trainer.__main__ import INPUT_ERRORS, run_training

    with _watched(run, on_stall):
        try:
            run_training(run.config, run.output_dir, job_name=run.name)
        except INPUT_ERRORS as error:
            raise LocalRunError(str(error)) from None
    return read_report(run)


@contextlib.contextmanager
def _watched(run: LocalRun, on_stall: Callable[[Stall], None] | None) -> Iterator[None]:
    """A stall watchdog over this process's run while it trains (none without on_stall)."""
    if run.stall_timeout_s is None or on_stall is None:
        yield
        return
    from kubetune_trainer.watchdog import StallWatchdog

    def end_run(stall: Stall) -> None:
        _end_stalled_process(run, stall, on_stall)

    watchdog = StallWatchdog(run.output_dir, run.stall_timeout_s, end_run).start()
    try:
        yield
    finally:
        watchdog.stop()


def _end_stalled_process(run: LocalRun, stall: Stall, on_stall: Callable[[Stall], None]) -> None:
    from kubetune_trainer.watchdog import write_stalled_report

    with contextlib.suppress(OSError):  # the line below still says it
        write_stalled_report(run.output_dir, run.name, stall)
    on_stall(stall)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STALLED)


def run_with_accelerate(run: LocalRun, processes: int) -> dict[str, Any]:
    """Train with `processes` CPU processes (gloo) under the pods' launcher."""
    environment = trainer_environment(processes, None)
    if run.stall_timeout_s is not None:
        from kubetune_trainer.watchdog import STALL_TIMEOUT_ENV

        environment[STALL_TIMEOUT_ENV] = str(run.stall_timeout_s)
    with subprocess.Popen(trainer_command(run, processes), env=environment) as launcher:
        try:
            code = launcher.wait()
        except KeyboardInterrupt:  # the trainers stop at their next logged step, with a
            pass_ctrl_c_on(launcher)  # checkpoint: wait for them
            code = launcher.wait()
    if code == EXIT_INVALID_INPUT:
        raise LocalRunError("the trainer refused its input (its message is above)")
    if code == EXIT_STALLED:
        raise _stalled(run)
    if not (run.output_dir / REPORT_JSON).exists():
        raise LocalRunError(f"the trainer exited with code {code} before writing a report")
    return read_report(run)


def _stalled(run: LocalRun) -> Exception:
    """What the launcher's watchdog recorded in report.json about the run it stopped."""
    from kubetune_trainer.watchdog import stall_from_report

    try:
        stall = stall_from_report(read_report(run))
    except (LocalRunError, OSError, ValueError):
        stall = None
    if stall is None:
        return LocalRunError("the run made no progress for runPolicy.stallTimeout and was stopped")
    return StalledRunError(stall)


def pass_ctrl_c_on(launcher: subprocess.Popen[bytes]) -> None:
    """A Ctrl-C typed in a terminal reaches the launcher too, which stays in the terminal's
    job; one sent to this process alone (a script's) is passed on, as the launcher leads a
    process group of its own then. Never twice: torch's elastic agent would stop waiting
    for its trainers."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(launcher.pid) != os.getpgrp():
            launcher.send_signal(signal.SIGINT)


def trainer_command(run: LocalRun, processes: int) -> list[str]:
    """The trainer entry point the pods run, on `run`'s config written into its output
    directory: directly for one process, under the pods' launcher for more."""
    config_path = run.output_dir / CONFIG_FILE
    config_path.write_text(run.config.model_dump_json(exclude_none=True), encoding="utf-8")
    trainer = ["-m", "kubetune_trainer", "--config", str(config_path)]
    trainer += ["--output", str(run.output_dir), "--job-name", run.name]
    if processes == 1:
        return [sys.executable, *trainer]
    # accelerate's --cpu launcher starts one process unless MPI is installed; its torchrun
    # launcher (--multi_gpu) starts them all, and ACCELERATE_USE_CPU makes them use gloo.
    launcher = [sys.executable, "-m", "kubetune_trainer.launch", "--multi_gpu"]
    launcher += ["--num_processes", str(processes), "--num_machines", "1"]
    launcher += ["--main_process_port", str(free_port()), "--mixed_precision", "no"]
    return [*launcher, "--dynamo_backend", "no", *trainer]


def trainer_environment(processes: int, threads: int | None) -> dict[str, str]:
    """The environment of a trainer subprocess: `threads` OpenMP threads per process unless
    OMP_NUM_THREADS says otherwise (None: the trainer shares this process's CPUs among its
    processes itself, see kubetune_trainer.threads); several processes use gloo."""
    environment = dict(os.environ)
    if threads is not None:
        environment.setdefault("OMP_NUM_THREADS", str(threads))
    if processes > 1:
        environment["ACCELERATE_USE_CPU"] = "true"
    return environment


def free_port() -> int:
    """A loopback TCP port nobody listens on now, for the rendezvous of local processes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def read_report(run: LocalRun) -> dict[str, Any]:
    """The run's report.json; LocalRunError when the run wrote none."""
    path = run.output_dir / REPORT_JSON
    if not path.exists():
        raise LocalRunError(f"the run finished without a report at {path}")
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report
