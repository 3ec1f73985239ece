"""The launcher's forwarded SIGTERM reaches its own processes and no others.

A pod's launcher is PID 1 and leads the container's process group. Started by a script
instead (a shell without job control, so the script, the launcher and anything else the
script started share one group), the launcher leads a group of its own first: the SIGTERM
it passes on stops its trainer with a checkpoint and leaves the script's other programs
running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubetune_trainer.config import EXIT_INTERRUPTED
from tests.integration.test_sigterm import LAUNCHER, wait_for_a_logged_step, write_config

SCRIPT = (
    'sleep 300 >/dev/null 2>&1 & echo $! > bystander.pid; "$@" & echo $! > launcher.pid; wait $!'
)
"""A bystander and the launcher in the script's group, each one's pid in a file (the
bystander holds no end of the output pipe, so the script's output ends with the launcher)."""


def read_pid(path: Path) -> int:
    while not path.exists() or not path.read_text().strip():
        time.sleep(0.01)
    return int(path.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_launcher_in_a_shared_group_signals_only_its_own_processes(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = write_config(tmp_path, tiny_model_dir, small_data)
    env = {
        **os.environ,
        "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    command = [*LAUNCHER, "--config", str(config), "--job-name", "group"]
    script = subprocess.Popen(
        ["sh", "-c", SCRIPT, "sh", *command],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the script leads the group, as a CI job's shell would
    )
    bystander = read_pid(tmp_path / "bystander.pid")
    try:
        launcher = read_pid(tmp_path / "launcher.pid")
        wait_for_a_logged_step(script, tmp_path / "out/metrics.jsonl")
        assert os.getpgid(launcher) == launcher != os.getpgid(bystander) == script.pid

        os.kill(launcher, signal.SIGTERM)
        output, _ = script.communicate(timeout=300)

        assert script.returncode == EXIT_INTERRUPTED, output
        assert alive(bystander)
        (checkpoint,) = (tmp_path / "out/checkpoints").iterdir()
        assert checkpoint.name.startswith("step-"), output
    finally:
        if alive(bystander):
            os.kill(bystander, signal.SIGKILL)
