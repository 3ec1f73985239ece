"""Class imbalance: the ratio, resampling, class-balanced draws and the recommendation."""

from __future__ import annotations

import math
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune_trainer.config import BalanceSpec
from kubetune_trainer.data import LengthGroupedSampler
from kubetune_trainer.data.balance import (
    EFFECTIVE_NUMBER_ABOVE,
    ResampleMode,
    class_balanced_weights,
    imbalance_ratio,
    recommendation,
    resample,
)
from tests.unit.trainer.data.test_data import assert_sorted_batches_in_random_order, window_batches


def labels_of(counts: list[int], seed: int | None = 0) -> npt.NDArray[np.int64]:
    """Label ids with `counts[c]` rows of class c, shuffled (seed None: grouped by class)."""
    labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    if seed is None:
        return labels
    return labels[np.random.default_rng(seed).permutation(len(labels))]


def counts_after(
    labels: npt.NDArray[np.int64], indices: npt.NDArray[np.int64], classes: int
) -> list[int]:
    counts: list[int] = np.bincount(labels[indices], minlength=classes).tolist()
    return counts


def spec(**fields: Any) -> BalanceSpec:
    return BalanceSpec.model_validate(fields)


# --- imbalance_ratio ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "ratio"),
    [
        ([900, 100], 9.0),
        ([100, 900], 9.0),
        ([50, 20, 5], 10.0),
        ([7, 7, 7], 1.0),
        ([10, 0, 5], 2.0),  # the empty class is left out
        ([12], 1.0),
        ([12, 0], 1.0),
        ([0, 0], 1.0),
        ([], 1.0),
    ],
)
def test_imbalance_ratio(counts: list[int], ratio: float) -> None:
    assert imbalance_ratio(counts) == ratio


# --- resample: hand-made counts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "mode", "ratio", "expected"),
    [
        ([90, 10], "oversample", 1.0, [90, 90]),
        ([90, 10], "oversample", 0.5, [90, 45]),
        ([90, 10], "oversample", 0.1, [90, 10]),  # already there
        ([90, 10], "oversample", 0.3, [90, 27]),
        ([50, 20, 5, 0], "oversample", 0.5, [50, 25, 25, 0]),
        ([50, 20, 5, 0], "oversample", 0.21, [50, 20, 11, 0]),  # ceil(10.5)
        ([100, 7], "oversample", 0.55, [100, 55]),  # 0.55 x 100 is 55.00000000000001
        ([90, 10], "undersample", 1.0, [10, 10]),
        ([90, 10], "undersample", 0.5, [20, 10]),
        ([90, 10], "undersample", 0.1, [90, 10]),
        ([90, 10], "undersample", 0.3, [33, 10]),  # floor(33.3)
        ([50, 20, 5, 0], "undersample", 0.5, [10, 10, 5, 0]),
        ([50, 20, 5, 0], "undersample", 0.2, [25, 20, 5, 0]),
        ([80, 33], "undersample", 0.55, [60, 33]),  # 33 / 0.55 is 59.99999999999999
        ([90, 10], "none", 0.5, [90, 10]),
    ],
)
def test_resample_counts(
    counts: list[int], mode: ResampleMode, ratio: float, expected: list[int]
) -> None:
    labels = labels_of(counts)
    indices = resample(labels, len(counts), mode, ratio, seed=0)
    assert counts_after(labels, indices, len(counts)) == expected
    present = [count for count in expected if count]
    assert mode == "none" or min(present) / max(present) >= ratio


def test_none_keeps_every_row_in_order() -> None:
    labels = labels_of([90, 10])
    assert resample(labels, 2, "none", 0.5, seed=0).tolist() == list(range(100))


def test_oversampling_keeps_every_row_and_repeats_only_the_small_class() -> None:
    labels = labels_of([90, 10])
    indices = resample(labels, 2, "oversample", 1.0, seed=3)
    times = np.bincount(indices, minlength=100)
    assert times.min() >= 1  # every original row is kept
    assert (times[labels == 0] == 1).all()  # the largest class is untouched
    assert times[labels == 1].sum() == 90  # 10 originals + 80 draws of its own rows
    assert times[labels == 1].max() > 1
    assert indices.tolist() == sorted(indices.tolist())  # file order, repeats adjacent


def test_oversampling_draws_with_replacement_from_all_of_a_class() -> None:
    labels = labels_of([1000, 10])
    extra = np.bincount(resample(labels, 2, "oversample", 1.0, seed=1), minlength=1010) - 1
    drawn = extra[labels == 1]
    assert drawn.sum() == 990
    # 990 draws over 10 rows: each row 99 times on average, sd sqrt(990 x 0.1 x 0.9) = 9.4.
    assert np.abs(drawn - 99).max() < 5 * math.sqrt(990 * 0.1 * 0.9)


