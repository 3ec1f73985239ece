"""The running loss of a run, on a real (one-process) accelerator: exact means."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from kubetune_trainer.training.running_loss import RunningLoss


def test_the_log_window_is_the_mean_since_the_last_log() -> None:
    losses = RunningLoss(torch.device("cpu"))
    assert losses.close_log_window().item() == 0.0  # no batch yet
    losses.add(torch.tensor(1.0))
    losses.add(torch.tensor(2.0))
    assert losses.close_log_window().item() == pytest.approx(1.5)
    losses.add(torch.tensor(4.0))
    assert losses.close_log_window().item() == pytest.approx(4.0)


class Rewards:
    """Extra metrics that count how their windows are used."""

    def __init__(self) -> None:
        self.opened = 0

    def open_windows(self) -> None:
        self.opened += 1

    def close_log_window(self) -> dict[str, float]:
        return {"rewardMargin": 0.5}


def test_extra_metrics_open_with_the_running_loss_and_close_with_its_log_window() -> None:
    accelerator = Accelerator(cpu=True)
    rewards = Rewards()
    losses = RunningLoss(accelerator.device, rewards)
    assert rewards.opened == 1
    losses.add(torch.tensor(0.5))
    assert losses.close_extra_log_window() == {"rewardMargin": 0.5}
    assert RunningLoss(accelerator.device).close_extra_log_window() == {}
