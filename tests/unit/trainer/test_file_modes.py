"""What a run writes into its output directory (the model, checkpoints, the data cache, the
reports) gets the modes the umask gives a plain open(): 0644 under 022, so that a team
reads a model on a shared volume, and 0600 under 077. safetensors alone writes 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from kubetune_trainer import file_modes
from kubetune_trainer.data import prepare_data
from kubetune_trainer.data.cache import cached_prepare
from kubetune_trainer.file_modes import current_umask, publish
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON
from kubetune_trainer.report.summary import write_reports
from kubetune_trainer.training.checkpoint_store import PARTIAL_PREFIX
from tests.tiny import make_tokenizer
from tests.unit.trainer.data.test_data import write_csv
from tests.unit.trainer.data.test_data_stages import config_for, sentences
from tests.unit.trainer.report.test_report_html import full_report
from tests.unit.trainer.training.test_checkpoints import recipe_with_a_model


class Modes(NamedTuple):
    umask: int
    file: int
    folder: int


@pytest.fixture(
    params=[Modes(0o022, 0o644, 0o755), Modes(0o077, 0o600, 0o700)],
    ids=lambda modes: f"umask-{modes.umask:03o}",
)
def modes(request: pytest.FixtureRequest) -> Iterator[Modes]:
    """The process umask set for the test (and put back after it)."""
    wanted: Modes = request.param
    before = os.umask(wanted.umask)
    try:
        yield wanted
    finally:
        os.umask(before)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_below(root: Path) -> dict[str, int]:
    """Every file and folder under `root` (itself as "."), by relative path, with its mode."""
    found = {".": mode_of(root)}
    found |= {str(p.relative_to(root)): mode_of(p) for p in root.rglob("*")}
    return found


def assert_modes(root: Path, modes: Modes) -> None:
    expected = {
        name: modes.folder if (root / name).is_dir() else modes.file for name in modes_below(root)
    }
    assert modes_below(root) == expected


def test_the_umask_is_read_and_left_as_it_is(modes: Modes) -> None:
    assert current_umask() == modes.umask
    assert current_umask() == modes.umask
    assert os.umask(modes.umask) == modes.umask


def test_without_proc_the_umask_is_read_by_setting_it_back_at_once(
    modes: Modes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_modes, "PROC_STATUS", tmp_path / "no-proc-here")  # not Linux
    assert current_umask() == modes.umask
    assert os.umask(modes.umask) == modes.umask


def test_safetensors_alone_writes_0600_which_publish_opens_to_the_umask(
    modes: Modes, tmp_path: Path
) -> None:
    partial = tmp_path / ".partial-model"
    (partial / "shards").mkdir(parents=True)
    save_file({"weight": torch.zeros(2)}, partial / "shards" / "model.safetensors")
    assert mode_of(partial / "shards" / "model.safetensors") == 0o600  # why publish exists
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.bin").write_bytes(b"the previous model")

    publish(partial, tmp_path / "model")

    assert not partial.exists()
    assert sorted(modes_below(tmp_path / "model")) == [".", "shards", "shards/model.safetensors"]
    assert_modes(tmp_path / "model", modes)


def test_a_checkpoint_is_readable_as_the_umask_allows(modes: Modes, tmp_path: Path) -> None:
    recipe = recipe_with_a_model(tmp_path)
    recipe.state.step = 3

    saved = recipe.save_checkpoint()

    assert (saved / "model.safetensors").exists()
    assert_modes(saved, modes)


def test_the_saved_model_is_readable_as_the_umask_allows(modes: Modes, tmp_path: Path) -> None:
    recipe = recipe_with_a_model(tmp_path)
    config = BertConfig(
        vocab_size=16,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        num_labels=2,
    )
    recipe.model = recipe.accelerator.prepare(BertForSequenceClassification(config))
    recipe.tokenizer = make_tokenizer(["good", "bad"])
    recipe.data = SimpleNamespace(labels=["a", "b"])  # type: ignore[assignment]  # all _save_model reads
    leftover = tmp_path / f"{PARTIAL_PREFIX}model"
    leftover.mkdir()  # left by a save that was killed

    recipe._save_model()

    model = tmp_path / "model"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(modes_below(model))
    assert not leftover.exists()
    assert_modes(model, modes)


def test_the_data_cache_is_readable_as_the_umask_allows(
    modes: Modes, tmp_path: Path, tiny_model_dir: Path
) -> None:
    rows = sentences(20, "positive", 1, dialect="a") + sentences(20, "negative", 2, dialect="b")
    train = write_csv(tmp_path / "train.csv", rows)
    validation = write_csv(tmp_path / "val.csv", sentences(6, "positive", 3, dialect="a"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    cached_prepare(config_for(train, validation), tokenizer, tmp_path / "cache", prepare_data)

    (folder,) = (tmp_path / "cache").iterdir()
    assert (folder / "prepared.json").exists()
    assert_modes(folder, modes)


def test_the_reports_are_readable_as_the_umask_allows(modes: Modes, tmp_path: Path) -> None:
    write_reports(tmp_path, full_report())
    assert (mode_of(tmp_path / REPORT_JSON), mode_of(tmp_path / REPORT_HTML)) == (
        modes.file,
        modes.file,
    )
