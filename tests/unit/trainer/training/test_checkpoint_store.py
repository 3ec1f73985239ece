"""The checkpoint store with a real accelerator and a small model: saves, rotation, latest."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from kubetune_trainer.checkpoints import checkpoint_name
from kubetune_trainer.training.checkpoint_store import PARTIAL_PREFIX, CheckpointStore


def store(root: Path, keep: int) -> CheckpointStore:
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(4, 2))
    return CheckpointStore(accelerator, root, keep=keep, state_bytes=lambda: 1000)


def test_a_save_is_renamed_into_place_and_is_the_latest(tmp_path: Path) -> None:
    checkpoints = store(tmp_path / "checkpoints", keep=2)
    assert checkpoints.latest() is None

    saved = checkpoints.save(checkpoint_name(3), best="")

    assert saved == tmp_path / "checkpoints/step-00000003"
    assert checkpoints.latest() == saved
    assert any(saved.glob("*.safetensors")) or any(saved.glob("*.bin"))
    assert list((tmp_path / "checkpoints").glob(f"{PARTIAL_PREFIX}*")) == []


def test_rotation_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    checkpoints = store(tmp_path / "checkpoints", keep=2)
    for step in (1, 2, 3, 4):
        checkpoints.save(checkpoint_name(step), best=checkpoint_name(1))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-00000001", "step-00000003", "step-00000004"]
