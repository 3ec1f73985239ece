"""Each layer group's gradient norm on a real tiny BERT, against torch's own norm."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer import freezing
from kubetune_trainer.training.layer_grad_norms import LayerGradNorms
from tests.unit.trainer.test_freezing import bert


def test_the_norms_are_each_groups_norm_and_are_read_once() -> None:
    model = bert(layers=2)
    norms = LayerGradNorms(model, torch.device("cpu"))
    assert norms.take() is None
    inputs = torch.randint(5, 50, (4, 12))
    model(input_ids=inputs, labels=torch.tensor([0, 1, 0, 1])).loss.backward()

    norms.measure()
    taken = norms.take()

    assert taken is not None
    assert list(taken) == ["embeddings", "block 0", "block 1", "head"]
    named = dict(model.named_parameters())
    groups = freezing.find_layer_groups(model).named()
    for group, value in taken.items():
        grads = [named[n].grad for n in groups[group]]
        expected = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])
        )
        assert value == pytest.approx(expected.item(), rel=1e-5)
    assert norms.take() is None


def test_a_group_without_gradients_has_norm_zero() -> None:
    model = bert(layers=2)
    for parameter in model.bert.embeddings.parameters():
        parameter.requires_grad_(False)
    norms = LayerGradNorms(model, torch.device("cpu"))
    model(input_ids=torch.randint(5, 50, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
    norms.measure()
    taken = norms.take()
    assert taken is not None
    assert taken["embeddings"] == 0.0
    assert taken["head"] > 0.0


def test_disabled_norms_measure_nothing() -> None:
    """A sharded model: no process holds whole gradients, so the log has no layer norms."""
    model = bert(layers=2)
    norms = LayerGradNorms(model, torch.device("cpu"), enabled=False)
    inputs = torch.randint(5, 50, (4, 12))
    model(input_ids=inputs, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    norms.measure()
    assert norms.take() is None
