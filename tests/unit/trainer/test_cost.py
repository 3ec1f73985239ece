"""GPU-hours, their price and the budget (kubetune_trainer.cost), on an injected clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_operator.api.v1alpha1 import CostStatus
from kubetune_trainer.cost import (
    Budget,
    BudgetError,
    GpuMeter,
    Ledger,
    RunCost,
    resumed_gpu_hours,
)


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


def test_the_earlier_folds_count_toward_the_budget_but_not_into_the_fold_own_count() -> None:
    clock = Clock(0.0)
    meter = GpuMeter(2, clock=clock, others=5.0)  # the cross-validation's earlier folds
    meter.resume(1.0)
    clock.now = 1800.0
    assert meter.own_gpu_hours() == 1.0 + 2 * 0.5  # what the fold's checkpoints keep
    assert meter.gpu_hours() == 5.0 + 2.0  # what its budget compares and its reports show
    assert Budget(max_gpu_hours=6.5).exceeded(meter.gpu_hours())


def test_a_start_resumes_from_the_larger_total_never_the_sum() -> None:
    """The checkpoint and the ledger count the same timeline; after a crash the ledger also
    holds the hours past the last checkpoint, and adding the two would count the hours up
    to the checkpoint twice."""
    assert resumed_gpu_hours(3.0, Ledger(gpu_hours=3.75, attempts=1)) == 3.75  # a crash
    assert resumed_gpu_hours(3.0, Ledger()) == 3.0  # no ledger yet
    assert resumed_gpu_hours(0.0, Ledger(gpu_hours=0.5, attempts=1)) == 0.5  # no checkpoint


def test_the_ledger_is_replaced_whole_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "cost.json"
    assert Ledger.read(path) == Ledger(0.0, 0)
    Ledger(1.25, 1).write(path)
    Ledger(2.5, 2).write(path)
    assert json.loads(path.read_text()) == {"gpuHours": 2.5, "attempts": 2}
    assert Ledger.read(path) == Ledger(2.5, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["cost.json"]  # no temporary file left


def test_a_ledger_that_is_not_one_is_refused_by_path(tmp_path: Path) -> None:
    path = tmp_path / "cost.json"
    path.write_text('{"hours": 3}')
    with pytest.raises(BudgetError, match=r"cost\.json is not a GPU-hour ledger .*delete it"):
        Ledger.read(path)


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
