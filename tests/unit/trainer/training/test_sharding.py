"""training.sharding: the FSDP plugin built from the config, and a run of one process
refused before it loads anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.config import TrainingConfig, TrainingSpec
from kubetune_trainer.training.recipe import Recipe
from kubetune_trainer.training.sharding import (
    ShardingError,
    block_classes,
    check_processes,
    fsdp_plugin,
)


def training(**fields: Any) -> TrainingSpec:
    return TrainingSpec.model_validate(fields, by_name=False)


def test_no_plugin_without_sharding() -> None:
    assert fsdp_plugin(training()) is None


def test_full_sharding_reshards_after_forward_and_saves_shards() -> None:
    plugin = fsdp_plugin(training(sharding="fsdp"))
    assert plugin is not None
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.activation_checkpointing is False  # transformers' own (modeling.py)


def test_gradients_and_optimizer_sharding_keeps_parameters_gathered() -> None:
    spec = training(sharding="fsdp", fsdp={"strategy": "gradients-and-optimizer"})
    plugin = fsdp_plugin(spec)
    assert plugin is not None
    assert plugin.reshard_after_forward is False


def test_sharding_needs_two_processes() -> None:
    with pytest.raises(ShardingError, match=r"^training\.sharding: fsdp needs two or more"):
        check_processes(training(sharding="fsdp"), 1)
    check_processes(training(sharding="fsdp"), 2)
    check_processes(training(), 1)


def test_a_sharded_run_of_one_process_stops_in_setup_with_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # accelerate records a given plugin in the environment: keep it out of other tests.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(tmp_path / "no-model")},
            "data": {"train": {"source": str(tmp_path / "no.csv")}},
            "training": {"sharding": "fsdp"},
        },
        by_name=False,
    )
    recipe = Recipe(config, tmp_path, job_name="test", env={})
    with pytest.raises(ShardingError, match="this run has 1"):
        recipe.setup()


def test_blocks_are_the_transformer_layers_not_the_embeddings(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tests.tiny import make_tiny_causal_lm, make_tiny_model

    texts = ["a good film", "a bad film"]
    bert = AutoModelForSequenceClassification.from_pretrained(
        make_tiny_model(tmp_path / "bert", texts)
    )
    gpt = AutoModelForCausalLM.from_pretrained(make_tiny_causal_lm(tmp_path / "gpt", texts))
    assert "BertEmbeddings" in bert._no_split_modules  # the one accelerate would shard twice
    assert block_classes(bert) == ["BertLayer"]
    assert block_classes(gpt) == ["GPT2Block"]
