"""The launcher exits with the code of the trainer process that failed first.

accelerate's launcher turns any failed trainer into exit code 1 and a traceback; kubetune's
exit codes (invalid input, a spent budget, an interruption) must reach the pod's status and
`kubetune run`. Real launches of one and of two processes (torch's elastic agent, gloo),
with a script in place of the trainer.
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
