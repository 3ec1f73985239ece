"""Validation metrics over the whole validation set, every process's rows together.

A classifier is scored on its class probabilities (metrics.py); a language model on its
mean loss per predicted token and its perplexity. Batches are sharded across processes;
`gather_for_metrics` drops the rows the last batch repeats to fill every process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from accelerate import Accelerator
from torch.utils.data import DataLoader

from kubetune_trainer.examine.final_model import predict
from kubetune_trainer.metrics import classification_metrics, language_model_metrics
from kubetune_trainer.training.token_losses import row_token_losses


def classifier_evaluation(
    model: torch.nn.Module,
    accelerator: Accelerator,
    loader: DataLoader[Any],
    batch_done: Callable[[], None],
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """A classifier's metrics, class probabilities and labels."""
    logits, labels = predict(model, accelerator, loader, batch_done)
    loss = float(F.cross_entropy(logits, labels).item())
    probabilities = torch.softmax(logits, dim=-1).numpy()
    return (
        classification_metrics(labels.numpy(), probabilities, loss),
        probabilities,
        labels.numpy(),
    )


def language_model_evaluation(
    model: torch.nn.Module,
    accelerator: Accelerator,
    loader: DataLoader[Any],
    batch_done: Callable[[], None],
) -> dict[str, float]:
    """Mean loss per predicted token over the validation rows, and its perplexity."""
    model.eval()
    sums, counts = [], []
    for batch in loader:
        labels = batch.pop("labels")
        with torch.no_grad():
            row_sums, row_counts = row_token_losses(model, accelerator, batch, labels)
        row_sums, row_counts = accelerator.gather_for_metrics((row_sums, row_counts))
        sums.append(row_sums.cpu())
        counts.append(row_counts.cpu())
        batch_done()
    model.train()
    loss = float(torch.cat(sums).sum() / torch.cat(counts).sum().clamp_min(1))
    return language_model_metrics(loss)
