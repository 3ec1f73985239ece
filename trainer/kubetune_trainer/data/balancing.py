"""Balancing the classes of the training rows: resampling and class weights.

A classifier trained on 95% of one class learns to say that class. data.balance offers two
remedies, applied after the quality rules (so that no dropped row is copied): resampling
the training rows (balance.py draws the rows) and weighting each class in the loss. A
weighting that needs rows of every class says which classes have none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from kubetune_trainer.config import BalanceSpec
from kubetune_trainer.data.balance import resample
from kubetune_trainer.data.rows import DataError, Rows, listing


def resampled(
    train: Rows, num_classes: int, spec: BalanceSpec, seed: int
) -> tuple[Rows, dict[str, int], dict[str, int]]:
    """The training rows after data.balance.resample, and the rows it added and removed."""
    if spec.resample == "none":
        return train, {}, {}
    indices = resample(train.label_ids, num_classes, spec.resample, spec.target_ratio, seed)
    change = len(indices) - train.table.num_rows
    added = {"oversampled": change} if change > 0 else {}
    removed = {"undersampled": -change} if change < 0 else {}
    return train.take(indices), added, removed


def class_weights(
    counts: Sequence[int], mode: str, beta: float, *, names: Sequence[str] | None = None
) -> list[float] | None:
    """Loss weight per class (data.balance.classWeights), or None for mode `none`.

    inverse-frequency: n / (k x count); effective-number (Cui et al. 2019):
    (1 - beta) / (1 - beta^count), scaled so that the k weights sum to k.
    """
    if mode == "none":
        return None
    sizes = np.asarray(counts, dtype=np.float64)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        classes = list(names) if names is not None else [str(i) for i in range(len(sizes))]
        listed = ", ".join(f"{classes[i]}: {int(c)}" for i, c in enumerate(sizes))
        raise DataError(
            f"data.balance.classWeights: {mode} weights need training rows of every class; "
            f"{listing([classes[i] for i in empty])} have none (rows per class: {listed})"
        )
    weights = _WEIGHTINGS[mode](sizes, beta)
    return [float(weight) for weight in weights]


def _inverse_frequency(sizes: npt.NDArray[np.float64], beta: float) -> npt.NDArray[np.float64]:
    weights: npt.NDArray[np.float64] = sizes.sum() / (len(sizes) * sizes)
    return weights


def _effective_number(sizes: npt.NDArray[np.float64], beta: float) -> npt.NDArray[np.float64]:
    raw = (1.0 - beta) / (1.0 - np.power(beta, sizes))
    weights: npt.NDArray[np.float64] = raw * len(sizes) / raw.sum()
    return weights


_WEIGHTINGS: dict[str, Callable[[npt.NDArray[np.float64], float], npt.NDArray[np.float64]]] = {
    "inverse-frequency": _inverse_frequency,
    "effective-number": _effective_number,
}
