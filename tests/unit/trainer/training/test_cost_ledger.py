"""The cost ledger of one run on an injected clock: resumes, starts counted, the file kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.cost import LEDGER_FILE, Budget, BudgetError, GpuMeter, Ledger
from kubetune_trainer.training.cost_ledger import CostLedger


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ledger(
    folder: Path, clock: Clock, *, gpus: int = 2, writer: bool = True, budget: Budget | None = None
) -> CostLedger:
    meter = GpuMeter(gpus, clock=clock, others=0.5)
    return CostLedger(meter, budget or Budget(), folder / LEDGER_FILE, writer=writer)


def test_a_first_start_counts_from_zero_and_records_itself(tmp_path: Path) -> None:
    clock = Clock()
    counted = ledger(tmp_path, clock)
    counted.resume(0.0)
    assert counted.attempts == 1
    assert Ledger.read(tmp_path / LEDGER_FILE) == Ledger(0.0, 1)

    clock.now += 1800  # half an hour on two GPUs
    counted.write()
    assert Ledger.read(tmp_path / LEDGER_FILE) == Ledger(1.0, 1)
    assert counted.own_gpu_hours() == pytest.approx(1.0)
    assert counted.cost().gpu_hours == pytest.approx(1.5)  # the earlier folds' 0.5 too


def test_a_restart_continues_from_the_larger_count_and_counts_one_more_start(
    tmp_path: Path,
) -> None:
    Ledger(3.0, 2).write(tmp_path / LEDGER_FILE)
    counted = ledger(tmp_path, Clock())
    counted.resume(2.5)  # the checkpoint saved before the crash holds less
    assert counted.attempts == 3
    assert counted.own_gpu_hours() == pytest.approx(3.0)
    assert json.loads((tmp_path / LEDGER_FILE).read_text()) == {"gpuHours": 3.0, "attempts": 3}

    later = ledger(tmp_path, Clock())
    later.resume(4.0)
    assert later.own_gpu_hours() == pytest.approx(4.0)


def test_only_the_writer_keeps_the_file(tmp_path: Path) -> None:
    counted = ledger(tmp_path, Clock(), writer=False)
    counted.resume(1.0)
    counted.write()
    assert not (tmp_path / LEDGER_FILE).exists()
    assert counted.own_gpu_hours() == pytest.approx(1.0)


def test_a_malformed_ledger_stops_the_start_with_its_path(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with pytest.raises(BudgetError, match="is not a GPU-hour ledger"):
        ledger(tmp_path, Clock()).resume(0.0)


def test_the_budget_is_held_against_every_hour_counted(tmp_path: Path) -> None:
    clock = Clock()
    budget = Budget(max_gpu_hours=1.0, price_per_gpu_hour=2.0, currency="EUR")
    counted = ledger(tmp_path, clock, budget=budget)
    counted.resume(0.0)
    clock.now += 900  # 0.5 GPU-hours of its own, 1.0 with the earlier folds'
    assert not counted.exceeded(counted.cost())
    clock.now += 1
    cost = counted.cost()
    assert counted.exceeded(cost)
    assert cost.amount == pytest.approx(2.0 * cost.gpu_hours)
    assert counted.exceeded_message(cost) == (
        "the GPU budget is spent: 1.001 GPU-hours used, runPolicy.maxGpuHours is 1"
    )
