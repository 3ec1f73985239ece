"""`kubetune run`: the same FineTuneJob on this machine, without a cluster.

One process trains in this Python process; more are started with the pods' launcher
(`kubetune_trainer.launch`, accelerate's with the trainer's exit codes passed on) and the
same trainer entry point. The trainer (and torch) is imported only when a run starts, so
the rest of the CLI stays light. A job with `spec.search` is planned here like any other
(its output directory, its paths) and its trials are run by `local_search`, which builds on
these functions.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_operator.api.v1alpha1 import FineTuneJob
from kubetune_trainer.config import EXIT_INVALID_INPUT, TrainingConfig

REPORT_FILE = "report.json"
CONFIG_FILE = "config.json"


class LocalRunError(Exception):
    """A local run that cannot start or did not finish; the message says why."""


@dataclass(frozen=True)
class LocalRun:
    """What `kubetune run` needs to know about one job."""

    name: str
    config: TrainingConfig
    output_dir: Path


def plan_local_run(job: FineTuneJob, manifest: Path, output: Path | None) -> LocalRun:
    """Resolve paths against the manifest's folder and pick the output directory.

    For a search, `config` is the parent's own recipe (the trials change it) and the
    output directory holds the search: search.json, trial-<n>/ and the best model.
    """
    config = job.spec.training_config().relative_to(manifest.resolve().parent)
    return LocalRun(job.metadata.name, config, output or _default_output(config, job))


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
        *(REPORT_FILE, "report.html", CONFIG_FILE, "metrics.jsonl", "cost.json"),
        *("checkpoints", "cache", "model", "search.json", "search.html", "trainer.log"),
    }
)
"""What a run (the trainer, or a local search) writes at the top of its output directory."""
CONTINUED_OUTCOMES = frozenset({"interrupted", "budgetExceeded"})
"""report.json outcomes of a run stopped with a checkpoint to continue from."""
RUN_ENTRY_PATTERN = re.compile(r"(trial|fold)-\d+|\.partial-.+|\..+\.partial")
"""A search's trials, cross-validation's folds, and files being written atomically."""


def prepare_output(run: LocalRun, overwrite: bool) -> None:
    """Refuse to mix a new run into a finished one unless asked to start over; start over
    only in a directory that holds nothing but a run's files, so no other file is lost."""
    directory = run.output_dir
    if directory.exists() and not directory.is_dir():
        raise LocalRunError(f"output directory {directory}: is a file, not a directory")
    finished = directory / REPORT_FILE
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
    """Whether report.json is that of a run stopped by Ctrl-C, SIGTERM or its GPU budget,
    which the same command continues."""
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


def run_in_process(run: LocalRun) -> dict[str, Any]:
    """Train in this process; return report.json's content."""
    from kubetune_trainer.__main__ import INPUT_ERRORS, run_training

    try:
        run_training(run.config, run.output_dir, job_name=run.name)
    except INPUT_ERRORS as error:
        raise LocalRunError(str(error)) from None
    return read_report(run)


def run_with_accelerate(run: LocalRun, processes: int) -> dict[str, Any]:
    """Train with `processes` CPU processes (gloo) under the pods' launcher."""
    with subprocess.Popen(
        trainer_command(run, processes), env=trainer_environment(processes, None)
    ) as launcher:
        try:
            code = launcher.wait()
        except KeyboardInterrupt:  # the trainers stop at their next logged step, with a
            pass_ctrl_c_on(launcher)  # checkpoint: wait for them
            code = launcher.wait()
    if code == EXIT_INVALID_INPUT:
        raise LocalRunError("the trainer refused its input (its message is above)")
    if not (run.output_dir / REPORT_FILE).exists():
        raise LocalRunError(f"the trainer exited with code {code} before writing a report")
    return read_report(run)


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
    path = run.output_dir / REPORT_FILE
    if not path.exists():
        raise LocalRunError(f"the run finished without a report at {path}")
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report
