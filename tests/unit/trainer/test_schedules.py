"""Learning-rate schedules and the range test's suggestion, on exact numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from kubetune_trainer.config import LearningRateFinderSpec, TrainingSpec
from kubetune_trainer.schedules import (
    ONE_CYCLE_RATIO,
    build_optimizer,
    build_scheduler,
    range_test_rates,
    run_range_test,
    steepest_descent,
    warmup_steps,
)


def rates(scheduler_fields: dict[str, Any], total: int = 100) -> list[float]:
    spec = TrainingSpec.model_validate({"learningRate": 1.0, **scheduler_fields}, by_name=False)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(
        spec, [{"params": [parameter], "lr": 1.0, "layers": ["head"], "scale": 1.0}]
    )
    scheduler = build_scheduler(optimizer, spec, total)
    seen = []
    for _ in range(total):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return seen


def test_linear_with_warmup_ratio() -> None:
    seen = rates({"scheduler": "linear", "warmupRatio": 0.1})
    assert seen[0] == 0.0
    assert seen[5] == pytest.approx(0.5)
    assert seen[10] == pytest.approx(1.0)
    assert seen[55] == pytest.approx(0.5)


def test_cosine_reaches_half_at_the_middle_of_the_decay() -> None:
    seen = rates({"scheduler": "cosine", "warmupSteps": 20})
    assert seen[20] == pytest.approx(1.0)
    assert seen[60] == pytest.approx(0.5)


def test_cosine_with_restarts_jumps_back_up() -> None:
    seen = rates({"scheduler": "cosine-with-restarts", "schedulerCycles": 2})
    assert seen[49] < 0.01
    assert seen[50] == pytest.approx(1.0)


def test_constant_and_polynomial() -> None:
    assert rates({"scheduler": "constant", "warmupSteps": 10})[10:] == [1.0] * 90
    quadratic = rates({"scheduler": "polynomial", "polynomialPower": 2.0})
    assert quadratic[50] == pytest.approx(0.25)


def test_one_cycle_is_a_slanted_triangle() -> None:
    seen = rates({"scheduler": "one-cycle", "warmupRatio": 0.1})
    assert seen[0] == pytest.approx(1 / ONE_CYCLE_RATIO)
    assert seen[10] == pytest.approx(1.0)
    assert max(seen) == seen[10]
    assert seen[99] == pytest.approx((1 + (1 - 89 / 90) * (ONE_CYCLE_RATIO - 1)) / ONE_CYCLE_RATIO)


def test_discriminative_ratios_survive_the_schedule() -> None:
    spec = TrainingSpec.model_validate({"scheduler": "cosine", "warmupSteps": 5}, by_name=False)
    head, low = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(
        spec,
        [
            {"params": [head], "lr": 1e-3, "layers": ["head"], "scale": 1.0},
            {"params": [low], "lr": 2.5e-4, "layers": ["block 0"], "scale": 0.25},
        ],
    )
    scheduler = build_scheduler(optimizer, spec, 50)
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    head_lr, low_lr = scheduler.get_last_lr()
    assert low_lr / head_lr == pytest.approx(0.25)


def test_warmup_steps_from_ratio_round_up() -> None:
    spec = TrainingSpec.model_validate({"warmupRatio": 0.06}, by_name=False)
    assert warmup_steps(spec, 95) == 6


def test_range_rates_are_exponentially_spaced() -> None:
    spec = LearningRateFinderSpec.model_validate(
        {"startLr": 1e-6, "endLr": 1.0, "steps": 13}, by_name=False
    )
    found = range_test_rates(spec)
    assert found[0] == pytest.approx(1e-6)
    assert found[-1] == pytest.approx(1.0)
    assert found[6] == pytest.approx(1e-3)


def test_range_test_suggests_a_rate_before_the_blow_up() -> None:
    # A loss that falls fastest around lr = 1e-3 and explodes beyond 1e-1.
    def loss_at(rate: float) -> float:
        x = math.log10(rate)
        return 2.0 - 1.5 / (1 + math.exp(-(x + 3) * 3)) + (50.0 if x > -1 else 0.0)

    spec = LearningRateFinderSpec.model_validate({"startLr": 1e-6, "endLr": 10.0}, by_name=False)
    result = run_range_test(spec, loss_at)
    assert result.learning_rates[-1] < 1.0  # stopped at the blow-up
    assert 1e-4 < result.suggestion < 1e-2
    assert len(result.losses) == len(result.learning_rates)


def test_steepest_descent_needs_a_descent() -> None:
    assert steepest_descent([1e-5, 1e-4], [1.0, 2.0], fallback=3e-5) == 3e-5
