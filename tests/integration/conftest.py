"""The integration tests' kubetune operator: the real handlers in a thread, on the emulator."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.kube.emulator import EmulatorServer
from tests.kube.operators import OperatorThread

HANDLERS = "kubetune_operator.controller.handlers"


@pytest.fixture
def operator(
    operator_thread: Callable[[str], OperatorThread],
    kube_emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[], OperatorThread]:
    """Start kubetune's handlers (again, for a restart) against the emulator."""
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig_path))
    monkeypatch.setenv("KUBETUNE_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("KUBETUNE_TICK_SECONDS", "0.5")
    monkeypatch.setenv("KUBETUNE_TRAINER_IMAGE", "registry.example/kubetune-trainer:test")
    return lambda: operator_thread(HANDLERS)
