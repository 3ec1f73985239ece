"""training.objective dpo or simpo in the recipe: the reference, the loss, and the rewards.

SimPO has no reference. DPO's reference is the starting model, frozen, and it costs one
forward pass without gradients per response; where it comes from depends on what trains:

- With training.lora it is the training model itself with its adapters disabled (peft's
  `disable_adapter`), run beside every batch: no second copy of the model in memory, and
  one more forward pass per training and validation batch.
- Without LoRA a frozen copy would double the model's memory, so the reference
  log-probabilities of every training and validation row are computed once, in setup,
  after the model loads and before training or a resume changes its weights: one forward
  pass over all rows per start of the run, shared out across the processes and gathered.
  They travel with the rows as two columns (data.REFERENCE_COLUMNS), so every batch and
  every restart reads the same numbers, and resumed runs stay exact.

Both run in evaluation mode (no dropout) under the run's autocast. The reward metrics of
the training batches are summed on the device, as the running loss is, since the last log;
the window is reduced across processes once, when it closes. At each evaluation the
training side of the rewards is scored like the validation's, on a fixed sample of
training rows (loaders.training_sample).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader

from kubetune_trainer.config import PreferenceSpec, TrainingConfig
from kubetune_trainer.data import REFERENCE_COLUMNS, PreferenceCollator, PreparedData
from kubetune_trainer.training.loaders import pad_multiple
from kubetune_trainer.training.preference_loss import (
    REWARD_METRICS,
    PairLogProbs,
    PairRewards,
    pair_log_probs,
    preference_losses,
    simpo_losses,
)
from kubetune_trainer.training.token_losses import row_token_losses

MODEL_INPUTS = ("input_ids", "attention_mask")
Reference = Literal["adapters", "rows"] | None
"""Where the reference log-probabilities come from: the model with its LoRA adapters
disabled, the batch (computed once, REFERENCE_COLUMNS), or nowhere (simpo)."""


class RewardSums:
    """Each reward metric summed over the rows of the batches since the window opened."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sums = torch.zeros(len(REWARD_METRICS) + 1, device=device)
        """The metrics in REWARD_METRICS order, then the row count."""

    def add(self, rewards: PairRewards) -> None:
        per_row = rewards.per_row()
        sums = [per_row[name].sum() for name in REWARD_METRICS]
        rows = torch.tensor(float(len(rewards.chosen)), device=self.device)
        self._sums = self._sums + torch.stack([*sums, rows]).float()

    def close(self, accelerator: Accelerator) -> dict[str, float]:
        """The means over every process's rows since the window opened ({} for none), and
        an empty window."""
        total = accelerator.reduce(self._sums, "sum").tolist()
        self._sums = torch.zeros_like(self._sums)
        rows = total[-1]
        if not rows:
            return {}
        return {name: value / rows for name, value in zip(REWARD_METRICS, total[:-1], strict=True)}


