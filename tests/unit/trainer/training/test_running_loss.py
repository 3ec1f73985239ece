"""The running loss of a run, on a real (one-process) accelerator: exact means and metrics."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from kubetune_trainer.training.running_loss import RunningLoss, gather_uneven


def test_the_log_window_is_the_mean_since_the_last_log() -> None:
    losses = RunningLoss(torch.device("cpu"))
    assert losses.close_log_window().item() == 0.0  # no batch yet
    losses.add(torch.tensor(1.0), None, None)
    losses.add(torch.tensor(2.0), None, None)
    assert losses.close_log_window().item() == pytest.approx(1.5)
    losses.add(torch.tensor(4.0), None, None)
    assert losses.close_log_window().item() == pytest.approx(4.0)


def test_a_classifiers_interval_gives_its_training_metrics_and_starts_again() -> None:
    accelerator = Accelerator(cpu=True)
    losses = RunningLoss(accelerator.device)
    losses.add(torch.tensor(0.5), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    losses.add(torch.tensor(1.5), torch.tensor([1]), torch.tensor([1]))
    losses.close_log_window()  # a log does not end the interval

    metrics = losses.close_interval(accelerator, classes=2, language_model=False)

    assert metrics["loss"] == pytest.approx(1.0)
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    assert "rocAuc" not in metrics  # predicted labels have no scores to rank
    assert losses.close_interval(accelerator, classes=2, language_model=False) == {}


def test_a_language_models_interval_gives_its_loss_and_perplexity() -> None:
    accelerator = Accelerator(cpu=True)
    losses = RunningLoss(accelerator.device)
    losses.add(torch.tensor(2.0), None, None)
    losses.add(torch.tensor(1.0), None, None)

    metrics = losses.close_interval(accelerator, classes=None, language_model=True)

    assert metrics["loss"] == pytest.approx(1.5)
    assert metrics["perplexity"] == pytest.approx(torch.exp(torch.tensor(1.5)).item())


def test_gathering_on_one_process_keeps_the_values() -> None:
    gathered = gather_uneven(Accelerator(cpu=True), torch.tensor([3, 1, 2]))
    assert gathered.tolist() == [3, 1, 2]


class Rewards:
    """Extra metrics that count how their windows are used."""

    def __init__(self) -> None:
        self.opened = 0

    def open_windows(self) -> None:
        self.opened += 1

    def close_log_window(self) -> dict[str, float]:
        return {"rewardMargin": 0.5}

    def close_interval(self, train_metrics: dict[str, float]) -> dict[str, float]:
        return {"loss": train_metrics["loss"], "rewardMargin": 0.25}


def test_extra_metrics_open_with_the_running_loss_and_close_with_its_windows() -> None:
    accelerator = Accelerator(cpu=True)
    rewards = Rewards()
    losses = RunningLoss(accelerator.device, rewards)
    assert rewards.opened == 1
    losses.add(torch.tensor(0.5), None, None)
    assert losses.close_extra_log_window() == {"rewardMargin": 0.5}
    interval = losses.close_interval(accelerator, classes=None, language_model=True)
    assert interval == {"loss": 0.5, "rewardMargin": 0.25}
    assert RunningLoss(accelerator.device).close_extra_log_window() == {}
