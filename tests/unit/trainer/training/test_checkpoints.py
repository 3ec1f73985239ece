"""Checkpoints are written atomically: resume picks the newest checkpoint folder, so a folder
that looks like a checkpoint must be complete, whenever the writing process was killed."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from kubetune_trainer.checkpoints import checkpoint_name, latest_checkpoint
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.cost import LEDGER_FILE, Budget, GpuMeter
from kubetune_trainer.training.checkpoint_store import PARTIAL_PREFIX
from kubetune_trainer.training.cost_ledger import CostLedger
from kubetune_trainer.training.recipe import Recipe


def test_a_half_written_checkpoint_is_never_the_latest(tmp_path: Path) -> None:
    for step in (3, 5):
        (tmp_path / checkpoint_name(step)).mkdir()
    (tmp_path / f"{PARTIAL_PREFIX}{checkpoint_name(9)}").mkdir()  # a save killed halfway

    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000005"


def test_no_checkpoint_folder_no_latest(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "checkpoints") is None


def recipe_with_a_model(output: Path) -> Recipe:
    """A recipe whose accelerator holds a small model and the training state: what
    save_checkpoint writes, without loading data or a transformer."""
    config = TrainingConfig.model_validate(
        {
            "model": {"source": "file:///models/unused", "labels": ["a", "b"]},
            "data": {"train": {"source": "file:///data/unused.csv"}},
            "output": {"uri": str(output)},
        },
        by_name=False,
    )
    recipe = Recipe(config, output, job_name="checkpoints")
    recipe.accelerator = Accelerator(cpu=True)
    recipe.cost_ledger = CostLedger(GpuMeter(0), Budget(), output / LEDGER_FILE, writer=True)
    recipe.model = recipe.accelerator.prepare(torch.nn.Linear(4, 2))
    recipe.accelerator.register_for_checkpointing(recipe.state)
    return recipe


def test_a_save_replaces_what_a_killed_save_left_and_renames_into_place(tmp_path: Path) -> None:
    recipe = recipe_with_a_model(tmp_path)
    recipe.state.step = 7
    leftover = tmp_path / "checkpoints" / f"{PARTIAL_PREFIX}step-00000007"
    leftover.mkdir(parents=True)
    (leftover / "stale.bin").write_bytes(b"from a save killed halfway")

    saved = recipe.save_checkpoint()

    assert saved == tmp_path / "checkpoints/step-00000007"
    assert sorted(p.name for p in saved.parent.iterdir()) == ["step-00000007"]
    assert not (saved / "stale.bin").exists()
    assert latest_checkpoint(saved.parent) == saved
    state = torch.load(next(saved.glob("custom_checkpoint_*.pkl")), weights_only=False)
    assert state["step"] == 7
