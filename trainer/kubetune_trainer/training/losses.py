"""The training losses: weighted cross-entropy for classifiers, and the L1 penalty.

A causal language model computes its own loss (it shifts the labels and skips masked
tokens); a classifier's loss is computed here so that class weights (data.balance), row
weights (a sampler's or the data's) and label smoothing apply together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy averaged with class and row weights: sum(w * ce) / sum(w)."""
    if class_weights is None and row_weights is None:
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    per_row = F.cross_entropy(
        logits.float(), labels, label_smoothing=label_smoothing, reduction="none"
    )
    weights = torch.ones_like(per_row) if class_weights is None else class_weights[labels]
    if row_weights is not None:
        weights = weights * row_weights.float()
    return (per_row * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


def l1_penalty(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """Sum of absolute values of the given weights."""
    return torch.stack([p.abs().sum() for p in parameters]).sum()
