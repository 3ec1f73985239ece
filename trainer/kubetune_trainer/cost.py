"""What a run costs in GPU-hours and money, and the budget that stops it.

A FineTuneJob's `spec.runPolicy.maxGpuHours`, `pricePerGpuHour` and `currency` reach the
trainer as environment variables (the operator's builders.py writes them; `runPolicy` is a
cluster setting and not part of the TrainingConfig). GPU-hours are the GPUs a run holds
times the wall-clock hours since its process started, setup and evaluation included, since
the GPUs are held all that time. A restarted run continues the count: the GPU-hours so far
are saved in every checkpoint (recipe.TrainingState) and `GpuMeter.resume` starts from
them, so a restart costs what it costs and the budget covers every attempt. The hours
between the last checkpoint and a crash are not in any checkpoint and are not counted.

No torch here: the budget logic is tested with an injected clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

MAX_GPU_HOURS_ENV: Final = "KUBETUNE_MAX_GPU_HOURS"
PRICE_PER_GPU_HOUR_ENV: Final = "KUBETUNE_PRICE_PER_GPU_HOUR"
CURRENCY_ENV: Final = "KUBETUNE_CURRENCY"
DEFAULT_CURRENCY: Final = "USD"
SECONDS_PER_HOUR: Final = 3600


class BudgetError(ValueError):
    """A budget or price variable that is not a positive number (the message names it)."""


@dataclass(frozen=True)
class RunCost:
    """GPU-hours so far, and their price when a price per GPU-hour is known."""

    gpu_hours: float
    amount: float | None = None
    currency: str | None = None

    def to_status(self) -> dict[str, Any]:
        """status.cost and report.json's cost: gpuHours, and amount and currency if priced."""
        cost: dict[str, Any] = {"gpuHours": self.gpu_hours}
        if self.amount is not None:
            cost |= {"amount": self.amount, "currency": self.currency}
        return cost


@dataclass(frozen=True)
class Budget:
    """The GPU-hours a run may use and the price of one GPU-hour, both optional."""

    max_gpu_hours: float | None = None
    price_per_gpu_hour: float | None = None
    currency: str = DEFAULT_CURRENCY

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Budget:
        """The budget the operator set in the environment; none where it set nothing."""
        return cls(
            max_gpu_hours=_positive(env, MAX_GPU_HOURS_ENV),
            price_per_gpu_hour=_positive(env, PRICE_PER_GPU_HOUR_ENV),
            currency=env.get(CURRENCY_ENV) or DEFAULT_CURRENCY,
        )

    def exceeded(self, gpu_hours: float) -> bool:
        """Whether `gpu_hours` is past maxGpuHours (never without a budget)."""
        return self.max_gpu_hours is not None and gpu_hours > self.max_gpu_hours

    def cost(self, gpu_hours: float) -> RunCost:
        if self.price_per_gpu_hour is None:
            return RunCost(gpu_hours)
        return RunCost(gpu_hours, gpu_hours * self.price_per_gpu_hour, self.currency)

    def exceeded_message(self, gpu_hours: float) -> str:
        """Why a run stopped early, naming the budget's field."""
        return (
            f"the GPU budget is spent: {gpu_hours:.4g} GPU-hours used, "
            f"runPolicy.maxGpuHours is {self.max_gpu_hours:g}"
        )


def _positive(env: Mapping[str, str], name: str) -> float | None:
    text = env.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise BudgetError(f"{name} must be a positive number of hours or money, got {text!r}")
    return value


class GpuMeter:
    """GPU-hours of a run: those of its earlier starts plus GPUs x hours since this start."""

    def __init__(
        self,
        gpus: int,
        *,
        started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gpus = gpus
        self._clock = clock
        self._started = clock() if started is None else started
        self._earlier = 0.0

    def resume(self, earlier_gpu_hours: float) -> None:
        """Continue the count of a resumed run from the GPU-hours its checkpoint holds."""
        self._earlier = earlier_gpu_hours

    def gpu_hours(self) -> float:
        elapsed = max(0.0, self._clock() - self._started)
        return self._earlier + self.gpus * elapsed / SECONDS_PER_HOUR
