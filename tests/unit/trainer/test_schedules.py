"""Learning-rate schedules and the range test's suggestion, on exact numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from accelerate import Accelerator

from kubetune_trainer.config import LearningRateFinderSpec, TrainingSpec
from kubetune_trainer.freezing import build_plan
from kubetune_trainer.schedules import (
    ONE_CYCLE_RATIO,
    build_optimizer,
    build_process_scheduler,
    build_scheduler,
    decaying_parameters,
    find_learning_rate,
    group_rate,
    optimizer_groups,
    peak_rates,
    range_test_rates,
    run_range_test,
    set_base_rate,
    steepest_descent,
    warmup_steps,
)
from tests.unit.trainer.test_freezing import bert, spec


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


def test_discriminative_learning_rates_and_no_decay_groups() -> None:
    model = bert(layers=2)
    plan = build_plan(model, spec(layerwiseLrDecay=0.5), 10)
    groups = optimizer_groups(model, plan, base_lr=1e-3, weight_decay=0.01)
    rates = {(layer, g["weight_decay"]): g["lr"] for g in groups for layer in g["layers"]}
    assert rates[("head", 0.01)] == pytest.approx(1e-3)
    assert rates[("block 1", 0.01)] == pytest.approx(5e-4)
    assert rates[("block 0", 0.01)] == pytest.approx(2.5e-4)
    assert rates[("embeddings", 0.01)] == pytest.approx(1.25e-4)
    no_decay = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(n.endswith("bias") or "LayerNorm" in n for n in (names[id(p)] for p in no_decay))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(groups) == 8  # four rates, each with and without decay


def test_layers_sharing_a_rate_share_an_optimizer_group() -> None:
    model = bert(layers=4)
    plan = build_plan(model, spec(), 10)
    groups = optimizer_groups(model, plan, base_lr=1e-3, weight_decay=0.01)
    assert len(groups) == 2
    assert groups[0]["layers"] == ["embeddings", "block 0", "block 1", "block 2", "block 3", "head"]


def test_a_group_rate_is_the_base_rate_times_its_factor() -> None:
    assert group_rate(2e-3, 0.25) == pytest.approx(5e-4)


def test_a_new_base_rate_keeps_the_discriminative_ratios() -> None:
    model = bert(layers=2)
    plan = build_plan(model, spec(layerwiseLrDecay=0.5), 10)
    optimizer = torch.optim.AdamW(optimizer_groups(model, plan, base_lr=1e-3, weight_decay=0.0))

    set_base_rate(optimizer, 4e-2)

    rates = peak_rates(optimizer)
    assert rates == pytest.approx(
        {"head": 4e-2, "block 1": 2e-2, "block 0": 1e-2, "embeddings": 5e-3}
    )


def test_peak_rates_are_the_rates_before_the_schedule_scales_them() -> None:
    model = bert(layers=2)
    plan = build_plan(model, spec(layerwiseLrDecay=0.5), 10)
    optimizer = torch.optim.AdamW(optimizer_groups(model, plan, base_lr=1e-3, weight_decay=0.0))
    spec_fields = {"learningRate": 1e-3, "warmupSteps": 10}
    scheduler = build_scheduler(
        optimizer, TrainingSpec.model_validate(spec_fields, by_name=False), 100
    )

    assert optimizer.param_groups[0]["lr"] == 0.0  # the first warmup step
    assert peak_rates(optimizer)["head"] == pytest.approx(1e-3)
    assert peak_rates(optimizer)["embeddings"] == pytest.approx(1.25e-4)
    assert scheduler.get_last_lr()[0] == 0.0


def test_a_prepared_scheduler_counts_each_step_once_per_process() -> None:
    spec = TrainingSpec.model_validate(
        {"learningRate": 1.0, "warmupSteps": 10, "scheduler": "linear"}, by_name=False
    )
    parameter = torch.nn.Parameter(torch.zeros(1))
    group = {"params": [parameter], "lr": 1.0, "layers": ["head"], "scale": 1.0}
    optimizer = build_optimizer(spec, [group])
    scheduler = build_process_scheduler(optimizer, spec, 100, processes=2)
    seen = []
    for _ in range(200):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen[10] == pytest.approx(0.5)  # half way through a warmup of 2 x 10
    assert seen[20] == pytest.approx(1.0)
    assert seen[110] == pytest.approx(0.5)  # half way down the 2 x 90 that follow
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0)


def test_the_range_test_leaves_the_model_and_optimizer_as_they_were() -> None:
    accelerator = Accelerator(cpu=True)
    model = bert(layers=2)
    plan = build_plan(model, spec(layerwiseLrDecay=0.5), 10)
    optimizer = torch.optim.AdamW(optimizer_groups(model, plan, base_lr=1e-3, weight_decay=0.0))
    model, optimizer = accelerator.prepare(model, optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    finder = LearningRateFinderSpec.model_validate(
        {"startLr": 1e-5, "endLr": 1.0, "steps": 12}, by_name=False
    )
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(5, 50, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}
    steps: list[int] = []

    result = find_learning_rate(
        finder,
        accelerator,
        model,
        optimizer,
        lambda b: model(**b).loss,
        iter(lambda: dict(batch), None),
        lambda: steps.append(1),
    )

    assert len(steps) >= len(result.learning_rates) >= 2
    assert result.learning_rates[0] == pytest.approx(1e-5)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert optimizer.state_dict()["state"] == {}
    rates = peak_rates(optimizer)  # the trials' rates are undone too
    assert rates == pytest.approx(
        {"head": 1e-3, "block 1": 5e-4, "block 0": 2.5e-4, "embeddings": 1.25e-4}
    )


def test_the_decaying_parameters_are_the_weights_not_the_biases_or_norms() -> None:
    model = bert(layers=2)
    plan = build_plan(model, spec(), 10)
    groups = optimizer_groups(model, plan, base_lr=1e-3, weight_decay=0.01)
    names = [name for name, _ in decaying_parameters(model, groups)]
    assert "classifier.weight" in names
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert not any(n.endswith("bias") or "LayerNorm" in n for n in names)
    assert decaying_parameters(model, optimizer_groups(model, plan, 1e-3, 0.0)) == []
