"""Freezing plans on real (tiny) models: groups found generically, schedules, exact effects."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from kubetune_trainer import freezing
from kubetune_trainer.config import FreezingSpec


def bert(layers: int = 4) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def spec(**fields: Any) -> FreezingSpec:
    return FreezingSpec.model_validate(fields, by_name=False)


def test_bert_groups() -> None:
    groups = freezing.find_layer_groups(bert(layers=4))
    assert len(groups.blocks) == 4
    assert all(n.startswith("bert.encoder.layer.2.") for n in groups.blocks[2])
    assert "bert.embeddings.word_embeddings.weight" in groups.embeddings
    assert "bert.embeddings.LayerNorm.weight" in groups.embeddings
    assert set(groups.head) == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }


def test_gpt2_groups_found_without_bert_names() -> None:
    config = GPT2Config(
        vocab_size=50, n_embd=16, n_layer=3, n_head=2, n_positions=32, num_labels=2, pad_token_id=0
    )
    groups = freezing.find_layer_groups(GPT2ForSequenceClassification(config))
    assert len(groups.blocks) == 3
    assert all(n.startswith("transformer.h.1.") for n in groups.blocks[1])
    assert set(groups.embeddings) == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert set(groups.head) == {"transformer.ln_f.weight", "transformer.ln_f.bias", "score.weight"}


def test_every_parameter_is_in_exactly_one_group() -> None:
    model = bert()
    groups = freezing.find_layer_groups(model)
    flat = [n for names in groups.named().values() for n in names]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())


def released(plan: freezing.FreezingPlan, epoch: int, step: int = 0) -> list[str]:
    return plan.unfrozen_groups(epoch, step)


def test_no_schedule_trains_everything_but_the_permanently_frozen() -> None:
    model = bert()
    plan = freezing.build_plan(model, spec(freezeEmbeddings=True, freezeLayers=2), 10)
    trainable = plan.trainable_at(0, 0)
    groups = plan.groups
    assert not set(groups.embeddings) & trainable
    assert not (set(groups.blocks[0]) | set(groups.blocks[1])) & trainable
    assert set(groups.blocks[2]) | set(groups.blocks[3]) | set(groups.head) <= trainable


def test_gradual_unfreezing_by_epoch_releases_one_group_per_epoch_top_down() -> None:
    plan = freezing.build_plan(bert(layers=3), spec(gradualUnfreezing={"every": 1}), 10)
    assert released(plan, 0) == []
    assert released(plan, 1) == ["block 2"]
    assert released(plan, 2) == ["block 2", "block 1"]
    assert released(plan, 4) == ["block 2", "block 1", "block 0", "embeddings"]
    assert released(plan, 9) == ["block 2", "block 1", "block 0", "embeddings"]


def test_head_only_epochs_then_two_groups_every_twenty_steps() -> None:
    fields = {
        "headOnlyEpochs": 1,
        "gradualUnfreezing": {"every": 20, "unit": "steps", "groupsPerStep": 2},
    }
    plan = freezing.build_plan(bert(layers=4), spec(**fields), steps_per_epoch=50)
    assert released(plan, 0, 49) == []
    assert released(plan, 1, 50) == ["block 3", "block 2"]
    assert released(plan, 1, 69) == ["block 3", "block 2"]
    assert released(plan, 1, 70) == ["block 3", "block 2", "block 1", "block 0"]
    assert plan.describe(1, 70)["frozen"] == ["embeddings"]


def test_patterns_override_groups() -> None:
    fields = {
        "freezeLayers": 4,
        "trainableModules": ["*LayerNorm*"],
        "frozenModules": ["classifier.bias"],
    }
    plan = freezing.build_plan(bert(layers=4), spec(**fields), 10)
    trainable = plan.trainable_at(0, 0)
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in trainable
    assert "bert.encoder.layer.0.attention.self.query.weight" not in trainable
    assert "classifier.bias" not in trainable
    assert "classifier.weight" in trainable
    described = plan.describe(0, 0)
    assert described["partial"] == ["block 0", "block 1", "block 2", "block 3", "head"]
    assert described["frozen"] == []


def one_step(model: torch.nn.Module, trainable: frozenset[str]) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    inputs = torch.randint(5, 50, (4, 12))
    loss = model(input_ids=inputs, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    freezing.drop_frozen_gradients(model, trainable)
    optimizer.step()
    return before


def test_frozen_parameters_are_bit_identical_after_a_step() -> None:
    model = bert(layers=3)
    plan = freezing.build_plan(
        model, spec(freezeEmbeddings=True, gradualUnfreezing={"every": 1}), 10
    )
    frozen_count = freezing.freeze_permanently(model, plan)
    assert frozen_count == len(plan.groups.embeddings)
    trainable = plan.trainable_at(1, 10)  # head and the top block
    before = one_step(model, trainable)
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert not torch.equal(parameter, before[name]), name
        else:
            assert torch.equal(parameter, before[name]), name


def test_a_pattern_that_matches_no_parameter_is_named_with_the_fix() -> None:
    with pytest.raises(freezing.FreezingError) as raised:
        freezing.build_plan(bert(), spec(frozenModules=["encoder.layer.0.*"]), 10)
    assert str(raised.value) == (
        "freezing.frozenModules: 'encoder.layer.0.*' matches no parameter of the model "
        "(a pattern matches whole parameter names); '*encoder.layer.0.*' would match"
    )


def test_a_trainable_pattern_that_matches_nothing_shows_the_names_there_are() -> None:
    with pytest.raises(freezing.FreezingError, match=r"^freezing\.trainableModules: 'nope'") as e:
        freezing.build_plan(bert(), spec(trainableModules=["nope"]), 10)
    assert "'bert.embeddings.word_embeddings.weight'" in str(e.value)


def test_freeze_layers_beyond_the_depth_names_the_depth() -> None:
    with pytest.raises(freezing.FreezingError) as raised:
        freezing.build_plan(bert(layers=2), spec(freezeLayers=1000), 10)
    assert str(raised.value) == (
        "freezing.freezeLayers: 1000 is deeper than the model, which has 2 blocks; "
        "at most 2 freezes them all"
    )


def test_freezing_every_layer_still_trains_the_head() -> None:
    plan = freezing.build_plan(bert(layers=2), spec(freezeLayers=2, freezeEmbeddings=True), 10)
    assert plan.trainable_at(0, 0) == frozenset(plan.groups.head)


def test_a_plan_that_freezes_everything_is_refused_naming_the_fields() -> None:
    model = bert(layers=2)
    fields = {"frozenModules": ["bert.pooler.*", "classifier.*"], "freezeLayers": 2}
    with pytest.raises(freezing.FreezingError) as raised:
        freezing.build_plan(model, spec(**fields, freezeEmbeddings=True), 10)
    count = len(list(model.parameters()))
    assert str(raised.value) == (
        "freezing.frozenModules, freezing.freezeLayers, freezing.freezeEmbeddings: all "
        f"{count} parameter tensors of the model would be frozen, so nothing would train; "
        "freeze less, or name what trains in freezing.trainableModules"
    )
    assert all(p.requires_grad for p in model.parameters())  # nothing was changed


def test_a_frozen_head_under_a_head_first_schedule_is_refused() -> None:
    fields = {"frozenModules": ["bert.pooler.*", "classifier.*"], "headOnlyEpochs": 1}
    with pytest.raises(freezing.FreezingError, match=r"freezing\.headOnlyEpochs trains only"):
        freezing.build_plan(bert(layers=2), spec(**fields), 10)


def test_a_star_in_frozen_modules_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match=r"frozenModules: '\*' freezes every parameter"):
        spec(frozenModules=["*"])
    assert spec(frozenModules=["*"], trainableModules=["classifier.*"]).frozen_modules == ["*"]
