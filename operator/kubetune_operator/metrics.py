"""The operator's own Prometheus metrics, served on :8080 (KUBETUNE_OPERATOR_METRICS_PORT).

A platform team watches the operator like any controller: how many jobs sit in each phase
(and how many failed their bias audit),
how long reconciles take, how often the API server refuses a call, and how many worker groups
had to be restarted. The trainer's training metrics are served by the trainer pods, not here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from typing import Final

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PORT_ENV: Final = "KUBETUNE_OPERATOR_METRICS_PORT"
DEFAULT_PORT: Final = 8080
PHASES: Final = ("Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended")
BIAS_VERDICTS: Final = ("Passed", "Failed", "InsufficientData")

RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time spent in one handler call, by handler.",
    ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_ERRORS = Counter(
    "kubetune_api_errors",
    "Kubernetes API calls that failed, by operation and HTTP status.",
    ["operation", "code"],
)
RESTARTS = Counter("kubetune_restarts", "Worker groups restarted from their last checkpoint.")


class JobsCollector(Collector):
    """`kubetune_jobs{phase}` and `kubetune_bias_audits{verdict}`: FineTuneJobs per phase
    and per bias-audit verdict, as this operator last saw them."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    def track(
        self, key: tuple[str, str], phase: str | None, bias_verdict: str | None = None
    ) -> None:
        """Record a job's phase and verdict; a phase of None forgets the job (deleted)."""
        with self._lock:
            if phase is None:
                self._seen.pop(key, None)
            else:
                self._seen[key] = (phase, bias_verdict)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            phases = Tally(phase for phase, _ in self._seen.values())
            verdicts = Tally(verdict for _, verdict in self._seen.values() if verdict)
        jobs = GaugeMetricFamily("kubetune_jobs", "FineTuneJobs by phase.", labels=["phase"])
        for phase in PHASES:
            jobs.add_metric([phase], phases.get(phase, 0))
        yield jobs
        audits = GaugeMetricFamily(
            "kubetune_bias_audits",
            "FineTuneJobs by the verdict of their bias audit (jobs without one are not counted).",
            labels=["verdict"],
        )
        for verdict in BIAS_VERDICTS:
            audits.add_metric([verdict], verdicts.get(verdict, 0))
        yield audits


JOBS = JobsCollector()
REGISTRY.register(JOBS)


@contextlib.contextmanager
def reconcile_timer(handler: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE_SECONDS.labels(handler).observe(time.perf_counter() - started)


def serve(env: Mapping[str, str]) -> int | None:
    """Serve /metrics on the configured port (0 turns it off); the port, or None when off."""
    text = env.get(PORT_ENV, str(DEFAULT_PORT))
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"{PORT_ENV} must be a port number, 0 to 65535 (got {text!r})")
    port = int(text)
    if port == 0:
        return None
    start_http_server(port)
    return port
