"""`python -m kubetune_trainer --config FILE`: what each worker pod runs under `accelerate launch`.

The exit code tells the operator whether a restart can help: 0 done, 3 bad input (config,
data, model source: fail fast), 4 a run whose result must not be used (diverged), 5 a run
stopped by its GPU budget (runPolicy.maxGpuHours, with a checkpoint), 143 (128 + SIGTERM, as
if the signal had ended it) a run asked to stop (the pod deleted: suspend, Kueue
preemption, eviction, drain) that stopped at a logged step with a checkpoint for the next
worker group to resume from, anything else a crash worth retrying from the last checkpoint.
The trainer never exits with 6 itself: that is the stall watchdog's code (watchdog.py) for
trainers it stopped because they made no progress for runPolicy.stallTimeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from pydantic import ValidationError
from rich.console import Console

from kubetune_trainer.config import (
    EXIT_BUDGET_EXCEEDED,
    EXIT_CTRL_C,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    EXIT_TRAINING_FAILED,
    TrainingConfig,
)
from kubetune_trainer.cost import BudgetError
from kubetune_trainer.crossval import run_cross_validation
from kubetune_trainer.data import DataError
from kubetune_trainer.data.sources import SourceError, pvc_root
from kubetune_trainer.freezing import FreezingError
from kubetune_trainer.modeling import ModelError, check_quantization
from kubetune_trainer.report.progress import plain_console
from kubetune_trainer.threads import threads_for
from kubetune_trainer.training.recipe import Recipe, RunResult
from kubetune_trainer.training.sharding import ShardingError

INPUT_ERRORS = (DataError, SourceError, ModelError, FreezingError, BudgetError, ShardingError)
TERMINATION_LOG_ENV = "KUBETUNE_TERMINATION_LOG"
MAX_TERMINATION_MESSAGE = 3000
"""Kubernetes keeps 4 KiB of a termination message; the JSON around it needs a little."""


def run_training(
    config: TrainingConfig,
    output_dir: Path,
    *,
    job_name: str,
    env: Mapping[str, str] = os.environ,
    console: Console | None = None,
) -> RunResult:
    """Set up, train and clean up one run; input errors propagate (INPUT_ERRORS)."""
    console = console or plain_console()
    threads = threads_for(config.training.cpu_threads, env)
    torch.set_num_threads(threads.threads)
    if first_process_on_machine(env):
        console.print(threads.line(), markup=False)
    check_quantization(config)
    if config.evaluation.cross_validation is not None:
        return run_cross_validation(config, output_dir, job_name=job_name, env=env, console=console)
    recipe = Recipe(config, output_dir, job_name=job_name, env=env, console=console)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()


def read_config(path: Path) -> TrainingConfig:
    """The TrainingConfig JSON the operator mounts (or `kubetune run` writes)."""
    return TrainingConfig.model_validate_json(path.read_text(encoding="utf-8"), by_name=False)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    """Train as the arguments say and return the exit code; the process group (if any) is
    torn down before the process exits, as gloo's threads must be stopped, not abandoned."""
    try:
        return _main(argv, env)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _main(argv: Sequence[str] | None, env: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer", description=__doc__)
    parser.add_argument("--config", default=env.get("KUBETUNE_CONFIG"), required=False)
    parser.add_argument("--output", type=Path, help="output directory (default: output.uri)")
    parser.add_argument("--job-name", default=env.get("KUBETUNE_JOB_NAME", "local"))
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config (or KUBETUNE_CONFIG) is required")
    console = plain_console()
    try:
        config = read_config(Path(args.config))
    except (OSError, ValidationError) as error:
        message = f"cannot read the config {args.config}: {error}"
        console.print(f"kubetune trainer: {message}", markup=False)
        return record_exit(env, EXIT_INVALID_INPUT, message)
    output = args.output or config.output_directory(args.job_name, pvc_root())
    assert output is not None  # with a claim mount root, every output has a directory
    try:
        result = run_training(config, output, job_name=args.job_name, env=env, console=console)
    except INPUT_ERRORS as error:
        if first_process_on_machine(env):  # the others read the same input: one message
            console.print(f"kubetune trainer: {error}", markup=False)
        return record_exit(env, EXIT_INVALID_INPUT, str(error))
    except KeyboardInterrupt:  # Ctrl-C twice, or once before training
        message = "interrupted by Ctrl-C: stopped at once, without saving a checkpoint"
        if first_process_on_machine(env):
            console.print(f"kubetune trainer: {message}", markup=False)
        return record_exit(env, EXIT_CTRL_C, message)
    if result.budget_exceeded:
        return record_exit(env, EXIT_BUDGET_EXCEEDED, result.message)
    if result.interrupted:
        return record_exit(env, EXIT_INTERRUPTED, result.message)
    if not result.succeeded:
        return record_exit(env, EXIT_TRAINING_FAILED, result.message)
    return 0


def first_process_on_machine(env: Mapping[str, str]) -> bool:
    """Local rank 0 under a launcher, or the only process."""
    return env.get("LOCAL_RANK", "0") == "0"


def record_exit(env: Mapping[str, str], code: int, message: str) -> int:
    """Write the exit code and why to KUBETUNE_TERMINATION_LOG (a pod's termination message,
    which the operator reads, whatever the launcher makes of the exit code); return `code`."""
    path = env.get(TERMINATION_LOG_ENV)
    if path:
        record = {"exitCode": code, "message": message[:MAX_TERMINATION_MESSAGE]}
        with contextlib.suppress(OSError):  # the exit code still says it
            Path(path).write_text(json.dumps(record), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
