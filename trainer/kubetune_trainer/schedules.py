"""Optimizers, learning-rate schedules and the learning-rate range test.

Every schedule is a multiplier on each parameter group's own rate, so discriminative
learning rates (lower for lower layers) survive warmup and decay unchanged in ratio.
A group's rate is the base rate times its discriminative factor (freezing.py's
`learning_rate_scale`, kept in the group as "scale"), computed only by `group_rate`:
when the optimizer is built, and when the range test tries or applies a base rate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler
from transformers.optimization import Adafactor

from kubetune_trainer.config import LearningRateFinderSpec, TrainingSpec
from kubetune_trainer.freezing import HEAD, FreezingPlan

ONE_CYCLE_RATIO = 32.0
"""Slanted triangular rates end at peak / 32 (Howard and Ruder, 2018)."""
RANGE_TEST_SMOOTHING = 0.98
RANGE_TEST_BLOWUP = 4.0
"""The range test stops once the smoothed loss exceeds this multiple of its best value."""
NO_DECAY_MARKERS = ("bias", "norm", "LayerNorm", "layer_norm", "ln_")


def group_rate(base_lr: float, scale: float) -> float:
    """A parameter group's learning rate: the base rate times its discriminative factor."""
    return base_lr * scale


def optimizer_groups(
    model: nn.Module, plan: FreezingPlan, base_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Parameter groups with discriminative learning rates and no decay on biases and norms.

    Layer groups that share a rate share an optimizer group ("layers" names them; "scale"
    is their discriminative factor): each optimizer group is one fused kernel launch.
    """
    group_of = {n: g for g, names in plan.groups.named().items() for n in names}
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    layers: dict[tuple[float, bool], list[str]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = parameter.ndim >= 2 and not any(m in name for m in NO_DECAY_MARKERS)
        group = group_of.get(name, HEAD)
        key = (plan.learning_rate_scale(group), decays)
        buckets.setdefault(key, []).append(parameter)
        if group not in layers.setdefault(key, []):
            layers[key].append(group)
    return [
        {
            "params": params,
            "lr": group_rate(base_lr, scale),
            "weight_decay": weight_decay if decays else 0.0,
            "layers": layers[(scale, decays)],
            "scale": scale,
        }
        for (scale, decays), params in buckets.items()
    ]


def decaying_parameters(
    model: nn.Module, groups: list[dict[str, Any]]
) -> list[tuple[str, nn.Parameter]]:
    """The named parameters of the groups with weight decay (biases and norms have none)."""
    decaying = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    return [(name, p) for name, p in model.named_parameters() if id(p) in decaying]


def set_base_rate(optimizer: Optimizer, base_lr: float) -> None:
    """Give every group the rate of `base_lr` (the range test's trials and its suggestion)."""
    for group in optimizer.param_groups:
        group["lr"] = group_rate(base_lr, group["scale"])


def peak_rates(optimizer: Optimizer) -> dict[str, float]:
    """Each layer group's rate before the schedule scales it (its peak), by layer group."""
    return {
        layer: float(group.get("initial_lr", group["lr"]))
        for group in optimizer.param_groups
        for layer in group["layers"]
    }


def build_optimizer(spec: TrainingSpec, groups: list[dict[str, Any]]) -> Optimizer:
    """AdamW (fused), Adafactor with a fixed rate, or SGD with momentum."""
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.learning_rate, momentum=0.9)
    if spec.optimizer == "adafactor":
        return Adafactor(  # type: ignore[no-untyped-call]
            groups,
            lr=spec.learning_rate,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    # The fused kernel (CPU and CUDA) does the whole update in one pass: ~3x faster steps.
    return torch.optim.AdamW(groups, lr=spec.learning_rate, fused=True)


def warmup_steps(spec: TrainingSpec, total_steps: int) -> int:
    """Warmup length in optimizer steps, from warmupSteps or warmupRatio."""
    if spec.warmup_steps is not None:
        return min(spec.warmup_steps, total_steps)
    return math.ceil(spec.warmup_ratio * total_steps)


def build_scheduler(optimizer: Optimizer, spec: TrainingSpec, total_steps: int) -> LambdaLR:
    """The configured schedule over `total_steps` optimizer steps."""
    warmup = warmup_steps(spec, total_steps)
    if spec.scheduler == "one-cycle":
        return LambdaLR(optimizer, slanted_triangular(warmup or total_steps // 10, total_steps))
    names = {
        "linear": "linear",
        "cosine": "cosine",
        "cosine-with-restarts": "cosine_with_restarts",
        "constant": "constant_with_warmup",
        "polynomial": "polynomial",
    }
    options: dict[str, Any] = {}
    if spec.scheduler == "cosine-with-restarts":
        options["num_cycles"] = spec.scheduler_cycles
    if spec.scheduler == "polynomial":
        options["power"] = spec.polynomial_power
        options["lr_end"] = 0.0
    scheduler: LambdaLR = get_scheduler(
        names[spec.scheduler],
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=options,
    )
    return scheduler


def build_process_scheduler(
    optimizer: Optimizer, spec: TrainingSpec, total_steps: int, processes: int
) -> LambdaLR:
    """The schedule for accelerate to prepare: a prepared scheduler steps once per process
    for each optimizer step, so its warmup and its length count `processes` times over."""
    scaled = spec.model_copy(update={"warmup_steps": warmup_steps(spec, total_steps) * processes})
    return build_scheduler(optimizer, scaled, total_steps * processes)


def slanted_triangular(peak_step: int, total_steps: int) -> Callable[[int], float]:
    """ULMFiT's one-cycle schedule: a short linear climb, then a long linear descent."""
    peak = max(peak_step, 1)

    def multiplier(step: int) -> float:
        progress = step / peak if step < peak else 1 - (step - peak) / max(total_steps - peak, 1)
        return (1 + max(progress, 0.0) * (ONE_CYCLE_RATIO - 1)) / ONE_CYCLE_RATIO

    return multiplier


@dataclass(frozen=True)
class RangeTestResult:
    """The learning-rate range test's curve and its suggestion."""

    learning_rates: list[float]
    losses: list[float]
    suggestion: float

    def to_report(self) -> dict[str, Any]:
        return {
            "learningRates": self.learning_rates,
            "losses": self.losses,
            "suggestion": self.suggestion,
        }


def range_test_rates(spec: LearningRateFinderSpec) -> list[float]:
    """Exponentially spaced rates from startLr to endLr."""
    ratio = spec.end_lr / spec.start_lr
    return [spec.start_lr * ratio ** (i / (spec.steps - 1)) for i in range(spec.steps)]


def run_range_test(
    spec: LearningRateFinderSpec, train_step: Callable[[float], float]
) -> RangeTestResult:
    """Call `train_step(lr)` with growing rates until the loss blows up; suggest a rate.

    `train_step` runs one optimizer step at that base rate and returns the loss.
    """
    rates: list[float] = []
    smoothed: list[float] = []
    average = 0.0
    for i, rate in enumerate(range_test_rates(spec)):
        loss = train_step(rate)
        average = RANGE_TEST_SMOOTHING * average + (1 - RANGE_TEST_SMOOTHING) * loss
        value = average / (1 - RANGE_TEST_SMOOTHING ** (i + 1))
        if not math.isfinite(value):
            break
        rates.append(rate)
        smoothed.append(value)
        if value > RANGE_TEST_BLOWUP * min(smoothed):
            break
    return RangeTestResult(rates, smoothed, steepest_descent(rates, smoothed, spec.start_lr))


def find_learning_rate(
    spec: LearningRateFinderSpec,
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: Optimizer,
    loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batches: Iterator[dict[str, torch.Tensor]],
    after_step: Callable[[], None],
) -> RangeTestResult:
    """The range test on a prepared model and optimizer, each step at a base rate on the
    next of `batches`; the model's weights and the optimizer's state are restored after."""
    model_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())

    def train_step(rate: float) -> float:
        set_base_rate(optimizer, rate)
        loss = loss_of(next(batches))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        after_step()
        return float(accelerator.reduce(loss.detach(), "mean").item())

    result = run_range_test(spec, train_step)
    accelerator.unwrap_model(model).load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)
    return result


def steepest_descent(rates: Sequence[float], losses: Sequence[float], fallback: float) -> float:
    """The rate where the smoothed loss falls fastest per log-rate, before its minimum."""
    end = min(range(len(losses)), key=losses.__getitem__, default=0)
    if end < 2:
        return fallback
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(rates[i + 1]) - math.log(rates[i]))
        for i in range(end)
    ]
    return rates[min(range(len(slopes)), key=slopes.__getitem__)]
