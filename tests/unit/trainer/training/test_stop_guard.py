"""The stop guard with real signals sent to this process and a real (one-process) reduce."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from accelerate import Accelerator

from kubetune_trainer.training.stop_guard import CTRL_C_NOTICE, STOP_SIGNALS, StopGuard


def guard(env: dict[str, str] | None = None) -> tuple[StopGuard, list[str]]:
    said: list[str] = []
    return StopGuard(Accelerator(cpu=True), env or {}, said.append), said


def test_sigterm_inside_only_flags_the_stop() -> None:
    stop, said = guard()
    with stop.flagging_signals():
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signal == "SIGTERM"
    assert stop.asked
    assert said == []


def test_the_previous_handlers_come_back_after() -> None:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    stop, _ = guard()
    with stop.flagging_signals():
        assert signal.getsignal(signal.SIGTERM) == stop.on_signal
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before


def test_ctrl_c_says_once_how_to_stop_at_once_and_the_second_stops_at_once() -> None:
    stop, said = guard()
    with stop.flagging_signals():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert said == [CTRL_C_NOTICE]


def test_under_a_launcher_a_second_sigint_only_asks_again() -> None:
    stop, said = guard({"LOCAL_RANK": "0"})
    with stop.flagging_signals():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal == "SIGINT"
    assert said == [CTRL_C_NOTICE]


def test_the_logged_loss_carries_the_flags_of_the_budget_and_the_signal() -> None:
    stop, _ = guard()
    assert stop.reduce_logged_loss(torch.tensor(0.75), over_budget_here=False) == 0.75
    assert not stop.stopping_early

    assert stop.reduce_logged_loss(torch.tensor(0.5), over_budget_here=True) == 0.5
    assert stop.budget_spent
    assert not stop.interrupted
    assert stop.stopping_early
    assert not stop.resumable_interruption


def test_a_signal_is_a_resumable_interruption_unless_the_budget_is_spent_too() -> None:
    stop, _ = guard()
    stop.on_signal(signal.SIGTERM, None)
    stop.reduce_logged_loss(torch.tensor(1.0), over_budget_here=False)
    assert stop.interrupted
    assert stop.resumable_interruption

    stop.reduce_logged_loss(torch.tensor(1.0), over_budget_here=True)
    assert not stop.resumable_interruption


def test_the_final_phase_agrees_on_a_stop_and_keeps_it() -> None:
    stop, _ = guard()
    assert not stop.stop_agreed()
    stop.on_signal(signal.SIGTERM, None)
    assert stop.stop_agreed()
    stop.signal = None  # what was agreed stays agreed
    assert stop.stop_agreed()