def test_undersampling_never_repeats_and_keeps_the_smallest_class() -> None:
    labels = labels_of([90, 10])
    indices = resample(labels, 2, "undersample", 0.5, seed=3)
    assert len(np.unique(indices)) == len(indices) == 30
    assert set(np.flatnonzero(labels == 1)) <= set(indices.tolist())
    assert indices.tolist() == sorted(indices.tolist())


@pytest.mark.parametrize("mode", ["oversample", "undersample"])
def test_resample_is_deterministic_for_a_seed(mode: ResampleMode) -> None:
    labels = labels_of([90, 10])
    first = resample(labels, 2, mode, 0.5, seed=7)
    assert np.array_equal(first, resample(labels, 2, mode, 0.5, seed=7))
    assert not np.array_equal(first, resample(labels, 2, mode, 0.5, seed=8))


@pytest.mark.parametrize("mode", ["oversample", "undersample"])
def test_a_class_without_rows_stays_empty(mode: ResampleMode) -> None:
    labels = labels_of([0, 40, 0, 8])
    indices = resample(labels, 4, mode, 1.0, seed=0)
    assert counts_after(labels, indices, 4) == (
        [0, 40, 0, 40] if mode == "oversample" else [0, 8, 0, 8]
    )


def test_resample_of_no_rows() -> None:
    empty = np.zeros(0, dtype=np.int64)
    for mode in get_args(ResampleMode):
        assert resample(empty, 2, mode, 1.0, seed=0).tolist() == []


def test_resample_refuses_label_ids_outside_the_classes() -> None:
    with pytest.raises(ValueError, match="class ids 0 to 1; found 0 to 2"):
        resample(np.array([0, 1, 2]), 2, "oversample", 1.0, seed=0)


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 60), min_size=1, max_size=5).filter(any),
    mode=st.sampled_from(["oversample", "undersample"]),
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_resample_properties(
    counts: list[int], mode: ResampleMode, ratio: float, seed: int
) -> None:
    labels = labels_of(counts, seed)
    indices = resample(labels, len(counts), mode, ratio, seed)
    after = np.bincount(labels[indices], minlength=len(counts))
    before = np.asarray(counts)
    present = after[before > 0]
    assert (after[before == 0] == 0).all()
    assert present.min() / present.max() >= ratio - 1e-9
    assert np.all(np.diff(indices) >= 0)
    if mode == "oversample":
        assert (after >= before).all()
        assert after.max() == before.max()
        assert (np.bincount(indices, minlength=len(labels)) >= 1).all()
    else:
        assert (after <= before).all()
        assert present.min() == before[before > 0].min()
        assert len(np.unique(indices)) == len(indices)


# --- class_balanced_weights --------------------------------------------------------------


def test_class_balanced_weights_give_every_class_the_same_mass() -> None:
    labels = labels_of([900, 90, 0, 10])
    weights = class_balanced_weights(labels, 4)
    assert weights.sum() == pytest.approx(1.0)
    per_class = np.bincount(labels, weights=weights, minlength=4)
    assert per_class == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3])
    assert weights[labels == 0] == pytest.approx(1 / (3 * 900))
    assert weights[labels == 3] == pytest.approx(1 / (3 * 10))


def test_class_balanced_weights_of_balanced_classes_are_uniform() -> None:
    weights = class_balanced_weights(labels_of([5, 5, 5, 5]), 4)
    assert weights == pytest.approx(np.full(20, 1 / 20))


# --- recommendation ----------------------------------------------------------------------


def test_recommendation_names_the_classes_counts_and_ratio() -> None:
    assert recommendation([900, 100], ["positive", "negative"], spec()) == (
        "the largest class (positive, 900 rows) has 9.0x the rows of the smallest "
        "(negative, 100 rows); set data.balance.classWeights: inverse-frequency "
        "(or resample: oversample, or sampler: class-balanced)"
    )


def test_recommendation_skips_empty_classes_for_the_smallest() -> None:
    text = recommendation([0, 40, 300, 10], ["a", "b", "c", "d"], spec())
    assert text.startswith(
        "the largest class (c, 300 rows) has 30.0x the rows of the smallest (d, 10 rows); "
    )


def test_recommendation_for_a_very_skewed_set_is_effective_number() -> None:
    text = recommendation([5100, 1], ["common", "rare"], spec())
    assert EFFECTIVE_NUMBER_ABOVE < 5100
    assert text == (
        "the largest class (common, 5100 rows) has 5100.0x the rows of the smallest "
        "(rare, 1 row); set data.balance.classWeights: effective-number (at this ratio "
        "inverse-frequency weights, oversampling and class-balanced batches would lean on a "
        "few rows)"
    )
    assert recommendation([50, 1], ["a", "b"], spec()).endswith(
        "inverse-frequency (or resample: oversample, or sampler: class-balanced)"
    )


