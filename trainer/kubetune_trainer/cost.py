"""What a run costs in GPU-hours and money, and the budget that stops it.

A FineTuneJob's `spec.runPolicy.maxGpuHours`, `pricePerGpuHour` and `currency` reach the
trainer as environment variables (the operator's builders.py writes them; `runPolicy` is a
cluster setting and not part of the TrainingConfig). GPU-hours are the GPUs a run holds
times the wall-clock hours since its process started, setup and evaluation included, since
the GPUs are held all that time. A restarted run continues the count, so a restart costs
what it costs and the budget covers every attempt (every start into the same output
directory).

Two records carry the count across starts, both totals of the run so far (every attempt
until then), never the hours of one attempt:

- every checkpoint holds the GPU-hours at its save (training_state.TrainingState.gpu_hours);
- rank 0 keeps `<output>/cost.json` (`Ledger`), replaced atomically at the start, at every
  logged step, at every checkpoint and at the end, with the GPU-hours then and the number
  of starts.

A start resumes from the larger of the two (`resumed_gpu_hours`). Each is a running total
of one timeline, so taking the larger counts no hour twice, whereas adding them would
count the hours up to the checkpoint twice. The ledger is the larger after a crash or a
SIGKILL: it holds the crashed attempt's hours up to its last logged step, past its last
checkpoint (and a crash before the first checkpoint still costs its hours). What a crash
leaves uncounted is at most the time since the attempt's last logged step. The steps
redone after a resume are counted again: the GPUs were held twice for them. Only rank 0
reads and writes the ledger (on a multi-node job the output volume may be its own): the
other ranks resume from the checkpoint and count fewer hours; rank 0's count is the one
reported and saved, and the largest, so the first to trip the budget (any rank's trip stops
every rank). Delete cost.json together with the checkpoints to start the count again
(`kubetune run --overwrite` removes both).

The folds of a cross-validation share one budget: a fold's meter also counts the folds
before it (`GpuMeter(others=...)`), which its own checkpoints and ledger do not hold.

No torch here: the budget logic is tested with an injected clock.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

MAX_GPU_HOURS_ENV: Final = "KUBETUNE_MAX_GPU_HOURS"
PRICE_PER_GPU_HOUR_ENV: Final = "KUBETUNE_PRICE_PER_GPU_HOUR"
CURRENCY_ENV: Final = "KUBETUNE_CURRENCY"
DEFAULT_CURRENCY: Final = "USD"
SECONDS_PER_HOUR: Final = 3600
LEDGER_FILE: Final = "cost.json"
"""Under the output folder: the GPU-hours and starts of the run so far (`Ledger`)."""


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


@dataclass(frozen=True)
class Ledger:
    """What `<output>/cost.json` holds: the run's GPU-hours so far and how often it started."""

    gpu_hours: float = 0.0
    """Every attempt's GPU-hours until the last write (earlier cross-validation folds not in it)."""
    attempts: int = 0
    """Starts of the run so far, this one included."""

    @classmethod
    def read(cls, path: Path) -> Ledger:
        """The ledger at `path`; an empty one where there is none yet."""
        if not path.exists():
            return cls()
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return cls(float(record["gpuHours"]), int(record["attempts"]))
        except (ValueError, KeyError, TypeError) as error:
            raise BudgetError(
                f"{path} is not a GPU-hour ledger ({error!r}); delete it to count from zero"
            ) from None

    def write(self, path: Path) -> None:
        """Replace the file at once (a temporary file renamed): a reader never sees half of it."""
        partial = path.with_name(f".{path.name}.partial")
        record = {"gpuHours": self.gpu_hours, "attempts": self.attempts}
        partial.write_text(json.dumps(record), encoding="utf-8")
        os.replace(partial, path)


def resumed_gpu_hours(checkpoint_gpu_hours: float, ledger: Ledger) -> float:
    """Where a start's count begins: the larger of two totals of the same timeline (the
    module's docstring says why never their sum)."""
    return max(checkpoint_gpu_hours, ledger.gpu_hours)


class GpuMeter:
    """GPU-hours of a run: those of its earlier starts plus GPUs x hours since this start,
    and those of the runs before it under the same budget (earlier cross-validation folds)."""

    def __init__(
        self,
        gpus: int,
        *,
        started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        others: float = 0.0,
    ) -> None:
        self.gpus = gpus
        self._clock = clock
        self._started = clock() if started is None else started
        self._earlier = 0.0
        self._others = others

    def resume(self, earlier_gpu_hours: float) -> None:
        """Continue the count of a resumed run from its earlier starts' GPU-hours."""
        self._earlier = earlier_gpu_hours

    def own_gpu_hours(self) -> float:
        """This run's GPU-hours, every start included: what checkpoints and the ledger keep."""
        elapsed = max(0.0, self._clock() - self._started)
        return self._earlier + self.gpus * elapsed / SECONDS_PER_HOUR

    def gpu_hours(self) -> float:
        """The GPU-hours the budget compares and the reports show: the run's own and the others'."""
        return self._others + self.own_gpu_hours()
