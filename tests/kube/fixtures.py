"""pytest fixtures over the emulator harness (a plugin: tests/conftest.py loads it).

Each test gets its own emulator and kubeconfig (they start in well under a second), a client, and
factories that start an operator for a handler module and stop it at teardown, before the
emulator goes away, and what kopf logged per object (for what an operator does unseen in the API).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Imported in the fixtures: every pytest run loads this plugin, few tests use it, and
# kopf, kmock and kubernetes take half a second to import.
if TYPE_CHECKING:
    from tests.kube.client import KubeClient
    from tests.kube.emulator import EmulatorServer
    from tests.kube.operators import KopfLog, OperatorProcess, OperatorThread


@pytest.fixture
def kube_emulator(tmp_path: Path) -> Iterator[EmulatorServer]:
    """A fresh emulator on a loopback port; `.url`, `.kubeconfig_path`, `.objects()`."""
    from tests.kube.emulator import EmulatorServer

    with EmulatorServer(tmp_path / "kubeconfig") as server:
        yield server


@pytest.fixture
def kube(kube_emulator: EmulatorServer) -> Iterator[KubeClient]:
    """A client of the emulator whose waits show the emulator's objects when they fail."""
    from tests.kube.client import KubeClient

    client = KubeClient(kube_emulator.kubeconfig_path, details=kube_emulator.describe)
    yield client
    client.close()


@pytest.fixture
def operator_thread(kube_emulator: EmulatorServer) -> Iterator[Callable[[str], OperatorThread]]:
    """Start `kopf.operator` for a handler module in a thread: `operator_thread("pkg.mod")`."""
    from tests.kube.operators import OperatorThread

    started: list[OperatorThread] = []

    def start(module: str) -> OperatorThread:
        started.append(OperatorThread(module, kube_emulator.kubeconfig_path).start())
        return started[-1]

    yield start
    for operator in reversed(started):
        operator.stop()


@pytest.fixture
def operator_process(
    kube_emulator: EmulatorServer, tmp_path: Path
) -> Iterator[Callable[[str], OperatorProcess]]:
    """Start `kopf run -A --standalone -m MODULE` as a subprocess: `operator_process("m")`."""
    from tests.kube.operators import OperatorProcess

    started: list[OperatorProcess] = []

    def start(module: str) -> OperatorProcess:
        log_path = tmp_path / f"kopf-{len(started)}.log"
        operator = OperatorProcess([module], kube_emulator.kubeconfig_path, log_path)
        started.append(operator.start())
        return operator

    yield start
    for operator in reversed(started):
        operator.stop()


@pytest.fixture
def kopf_log(caplog: pytest.LogCaptureFixture) -> KopfLog:
    """What kopf logged per object in the test's operator threads (`.resumed(name)`).

    Its object logger logs at INFO meanwhile; kubetune posts no Event for that, since it
    sets kopf's posting level to ERROR, but an operator that posts INFO would.
    """
    from tests.kube.operators import KopfLog

    caplog.set_level(logging.INFO, logger="kopf.objects")
    return KopfLog(lambda: caplog.records)
