"""Where a run is in its freezing plan: what trains now, and the log of what trained when.

The plan (freezing.py) answers for any epoch and step; asking it at every optimizer step
would rebuild a set of every parameter name each time, so the tracker keeps the answer
until the schedule releases another group (`TrainableSet`). The log gets an entry at the
start of each epoch and whenever a group is released mid-epoch (gradual unfreezing by
steps), unless nothing changed since the last entry; the log is the training state's, saved
in every checkpoint and shown in the report.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from kubetune_trainer.freezing import FreezingPlan


class TrainableSet(NamedTuple):
    """What trains at one stage of the schedule."""

    stage: tuple[str, ...] | None
    """The non-head groups released so far; None before the first question."""
    names: frozenset[str]
    """The parameter names that may change."""
    l1_parameters: list[torch.nn.Parameter]
    """The L1-penalised parameters among them."""


class FreezingTracker:
    """The trainable set of the current stage and the freezing log of one run."""

    def __init__(
        self, plan: FreezingPlan, l1_parameters: list[tuple[str, torch.nn.Parameter]]
    ) -> None:
        """`l1_parameters`: the named parameters an L1 penalty applies to while they train."""
        self.plan = plan
        self.l1_parameters = l1_parameters
        self._current = TrainableSet(None, frozenset(), [])
        self._logged_stage: tuple[str, ...] | None = None

    def trainable(self, epoch: int, step: int) -> TrainableSet:
        """What trains at this (0-based) epoch and global optimizer step."""
        stage = tuple(self.plan.unfrozen_groups(epoch, step))
        if self._current.stage != stage:
            names = self.plan.trainable_at(epoch, step)
            active = [p for name, p in self.l1_parameters if name in names]
            self._current = TrainableSet(stage, names, active)
        return self._current

    def released_since_logged(self) -> bool:
        """Whether the schedule released a group since the last `note`."""
        return self._current.stage != self._logged_stage

    def note(
        self, log: list[dict[str, Any]], epoch: int, step: int, peak_rates: dict[str, float]
    ) -> dict[str, Any] | None:
        """Append to `log` what trains now and at which peak rates, unless the last entry
        has the same epoch, trainable and partly trainable groups; the entry, or None."""
        self._logged_stage = tuple(self.plan.unfrozen_groups(epoch, step))
        entry = self.plan.describe(epoch, step)
        entry["learningRates"] = {
            group: peak_rates[group] for group in entry["trainable"] if group in peak_rates
        }
        entry["message"] = freezing_summary(entry)
        last = log[-1] if log else None
        if last is not None and all(
            last[key] == entry[key] for key in ("epoch", "trainable", "partial")
        ):
            return None
        log.append(entry)
        return entry


def freezing_summary(entry: dict[str, Any]) -> str:
    """One line for the console: what trains this epoch and at which peak rates."""
    rates = entry["learningRates"]
    trained = ", ".join(f"{g} ({rates[g]:.2g})" if g in rates else g for g in entry["trainable"])
    frozen = ", ".join(entry["frozen"]) or "nothing"
    return f"epoch {entry['epoch']} trains {trained}; frozen: {frozen}"
