"""Where a run's checkpoints are and which is the newest, without importing torch.

The recipe saves them; the stall watchdog (watchdog.py), which runs beside a stuck trainer
in a launcher or in `kubetune run`, names the one a stopped run continues from.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def saved_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first (a save in progress is not one)."""
    return sorted(root.glob(f"{CHECKPOINT_PREFIX}*"))


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`."""
    checkpoints = saved_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def parse_checkpoint_step(name: str) -> int:
    return int(name.removeprefix(CHECKPOINT_PREFIX)) if name else -1
