"""The GPU-hours of a run as it trains: its meter, its budget and rank 0's cost.json.

cost.py holds the parts (`GpuMeter`, `Budget`, the `Ledger` file) and says why a start
resumes from the larger of its checkpoint's count and the ledger's. This is how one run
uses them: every process reads rank 0's ledger at the start (a collective, so a malformed
file stops every process with its message instead of rank 0 alone), and rank 0 writes it
at the start, at every logged step, at every checkpoint and at the end.
"""

from __future__ import annotations

from pathlib import Path

from accelerate.utils import broadcast_object_list

from kubetune_trainer.cost import (
    Budget,
    BudgetError,
    GpuMeter,
    Ledger,
    RunCost,
    resumed_gpu_hours,
)


class CostLedger:
    """One start's GPU-hour count, the budget it is held to, and the ledger it keeps."""

    def __init__(self, meter: GpuMeter, budget: Budget, path: Path, *, writer: bool) -> None:
        """`writer`: this process keeps the ledger at `path` (rank 0)."""
        self.meter = meter
        self.budget = budget
        self.path = path
        self.writer = writer
        self.attempts = 1
        """Starts of the run, this one included (1 until `resume` reads the ledger)."""

    def resume(self, checkpoint_gpu_hours: float) -> None:
        """Continue the count of the earlier starts from the checkpoint's count or rank 0's
        ledger, whichever is larger, and count this start in the ledger."""
        ledger = self._read_everywhere()
        self.meter.resume(resumed_gpu_hours(checkpoint_gpu_hours, ledger))
        self.attempts = ledger.attempts + 1
        self.write()

    def _read_everywhere(self) -> Ledger:
        """Rank 0's ledger, on every process; a malformed one is a BudgetError on each."""
        read: list[Ledger | str] = [Ledger()]
        if self.writer:
            try:
                read = [Ledger.read(self.path)]
            except BudgetError as error:
                read = [str(error)]
        broadcast_object_list(read)
        if isinstance(read[0], str):
            raise BudgetError(read[0])
        return read[0]

    def write(self) -> None:
        """Rank 0 records the run's own GPU-hours so far, for a start after a crash."""
        if self.writer:
            Ledger(self.meter.own_gpu_hours(), self.attempts).write(self.path)

    def own_gpu_hours(self) -> float:
        """The run's GPU-hours without earlier folds': what a checkpoint keeps."""
        return self.meter.own_gpu_hours()

    def cost(self) -> RunCost:
        """What the run has cost so far, earlier folds included."""
        return self.budget.cost(self.meter.gpu_hours())

    def exceeded(self, cost: RunCost) -> bool:
        """Whether `cost` is past the budget (never without one)."""
        return self.budget.exceeded(cost.gpu_hours)

    def exceeded_message(self, cost: RunCost) -> str:
        """Why the budget stopped the run, naming its field."""
        return self.budget.exceeded_message(cost.gpu_hours)
