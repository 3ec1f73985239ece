"""A checkpoint save that finds the disk full ends the run with one line and a report.json.

The disk is really full: the run's checkpoints/ folder is a small tmpfs, mounted in a user
and mount namespace of the trainer's own (`unshare --user --map-root-user --mount`, which
needs no root where unprivileged user namespaces are allowed), sized to take the first
checkpoint but not the second. So the writers fail as on a full volume, each in its own
way: safetensors (the model) with a SafetensorError, torch.save (the optimizer) with a
RuntimeError that hides the ENOSPC. /dev/full would need no namespace, but sandboxes such
as gVisor accept writes to it, and the save creates its checkpoint folder itself, so no
symlink to it can stand in for one. Where namespaces are not allowed the tests are skipped.
The tmpfs lives as long as the namespace, so the shell in it lists the checkpoints after
the trainer exits.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune_trainer.__main__ import run_training
from kubetune_trainer.config import EXIT_TRAINING_FAILED
from tests.integration.test_trainer import make_config

IN_NAMESPACE = """
mount -t tmpfs -o "size=$1" tmpfs "$2" || exit 97
"$3" -m kubetune_trainer --config "$4" --output "$5"
echo "exit code $?"
ls -A "$2"
"""
"""Mount the tmpfs on the checkpoints folder, train, then say the exit code and what the
tmpfs holds, before the namespace (and the tmpfs) goes."""
KIB = 1024


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(
    not namespaces_allowed(), reason="needs unprivileged user and mount namespaces (unshare)"
)


@pytest.fixture(scope="module")
def checkpoint_bytes(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> int:
    """The size of one checkpoint of the tiny model, from a real one-epoch run."""
    output = tmp_path_factory.mktemp("sized")
    config = make_config(tiny_model_dir, small_data, training={"epochs": 1})
    run_training(config, output, job_name="sized", env={})
    (checkpoint,) = (output / "checkpoints").iterdir()
    return sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())


def run_on_a_small_disk(
    tmp_path: Path, tiny_model: Path, data: tuple[Path, Path], disk_bytes: int
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Train two epochs (a checkpoint after each) with checkpoints/ on a tmpfs of
    `disk_bytes`; return the namespace's shell, done, and the output folder."""
    config = make_config(tiny_model, data, training={"epochs": 2})
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json(by_alias=True))
    output = tmp_path / "run"
    (output / "checkpoints").mkdir(parents=True)
    size = f"{math.ceil(disk_bytes / (4 * KIB)) * 4}k"  # whole pages
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", IN_NAMESPACE]
    command += ["sh", size, str(output / "checkpoints"), sys.executable]
    command += [str(config_file), str(output)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert "exit code" in done.stdout, done.stdout + done.stderr
    return done, output


@pytest.mark.parametrize(
    "room",
    [
        pytest.param(1.2, id="the model fails to save (safetensors)"),
        pytest.param(1.6, id="the optimizer state fails to save (torch.save)"),
    ],
)
def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_data: tuple[Path, Path],
    checkpoint_bytes: int,
    room: float,
) -> None:
    """`room` checkpoints fit on the disk: the second save fails partway."""
    done, output = run_on_a_small_disk(
        tmp_path, tiny_model_dir, small_data, int(room * checkpoint_bytes)
    )
    assert f"exit code {EXIT_TRAINING_FAILED}\n" in done.stdout
    assert "Traceback" not in done.stderr
    report = json.loads((output / "report.json").read_text())
    assert report["outcome"] == "failed"
    assert report["succeeded"] is False
    first, second = report["curves"]["evaluations"][0]["step"], report["steps"]
    message = report["message"]
    assert re.fullmatch(
        f"no space left on the device of {re.escape(str(output / 'checkpoints'))} while saving "
        f"checkpoint step-0*{second}: the state is about [0-9.]+ MB and [0-9.]+ MB is free; "
        f"the last complete checkpoint, step-0*{first}, is kept: free space and run again to "
        "continue from it",
        message,
    ), message
    assert f"failed: {message}\n" in done.stderr
    kept = done.stdout.split(f"exit code {EXIT_TRAINING_FAILED}\n", 1)[1].split()
    assert kept == [f"step-{first:08d}"], "the partial save is removed, the last one kept"
