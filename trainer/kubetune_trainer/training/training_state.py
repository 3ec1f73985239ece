"""What a resumed run needs besides weights, optimizer and RNGs, saved in every checkpoint.

The recipe registers the state with accelerate (`register_for_checkpointing`), so
`save_state` and `load_state` carry it with the model: the position in the data, the best
evaluation so far, and the curves and logs the report draws, which a resumed run continues
instead of starting again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kubetune_trainer.checkpoints import checkpoint_name
from kubetune_trainer.metrics import is_better


@dataclass
class TrainingState:
    """What a resumed run needs besides weights, optimizer and RNGs; saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_checkpoint: str = ""
    evaluations_without_improvement: int = 0
    train_losses: list[list[float]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    freezing_log: list[dict[str, Any]] = field(default_factory=list)
    range_test: dict[str, Any] | None = None
    learning_rates: list[list[float]] = field(default_factory=list)
    """[step, the highest group's learning rate] at every logged step."""
    layer_grad_norms: list[list[Any]] = field(default_factory=list)
    """[step, {layer group: gradient norm before clipping}] at every logged step."""
    gpu_hours: float = 0.0
    """GPU-hours of the run when the checkpoint was saved, earlier starts included."""
    generation: dict[str, Any] | None = None
    """evaluation.generation: the sampled prompts and references, with the completions and
    metrics of the starting model (before) and of the best evaluation (after); report.json's
    `generation` section (training/generation.py)."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record_log(
        self, loss: float, learning_rate: float, layer_grad_norms: dict[str, float] | None
    ) -> None:
        """The curves' points of the logged step `self.step`."""
        self.train_losses.append([self.step, loss])
        self.learning_rates.append([self.step, learning_rate])
        if layer_grad_norms is not None:
            self.layer_grad_norms.append([self.step, layer_grad_norms])

    def track_best(self, metric: str, value: float, min_delta: float) -> None:
        """Count the evaluation of this step as the best one or as one more without progress."""
        if is_better(metric, value, self.best_metric, min_delta):
            self.best_metric = value
            self.best_checkpoint = checkpoint_name(self.step)
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
