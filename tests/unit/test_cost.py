"""GPU-hours, their price and the budget (kubetune_trainer.cost), on an injected clock."""

from __future__ import annotations

import pytest

from kubetune_operator.api.v1alpha1 import CostStatus
from kubetune_trainer.cost import Budget, BudgetError, GpuMeter, RunCost


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_gpu_hours_are_gpus_times_the_hours_since_the_start() -> None:
    clock = Clock(100.0)
    meter = GpuMeter(4, clock=clock)
    clock.now = 100.0 + 1800
    assert meter.gpu_hours() == 2.0  # 4 GPUs x half an hour


def test_the_start_may_be_given_and_the_cpu_counts_nothing() -> None:
    clock = Clock(5400.0)
    assert GpuMeter(1, started=0.0, clock=clock).gpu_hours() == 1.5
    assert GpuMeter(0, started=0.0, clock=clock).gpu_hours() == 0.0


def test_a_resumed_run_continues_the_count_of_its_checkpoint() -> None:
    clock = Clock(0.0)
    meter = GpuMeter(8, clock=clock)
    meter.resume(3.25)  # what the checkpoint of the earlier starts holds
    clock.now = 900.0
    assert meter.gpu_hours() == 3.25 + 8 * 0.25


def test_the_budget_trips_only_past_its_limit() -> None:
    budget = Budget(max_gpu_hours=2.0)
    assert not budget.exceeded(2.0)
    assert budget.exceeded(2.0001)
    assert not Budget().exceeded(1e9)


def test_the_cost_is_priced_only_with_a_price() -> None:
    assert Budget().cost(1.5) == RunCost(1.5)
    assert Budget().cost(1.5).to_status() == {"gpuHours": 1.5}
    priced = Budget(price_per_gpu_hour=2.5, currency="EUR").cost(3.0)
    assert priced.to_status() == {"gpuHours": 3.0, "amount": 7.5, "currency": "EUR"}
    CostStatus.model_validate(priced.to_status(), by_name=False)


def test_the_budget_comes_from_the_environment_the_operator_sets() -> None:
    env = {
        "KUBETUNE_MAX_GPU_HOURS": "256.0",
        "KUBETUNE_PRICE_PER_GPU_HOUR": "2.5",
        "KUBETUNE_CURRENCY": "EUR",
    }
    assert Budget.from_env(env) == Budget(256.0, 2.5, "EUR")
    assert Budget.from_env({}) == Budget(None, None, "USD")


@pytest.mark.parametrize("text", ["0", "-1", "lots", "nan", "inf"])
def test_a_budget_that_is_not_a_positive_number_is_refused_by_name(text: str) -> None:
    with pytest.raises(BudgetError, match="KUBETUNE_MAX_GPU_HOURS must be a positive number"):
        Budget.from_env({"KUBETUNE_MAX_GPU_HOURS": text})


def test_the_message_names_the_field() -> None:
    message = Budget(max_gpu_hours=2.0).exceeded_message(2.0123)
    assert message == "the GPU budget is spent: 2.012 GPU-hours used, runPolicy.maxGpuHours is 2"
