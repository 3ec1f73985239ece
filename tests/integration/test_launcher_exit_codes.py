"""The launcher exits with the code of the trainer process that failed first.

accelerate's launcher turns any failed trainer into exit code 1 and a traceback; kubetune's
exit codes (invalid input, a spent budget, an interruption) must reach the pod's status and
`kubetune run`. Real launches of one and of two processes (torch's elastic agent, gloo),
with a script in place of the trainer. An agent stopped by a signal ends with the signal's
code once its trainers have ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

LAUNCH = [sys.executable, "-m", "kubetune_trainer.launch", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no"]

FAILING_RANK = """
import os, signal, sys, time
if os.environ.get("RANK", "0") == sys.argv[1]:
    if sys.argv[2] == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(sys.argv[2]))
time.sleep(120)  # the other rank: stopped by the elastic agent when the failing one ends
"""


def launch(tmp_path: Path, processes: int, rank: int, exit_with: str) -> tuple[int, str]:
    script = tmp_path / "trainer.py"
    script.write_text(FAILING_RANK)
    mode = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command = [*LAUNCH, *mode, "--num_processes", str(processes)]
    command += ["--main_process_port", "0", str(script), str(rank), exit_with]
    result = subprocess.run(
        command,
        env={**os.environ, "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def test_one_process_exit_code_passes_through_without_a_traceback(tmp_path: Path) -> None:
    code, output = launch(tmp_path, processes=1, rank=0, exit_with="5")
    assert code == 5, output
    assert "kubetune launcher: the trainer exited with code 5" in output
    assert "Traceback" not in output


def test_a_trainer_killed_by_a_signal_is_128_plus_the_signal(tmp_path: Path) -> None:
    code, output = launch(tmp_path, processes=1, rank=0, exit_with="SIGKILL")
    assert code == 128 + signal.SIGKILL, output


def test_of_two_processes_the_first_to_fail_gives_the_code(tmp_path: Path) -> None:
    code, output = launch(tmp_path, processes=2, rank=1, exit_with="3")
    assert code == 3, output
    assert "kubetune launcher: trainer process 1 exited with code 3" in output
    assert "Traceback" not in output


STOPPING_TRAINER = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(143))  # as the trainer stops
print("ready", flush=True)
time.sleep(120)
"""


def test_an_agent_stopped_by_ctrl_c_exits_130_once_its_trainers_stopped(tmp_path: Path) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(STOPPING_TRAINER)
    command = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--main_process_port", "0"]
    launcher = subprocess.Popen(
        [*command, str(script)],
        env={**os.environ, "ACCELERATE_USE_CPU": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert launcher.stdout is not None
    ready = 0
    while ready < 2:
        line = launcher.stdout.readline()
        assert line, "the launcher ended before both trainers started"
        ready += "ready" in line

    launcher.send_signal(signal.SIGINT)
    output, _ = launcher.communicate(timeout=300)

    assert launcher.returncode == 128 + signal.SIGINT, output
    assert "kubetune launcher: stopped by SIGINT" in output
    assert "Traceback" not in output


SLOW_TO_STOP = """
import pathlib, signal, sys, time
def stop(signum, frame):
    time.sleep(7)  # a checkpoint longer than accelerate's 5 s between terminate and kill
    pathlib.Path(sys.argv[1]).write_text("saved")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(120)
"""


def test_one_trainer_gets_all_the_time_its_checkpoint_needs_after_sigterm(
    tmp_path: Path,
) -> None:
    """A pod's SIGTERM reaches the launcher alone; the trainer must be able to finish its
    checkpoint within the grace period, not be killed 5 seconds later."""
    script = tmp_path / "trainer.py"
    script.write_text(SLOW_TO_STOP)
    checkpoint = tmp_path / "checkpoint"
    command = [*LAUNCH, "--cpu", "--num_processes", "1", str(script), str(checkpoint)]
    launcher = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a group of its own, as a container's processes are
    )
    assert launcher.stdout is not None
    while "ready" not in (line := launcher.stdout.readline()):
        assert line, "the launcher ended before the trainer started"

    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=300)

    assert launcher.returncode == 143, output
    assert checkpoint.read_text() == "saved"
    assert "kubetune launcher: the trainer exited with code 143" in output
    assert "Traceback" not in output
