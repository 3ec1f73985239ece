"""Validation metrics of a real tiny model over a real loader, against hand computations."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from accelerate import Accelerator
from torch.utils.data import DataLoader

from kubetune_trainer.data import IGNORED_LABEL
from kubetune_trainer.training.evaluation import (
    classifier_evaluation,
    language_model_evaluation,
)
from kubetune_trainer.training.token_losses import token_losses
from tests.unit.trainer.test_freezing import bert


def rows(count: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    return [
        {"input_ids": torch.randint(5, 50, (6,)), "labels": torch.tensor(i % 2)}
        for i in range(count)
    ]


def test_the_classifier_is_scored_on_every_row_once() -> None:
    accelerator = Accelerator(cpu=True)
    model = bert(layers=1).eval()
    data = rows(10)
    loader = accelerator.prepare(DataLoader(data, batch_size=4))  # type: ignore[arg-type]
    batches: list[int] = []

    metrics, probabilities, labels = classifier_evaluation(
        model, accelerator, loader, lambda: batches.append(1)
    )

    inputs = torch.stack([r["input_ids"] for r in data])
    model.eval()  # the evaluation hands the model back in training mode
    with torch.no_grad():
        logits = model(input_ids=inputs).logits
    expected = torch.softmax(logits, dim=-1).numpy()
    assert probabilities == pytest.approx(expected, abs=1e-5)
    assert labels.tolist() == [i % 2 for i in range(10)]
    assert metrics["loss"] == pytest.approx(
        F.cross_entropy(logits, torch.tensor(labels)).item(), rel=1e-5
    )
    assert len(batches) == 3


class TinyLanguageModel(torch.nn.Module):
    """Logits that prefer token 1 everywhere, whatever the input."""

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        logits = torch.zeros(*input_ids.shape, 4)
        logits[..., 1] = 2.0
        return type("Output", (), {"logits": logits})()


def test_a_language_model_is_scored_per_predicted_token() -> None:
    accelerator = Accelerator(cpu=True)
    data = [
        {"input_ids": torch.tensor([0, 1, 2]), "labels": torch.tensor([0, 1, 2])},
        {"input_ids": torch.tensor([0, 3, 0]), "labels": torch.tensor([0, 3, IGNORED_LABEL])},
    ]
    loader = accelerator.prepare(DataLoader(data, batch_size=1))  # type: ignore[arg-type]

    metrics = language_model_evaluation(TinyLanguageModel(), accelerator, loader, lambda: None)

    log_softmax = torch.log_softmax(torch.tensor([0.0, 2.0, 0.0, 0.0]), dim=0)
    per_token = [-log_softmax[1], -log_softmax[2], -log_softmax[3]]  # 3 predicted tokens
    expected = float(sum(per_token) / 3)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(torch.exp(torch.tensor(expected)).item())


def test_token_losses_skip_ignored_labels() -> None:
    logits = torch.zeros(1, 3, 4)
    sums, counts = token_losses(logits, torch.tensor([[0, 1, IGNORED_LABEL]]))
    assert counts.tolist() == [1]
    assert sums.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
