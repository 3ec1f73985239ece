"""Run a kopf operator against the emulator: in a thread of the test, or as `kopf run`.

The thread keeps tests fast and lets them share memory with the handlers; the subprocess is
what production runs (`kopf run -A --standalone -m MODULE`), so e2e tests and benchmarks
see its real startup, login, logging and memory. Both serve the whole cluster (`-A`), since
the emulator cannot list namespaces, and run standalone (no peering), since one operator per
test needs no leader election. Both load the handler module into a registry of their own,
the way `kopf run` does, so handlers of other tests never leak in.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import kopf
import kubernetes
import yaml

from tests.kube.emulator import REPO

SETTINGS_MODULE: Final = "tests.kube.kopf_test_settings"
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
LOG_TAIL_CHARS: Final = 6000

logger = logging.getLogger(__name__)


def configure_for_tests(settings: kopf.OperatorSettings) -> None:
    """Settings for a test operator: fail and retry fast, no cluster scanning.

    Only timings change; what the operator does (handlers, posting of Events, progress
    storage, finalizers) stays as kopf's defaults or as the handler module sets it.
    """
    settings.scanning.disabled = True  # the served resources are fixed; no CRD rescans
    settings.networking.connect_timeout = 5
    settings.networking.request_timeout = 30
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1, 2]
    settings.watching.connect_timeout = 5
    settings.watching.reconnect_backoff = 0.05
    settings.posting.default_backoffs = [0.1, 0.2, 0.5]
    settings.process.ultimate_exiting_timeout = STOP_TIMEOUT_S


def kopf_environment(kubeconfig_path: Path) -> dict[str, str]:
    """The environment of an operator process: the kubeconfig and this checkout's sources."""
    roots = [str(REPO), str(REPO / "operator"), str(REPO / "trainer")]
    inherited = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig_path),
        "PYTHONPATH": os.pathsep.join([*roots, *([inherited] if inherited else [])]),
        "PYTHONUNBUFFERED": "1",
    }


def _load_registry(module: str) -> kopf.OperatorRegistry:
    """A fresh registry holding the handlers that importing `module` declares."""
    registry = kopf.OperatorRegistry()
    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        if module in sys.modules:
            importlib.reload(sys.modules[module])
        else:
            importlib.import_module(module)
    finally:
        kopf.set_default_registry(previous)
    return registry


def _server_of(kubeconfig_path: Path) -> str:
    config = yaml.safe_load(kubeconfig_path.read_text())
    server: str = config["clusters"][0]["cluster"]["server"]
    return server


class OperatorThread:
    """`kopf.operator(...)` for one handler module, in a daemon thread with its own loop.

    kopf logs in with the test kubeconfig, and the `kubernetes` client's default
    configuration is loaded from it too, as kopf's own login does in a pod, so handlers
    that call `kubernetes.client` reach the emulator.
    """

    def __init__(self, module: str, kubeconfig_path: Path) -> None:
        self.module = module
        self.kubeconfig_path = kubeconfig_path
        self.settings = kopf.OperatorSettings()
        configure_for_tests(self.settings)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start(self) -> OperatorThread:
        """Start the operator; return when kopf reports ready."""
        registry = _load_registry(self.module)
        kopf.on.login(registry=registry)(self._login)
        self._thread = threading.Thread(
            target=self._run, args=(registry,), name=f"kopf-{self.module}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the operator {self.module} did not start: {self._failure!r}")
        return self

    def stop(self) -> None:
        """Ask kopf to exit and wait; re-raise what the operator failed with."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)
        alive, self._thread = self._thread.is_alive(), None
        if alive:
            raise RuntimeError(f"the operator {self.module} did not stop in {STOP_TIMEOUT_S} s")
        if self._failure is not None:
            raise RuntimeError(f"the operator {self.module} failed") from self._failure

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _login(self, **_: Any) -> kopf.ConnectionInfo:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig_path)
        )
        return kopf.ConnectionInfo(
            server=_server_of(self.kubeconfig_path), default_namespace="default"
        )

    def _run(self, registry: kopf.OperatorRegistry) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    settings=self.settings,
                    clusterwide=True,
                    standalone=True,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as failure:  # handed to stop(), which the test calls
            self._failure = failure


class KopfLog:
    """kopf's per-object log lines of the operators running in this process's threads.

    Some of what an operator does leaves no trace in the API: resuming an object whose
    children all exist writes nothing. kopf logs it, though ("Resuming is processed: ..."
    once the object's resume handlers are done), so a test can wait for that line before
    it checks that the resume changed nothing. `records` reads pytest's captured records,
    for which kopf's object logger must log at INFO (the `kopf_log` fixture sees to it).
    """

    def __init__(self, records: Callable[[], Sequence[logging.LogRecord]]) -> None:
        self._records = records

    def processed(self, cause: str) -> set[tuple[str, str]]:
        """The objects (namespace, name) whose handlers for `cause` ("Creation",
        "Resuming", "Updating", "Deletion") are all done."""
        return {
            (str(ref.get("namespace")), str(ref.get("name")))
            for record in self._records()
            if record.getMessage().startswith(f"{cause} is processed:")
            and (ref := getattr(record, "k8s_ref", None))
        }

    def resumed(self, *names: str, namespace: str = "default") -> bool:
        """Whether an operator has resumed each of these objects."""
        return {(namespace, name) for name in names} <= self.processed("Resuming")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class OperatorProcess:
    """`python -m kopf run -A --standalone -m MODULE...` against the emulator's kubeconfig.

    Ready when kopf's liveness endpoint answers. The output goes to `log_path`; `stop`
    sends SIGTERM (kopf's graceful exit) and kills only after STOP_TIMEOUT_S.
    """

    def __init__(
        self,
        modules: Sequence[str],
        kubeconfig_path: Path,
        log_path: Path,
        *,
        test_settings: bool = True,
        verbose: bool = False,
        cpu: int | None = None,
    ) -> None:
        self.modules = [*([SETTINGS_MODULE] if test_settings else []), *modules]
        self.kubeconfig_path = kubeconfig_path
        self.log_path = log_path
        self.verbose = verbose
        self.cpu = cpu
        self.process: subprocess.Popen[bytes] | None = None
        self.liveness_url = f"http://127.0.0.1:{_free_port()}/healthz"

    @property
    def command(self) -> list[str]:
        """The command line, pinned to one CPU with `taskset` when `cpu` is given."""
        pin = ["taskset", "--cpu-list", str(self.cpu)] if self.cpu is not None else []
        kopf_run = [sys.executable, "-m", "kopf", "run", "--all-namespaces", "--standalone"]
        loads = [arg for module in self.modules for arg in ("-m", module)]
        return [
            *pin,
            *kopf_run,
            f"--liveness={self.liveness_url}",
            *(["--verbose"] if self.verbose else []),
            *loads,
        ]

    def start(self) -> OperatorProcess:
        """Start kopf; return once its liveness endpoint answers."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=kopf_environment(self.kubeconfig_path),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._alive_and_well():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kopf did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self) -> int | None:
        """Stop kopf gracefully; its exit code (None if it was never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        logger.info("kopf exited with %s; log tail:\n%s", code, self.log_tail())
        return code

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The process id (for RSS sampling)."""
        assert self.process is not None
        return self.process.pid

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the operator's output."""
        if not self.log_path.exists():
            return "(no output)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def _alive_and_well(self) -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(self.liveness_url, timeout=1) as answer,
        ):
            return bool(answer.status == 200)
        return False