class PreferenceObjective:
    """The loss and metrics of a preference run's batches, and where its reference comes from."""

    def __init__(
        self, spec: PreferenceSpec, accelerator: Accelerator, reference: Reference
    ) -> None:
        self.spec = spec
        self.accelerator = accelerator
        self.reference = reference
        self.log_window = RewardSums(accelerator.device)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A training batch's mean loss; its rewards go into the log window."""
        losses, rewards = self._scores(model, batch)
        self.log_window.add(rewards)
        return losses.mean()

    def open_windows(self) -> None:
        """Forget the batches before training starts (the learning-rate range test's): the
        running loss opens this window with its own (running_loss.ExtraMetrics)."""
        self.log_window = RewardSums(self.accelerator.device)

    def close_log_window(self) -> dict[str, float]:
        """The reward metrics since the last log, over every process."""
        return self.log_window.close(self.accelerator)

    def evaluate(
        self,
        model: torch.nn.Module,
        accelerator: Accelerator,
        loader: DataLoader[Any],
        batch_done: Callable[[], None],
    ) -> dict[str, float]:
        """The mean loss and reward metrics over every validation row of every process
        (the signature of evaluation.py's functions)."""
        model.eval()
        columns: list[list[torch.Tensor]] = [[] for _ in range(len(REWARD_METRICS) + 1)]
        for batch in loader:
            with torch.no_grad():
                losses, rewards = self._scores(model, batch)
            per_row = rewards.per_row()
            values = (losses, *(per_row[name] for name in REWARD_METRICS))
            for column, gathered in zip(
                columns, accelerator.gather_for_metrics(values), strict=True
            ):
                column.append(gathered.float().cpu())
            batch_done()
        model.train()
        means = [float(torch.cat(column).mean()) for column in columns]
        return dict(zip(("loss", *REWARD_METRICS), means, strict=True))

    def _scores(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, PairRewards]:
        labels = batch["labels"]
        inputs = {name: batch[name] for name in MODEL_INPUTS}
        if self.reference is None:
            return simpo_losses(self._log_probs(model, inputs, labels), self.spec)
        if self.reference == "adapters":
            reference = self._without_adapters(model, inputs, labels)
            reference_chosen, reference_rejected = reference.chosen, reference.rejected
        else:
            reference_chosen, reference_rejected = (batch[name] for name in REFERENCE_COLUMNS)
        policy = self._log_probs(model, inputs, labels)
        return preference_losses(policy, reference_chosen, reference_rejected, self.spec)

    def _without_adapters(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> PairLogProbs:
        """The starting model's log-probabilities: the LoRA model with its adapters off."""
        peft_model = self.accelerator.unwrap_model(model)
        with peft_model.disable_adapter(), _frozen(model):
            return self._log_probs(model, inputs, labels)

    def _log_probs(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> PairLogProbs:
        return pair_log_probs(*row_token_losses(model, self.accelerator, inputs, labels))


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """No gradients and no dropout for the reference's pass; the model's mode after."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


def preference_objective(
    config: TrainingConfig,
    model: torch.nn.Module,
    accelerator: Accelerator,
    data: PreparedData,
) -> PreferenceObjective | None:
    """A preference run's objective (None for sft); for dpo without LoRA, first the
    reference log-probabilities of every row of `data`, added to it as columns."""
    training = config.training
    if training.objective == "sft":
        return None
    if training.objective == "simpo":
        return PreferenceObjective(training.preference, accelerator, None)
    if training.lora is None:
        batch_size = config.evaluation.batch_size or 2 * config.training.batch_size
        collator = PreferenceCollator(0, pad_multiple(accelerator.device))  # pads are masked
        model.to(accelerator.device)
        for split in ("train", "validation"):
            rows = getattr(data, split)
            setattr(
                data,
                split,
                with_reference_columns(model, rows, accelerator, collator, batch_size),
            )
    reference: Reference = "rows" if training.lora is None else "adapters"
    return PreferenceObjective(training.preference, accelerator, reference)


def with_reference_columns(
    model: torch.nn.Module,
    rows: datasets.Dataset,
    accelerator: Accelerator,
    collator: PreferenceCollator,
    batch_size: int,
) -> datasets.Dataset:
    """`rows` with the starting model's summed log-probabilities of each row's chosen and
    rejected response; each process scores its share of the rows, and all get all."""
    indices = list(range(len(rows)))
    with accelerator.split_between_processes(indices) as mine:
        scored = _reference_log_probs(model, rows.select(mine), accelerator, collator, batch_size)
    pairs: list[tuple[float, float]] = gather_object(scored)
    chosen, rejected = REFERENCE_COLUMNS
    rows = rows.add_column(chosen, [pair[0] for pair in pairs])
    return rows.add_column(rejected, [pair[1] for pair in pairs])


def _reference_log_probs(
    model: torch.nn.Module,
    rows: datasets.Dataset,
    accelerator: Accelerator,
    collator: PreferenceCollator,
    batch_size: int,
) -> list[tuple[float, float]]:
    columns = [c for c in rows.column_names if c != "length"]
    loader = DataLoader(
        rows.select_columns(columns).with_format("torch"),
        batch_size=batch_size,
        collate_fn=collator,
    )
    scored: list[tuple[float, float]] = []
    with _frozen(model), accelerator.autocast():
        for batch in loader:
            batch = {name: tensor.to(accelerator.device) for name, tensor in batch.items()}
            inputs = {name: batch[name] for name in MODEL_INPUTS}
            losses = row_token_losses(model, accelerator, inputs, batch["labels"])
            log_probs = pair_log_probs(*losses)
            scored += zip(log_probs.chosen.tolist(), log_probs.rejected.tolist(), strict=True)
    return scored
