"""Class imbalance: how skewed the training rows are, and the remedies of data.balance.

A classifier trained on 900 rows of one class and 100 of another learns to say the big
class; the accuracy looks fine and the small class is never found. Loss weights live in
`data.class_weights`; this module holds the other remedies, as pure functions on label ids
that the data pipeline and the sampler call:

- `resample` picks the training rows to keep (oversampling repeats rows of the smaller
  classes, undersampling leaves out rows of the larger ones) until the smallest class has
  at least `targetRatio` of the largest class's rows;
- `class_balanced_weights` gives each row the probability that makes every class equally
  likely in `LengthGroupedSampler(weights=...)` (sampler: class-balanced);
- `imbalance_ratio` and `recommendation` tell the data report when no remedy is set and
  the data needs one (nothing is applied on its own).

A class with no training rows is a different problem (the model cannot learn it at all,
and no resampling or weighting makes rows appear): here it is left out of the ratio and
stays at zero rows; the label checks and `class_weights` report it.

Everything works on whole numpy arrays: the Python loops run over classes, never rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from kubetune_trainer.config import BalanceSpec

ResampleMode = Literal["none", "oversample", "undersample"]

EFFECTIVE_NUMBER_ABOVE = 50.0
"""From this imbalance ratio on, the recommendation is effective-number class weights."""
_DIGITS = 9
"""Products and quotients of the target ratio are rounded to this many decimals before
ceil/floor, so that 0.55 x 100 (55.00000000000001) asks for 55 rows, not 56."""


def imbalance_ratio(counts: Sequence[int]) -> float:
    """The largest class's rows over the smallest non-empty class's rows (1.0: balanced).

    Classes with no rows are left out (see the module docstring); with fewer than two
    non-empty classes there is nothing to compare and the ratio is 1.0.
    """
    present = _present(np.asarray(counts, dtype=np.int64))
    if present.size < 2:
        return 1.0
    return float(present.max() / present.min())


def resample(
    label_ids: npt.NDArray[np.int64],
    num_classes: int,
    mode: ResampleMode,
    target_ratio: float,
    seed: int,
) -> npt.NDArray[np.int64]:
    """Row indices of the training rows to train on, sorted (file order, repeats adjacent).

    oversample: every row is kept once, and each class with fewer than
    ceil(target_ratio x largest) rows gets that many in all, the extra rows drawn at random
    with replacement from its own rows. undersample: each class with more than
    floor(smallest / target_ratio) rows keeps a random subset of that many, without
    replacement (never fewer than the smallest class has). Either way the smallest
    non-empty class ends with at least target_ratio of the largest class's rows; classes
    with no rows stay empty. none: every row once. Deterministic for a seed.

    The target products and quotients are rounded to 9 decimals before ceil/floor, so that
    float error (0.55 x 100 = 55.00000000000001) never asks for one row more or less.
    """
    counts = _class_counts(label_ids, num_classes)
    if not 0 < target_ratio <= 1:
        raise ValueError(f"target_ratio must be in (0, 1], not {target_ratio}")
    present = _present(counts)
    if mode == "none" or present.size == 0:
        return np.arange(len(label_ids), dtype=np.int64)
    rng = np.random.default_rng(seed)
    if mode == "oversample":
        goal = math.ceil(round(target_ratio * int(present.max()), _DIGITS))
        return _oversample(label_ids, counts, goal, rng)
    if mode == "undersample":
        cap = math.floor(round(int(present.min()) / target_ratio, _DIGITS))
        return _undersample(label_ids, counts, cap, rng)
    raise ValueError(f"unknown resample mode {mode!r}")


def class_balanced_weights(
    label_ids: npt.NDArray[np.int64], num_classes: int
) -> npt.NDArray[np.float64]:
    """Each row's draw probability so that every class with rows is drawn equally often.

    A row of class c gets 1 / (classes with rows x rows of c); the probabilities sum to 1.
    """
    counts = _class_counts(label_ids, num_classes)
    if len(label_ids) == 0:
        return np.zeros(0, dtype=np.float64)
    present = np.count_nonzero(counts)
    weights: npt.NDArray[np.float64] = 1.0 / (present * counts[label_ids].astype(np.float64))
    return weights


def recommendation(counts: Sequence[int], names: Sequence[str], spec: BalanceSpec) -> str:
    """A sentence for the data report when the classes are skewed and no remedy is set.

    Empty when spec sets a remedy or the imbalance ratio is at most spec.recommendAbove.
    The advice is inverse-frequency weights (or oversampling, or class-balanced batches);
    above EFFECTIVE_NUMBER_ABOVE it is effective-number weights instead: inverse-frequency
    weights grow with the ratio (one row of the smallest class would weigh as much as the
    ratio's worth of the largest, making the loss noisy), and oversampling or class-balanced
    batches would repeat each of its rows about that many times (learnt by heart);
    effective-number weights level off once a class has more than about 1 / (1 - beta)
    rows (Cui et al. 2019).
    """
    ratio = imbalance_ratio(counts)
    if spec.is_set() or ratio <= spec.recommend_above:
        return ""
    sizes = np.asarray(counts, dtype=np.int64)
    if len(names) != len(sizes):
        raise ValueError(f"{len(names)} class names for {len(sizes)} counts")
    largest = int(np.argmax(sizes))
    smallest = int(np.argmin(np.where(sizes > 0, sizes, np.iinfo(np.int64).max)))
    return (
        f"the largest class ({names[largest]}, {_rows(sizes[largest])}) has {ratio:.1f}x the "
        f"rows of the smallest ({names[smallest]}, {_rows(sizes[smallest])}); "
        f"{_advice(ratio)}"
    )


# --- helpers ---------------------------------------------------------------------------


def _advice(ratio: float) -> str:
    if ratio > EFFECTIVE_NUMBER_ABOVE:
        return (
            "set data.balance.classWeights: effective-number (at this ratio inverse-frequency "
            "weights, oversampling and class-balanced batches would lean on a few rows)"
        )
    return (
        "set data.balance.classWeights: inverse-frequency "
        "(or resample: oversample, or sampler: class-balanced)"
    )


def _rows(count: np.int64) -> str:
    return f"{int(count)} row" if count == 1 else f"{int(count)} rows"


def _present(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    present: npt.NDArray[np.int64] = counts[counts > 0]
    return present


def _class_counts(label_ids: npt.NDArray[np.int64], num_classes: int) -> npt.NDArray[np.int64]:
    """Rows per class id; every label id must be a class id below num_classes."""
    if len(label_ids) and (label_ids.min() < 0 or label_ids.max() >= num_classes):
        found = f"{label_ids.min()} to {label_ids.max()}"
        raise ValueError(f"label ids must be class ids 0 to {num_classes - 1}; found {found}")
    counts: npt.NDArray[np.int64] = np.bincount(label_ids, minlength=num_classes).astype(np.int64)
    return counts


def _by_class(
    label_ids: npt.NDArray[np.int64], counts: npt.NDArray[np.int64], keys: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices grouped by class (ordered by `keys` within a class), and each class's start."""
    grouped: npt.NDArray[np.int64] = np.lexsort((keys, label_ids)).astype(np.int64)
    starts: npt.NDArray[np.int64] = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    return grouped, starts


def _oversample(
    label_ids: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    goal: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Every row once, plus draws with replacement that lift each non-empty class to `goal`."""
    extra = np.where(counts > 0, np.maximum(goal - counts, 0), 0)
    grouped, starts = _by_class(label_ids, counts, np.zeros(len(label_ids)))
    draw_class = np.repeat(np.arange(len(counts)), extra)
    offsets = rng.integers(0, counts[draw_class])
    drawn = grouped[starts[draw_class] + offsets]
    return np.sort(np.concatenate((np.arange(len(label_ids), dtype=np.int64), drawn)))


def _undersample(
    label_ids: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    cap: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """A random `cap` rows of each class that has more (each row at most once)."""
    grouped, starts = _by_class(label_ids, counts, rng.random(len(label_ids)))
    rank = np.arange(len(label_ids)) - starts[label_ids[grouped]]
    kept: npt.NDArray[np.int64] = np.sort(grouped[rank < cap])
    return kept
