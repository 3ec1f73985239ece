"""The throughput meter's windows on an injected clock: exact samples/s and tokens/s."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from kubetune_trainer.flops import batch_training_flops, shape_from_config
from kubetune_trainer.training.throughput import ThroughputMeter, mfu_basis


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_window_is_the_speed_of_every_process_since_it_opened() -> None:
    clock = Clock()
    meter = ThroughputMeter(processes=2, gpus=0, clock=clock)
    meter.add_batch(8, 32)
    meter.add_batch(8, 16)
    clock.now += 2.0

    speed = meter.close_window()

    assert speed.samples_per_second == pytest.approx(2 * 16 / 2.0)
    assert speed.tokens_per_second == pytest.approx(2 * (8 * 32 + 8 * 16) / 2.0)
    assert speed.mfu is None  # no peak on a CPU


def test_the_run_total_adds_the_closed_windows_only() -> None:
    clock = Clock()
    meter = ThroughputMeter(processes=1, gpus=0, clock=clock)
    assert meter.run_throughput() == {"tokensPerSecond": None, "mfu": None}
    meter.add_batch(4, 10)
    clock.now += 1.0
    meter.close_window()
    clock.now += 5.0  # the log's own time: not in any window
    meter.open_window()
    meter.add_batch(4, 20)
    clock.now += 3.0
    meter.close_window()
    meter.open_window()
    meter.add_batch(100, 100)  # not closed yet

    assert meter.run_throughput() == {"tokensPerSecond": pytest.approx(120 / 4.0), "mfu": None}


def test_with_a_peak_and_a_shape_mfu_is_the_share_of_the_peak_used() -> None:
    clock = Clock()
    shape = shape_from_config(
        BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2), causal_lm=False
    )
    meter = ThroughputMeter(1, 1, 1e12, shape, clock=clock)
    meter.add_batch(2, 64)
    clock.now += 0.5

    speed = meter.close_window()

    assert speed.mfu == pytest.approx(batch_training_flops(shape, 2, 64) / 0.5 / 1e12)


def test_no_mfu_basis_on_the_cpu() -> None:
    model = BertForSequenceClassification(
        BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2)
    )
    assert mfu_basis(model, torch.device("cpu"), causal_lm=False) == (None, None)
