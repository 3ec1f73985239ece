"""A run's checkpoints on disk: written atomically, rotated, and refused by a full disk.

A checkpoint is written by accelerate's `save_state` into a hidden folder that
`latest_checkpoint` never picks, then renamed into place (readable as the umask allows:
file_modes.publish): a checkpoint folder that exists is complete, whenever the process is
killed. A hidden folder left by a killed save is removed first, so no stale file of it
joins the new checkpoint. A save that finds the disk full removes what it wrote, keeps the
last complete checkpoint and raises a DiskFullError that says so (disk_space.py), on every
process at once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from kubetune_trainer.checkpoints import latest_checkpoint, saved_checkpoints
from kubetune_trainer.disk_space import DiskFullError, full_disk_message, is_out_of_space
from kubetune_trainer.file_modes import publish

PARTIAL_PREFIX = ".partial-"
"""A checkpoint (or model) being written: hidden, and never matching CHECKPOINT_PREFIX."""


class CheckpointStore:
    """The checkpoints under one folder, saved and loaded by every process together."""

    def __init__(
        self, accelerator: Accelerator, root: Path, *, keep: int, state_bytes: Callable[[], int]
    ) -> None:
        """`keep`: how many of the newest checkpoints rotation leaves (besides the best);
        `state_bytes`: the size of the state a save writes, for the full disk's message."""
        self.accelerator = accelerator
        self.root = root
        self.keep = keep
        self.state_bytes = state_bytes

    def latest(self) -> Path | None:
        """The newest complete checkpoint, if any."""
        return latest_checkpoint(self.root)

    def save(self, name: str, *, best: str) -> Path:
        """Save the accelerator's state as checkpoint `name`, atomically, then rotate the
        old ones away except `best` (a checkpoint's name, or "")."""
        final = self.root / name
        partial = self.root / f"{PARTIAL_PREFIX}{name}"
        if self.accelerator.is_main_process and partial.exists():
            shutil.rmtree(partial)
        self.accelerator.wait_for_everyone()
        saved = self._save_state(partial)
        if self._on_any_process(not saved):
            raise self._disk_full(partial, final)
        if self.accelerator.is_main_process:
            publish(partial, final)
            self._rotate(best)
        self.accelerator.wait_for_everyone()
        return final

    def _save_state(self, partial: Path) -> bool:
        """accelerate's save_state into `partial`; False when the disk was full."""
        try:
            self.accelerator.save_state(str(partial))
        except Exception as error:  # each writer raises its own type (see disk_space.py)
            if not is_out_of_space(error, self.root, self.state_bytes()):
                raise
            return False
        return True

    def _on_any_process(self, flag: bool) -> bool:
        """Whether `flag` is true on any process: a collective, so every process must ask."""
        total = self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device))
        return bool(total.item() > 0)

    def _disk_full(self, partial: Path, final: Path) -> DiskFullError:
        """The error of a save that found the disk full, after removing what it wrote."""
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return DiskFullError(
            full_disk_message(
                self.root, f"checkpoint {final.name}", self.state_bytes(), self.latest()
            )
        )

    def _rotate(self, best: str) -> None:
        for old in saved_checkpoints(self.root)[: -self.keep]:
            if old.name != best:
                shutil.rmtree(old)