def test_no_recommendation_below_the_threshold() -> None:
    assert recommendation([300, 100], ["a", "b"], spec()) == ""  # 3.0x, not above 3
    assert recommendation([301, 100], ["a", "b"], spec()).startswith("the largest class (a")
    assert recommendation([900, 100], ["a", "b"], spec(recommendAbove=10)) == ""
    assert recommendation([50, 50, 50], ["a", "b", "c"], spec()) == ""
    assert recommendation([50, 0], ["a", "b"], spec()) == ""


@pytest.mark.parametrize(
    "remedy",
    [
        {"classWeights": "inverse-frequency"},
        {"classWeights": "effective-number"},
        {"resample": "oversample"},
        {"resample": "undersample"},
        {"sampler": "class-balanced"},
    ],
)
def test_no_recommendation_when_a_remedy_is_set(remedy: dict[str, str]) -> None:
    assert recommendation([900, 100], ["a", "b"], spec(**remedy)) == ""


# --- LengthGroupedSampler with weights ---------------------------------------------------

SAMPLER_COUNTS = [700, 250, 50]


@pytest.fixture(scope="module")
def skewed() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(labels, lengths) of 1,000 rows in three classes, lengths 5 to 60 tokens."""
    labels = labels_of(SAMPLER_COUNTS, seed=11)
    lengths = np.random.default_rng(12).integers(5, 61, size=len(labels))
    return labels, lengths


def test_weighted_sampler_draws_every_class_equally_often(
    skewed: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> None:
    labels, lengths = skewed
    sampler = LengthGroupedSampler(lengths, 8, seed=3, weights=class_balanced_weights(labels, 3))
    epochs, per_class = 100, np.zeros(3, dtype=np.int64)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn = sampler.order()
        assert len(drawn) == len(sampler) == len(lengths)
        per_class += np.bincount(labels[drawn], minlength=3)
    # 100,000 independent draws, each of a class with probability 1/3: binomial counts.
    draws = epochs * len(lengths)
    sd = math.sqrt(draws * (1 / 3) * (2 / 3))
    assert np.abs(per_class - draws / 3).max() < 5 * sd
    # Unweighted, the classes come in their file shares (700 : 250 : 50).
    plain = np.bincount(labels[LengthGroupedSampler(lengths, 8, seed=3).order()], minlength=3)
    assert plain.tolist() == SAMPLER_COUNTS


def test_weighted_sampler_repeats_rows_of_the_small_class(
    skewed: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> None:
    labels, lengths = skewed
    sampler = LengthGroupedSampler(lengths, 8, seed=3, weights=class_balanced_weights(labels, 3))
    times = np.bincount(sampler.order(), minlength=len(lengths))
    assert times[labels == 2].max() > 1
    assert (times[labels == 0] == 0).any()


def test_weighted_sampler_is_deterministic_per_seed_and_epoch(
    skewed: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> None:
    labels, lengths = skewed
    weights = class_balanced_weights(labels, 3)
    first, second = (LengthGroupedSampler(lengths, 8, seed=1, weights=weights) for _ in range(2))
    epoch_zero = list(first)
    assert epoch_zero == list(second)
    first.set_epoch(1)
    assert list(first) != epoch_zero
    second.set_epoch(1)
    assert list(first) == list(second)
    assert list(LengthGroupedSampler(lengths, 8, seed=2, weights=weights)) != epoch_zero


def test_weighted_sampler_still_groups_by_length(
    skewed: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> None:
    labels, lengths = skewed
    batch_size = 4
    sampler = LengthGroupedSampler(
        lengths, batch_size, seed=5, weights=class_balanced_weights(labels, 3)
    )
    assert_sorted_batches_in_random_order(window_batches(sampler.order(), lengths, batch_size))


def test_weighted_sampler_never_draws_a_row_of_weight_zero(
    skewed: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> None:
    labels, lengths = skewed
    weights = (labels == 1).astype(np.float64)  # need not sum to 1
    drawn = LengthGroupedSampler(lengths, 8, seed=0, weights=weights).order()
    assert set(labels[drawn].tolist()) == {1}


def test_no_weights_is_the_plain_shuffle(
    skewed: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> None:
    _, lengths = skewed
    order = LengthGroupedSampler(lengths, 8, seed=4, weights=None).order()
    assert np.array_equal(order, LengthGroupedSampler(lengths, 8, seed=4).order())
    assert sorted(order.tolist()) == list(range(len(lengths)))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(3), "3 sampling weights for 1000 rows"),
        (np.r_[-1.0, np.ones(999)], "finite, >= 0 and not all zero"),
        (np.r_[np.nan, np.ones(999)], "finite, >= 0 and not all zero"),
        (np.zeros(1000), "finite, >= 0 and not all zero"),
    ],
)
def test_weighted_sampler_refuses_bad_weights(
    skewed: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    weights: npt.NDArray[np.float64],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        LengthGroupedSampler(skewed[1], 8, weights=weights)
