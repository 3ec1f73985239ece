"""Where training progress goes: the console, metrics.jsonl, Prometheus and the job's report.

The recipe reports through one `Reporter` and never knows who listens: a laptop run gets a
progress line and a metrics file; a pod also serves Prometheus metrics and patches its
FineTuneJobReport. Only rank 0 reports (`build_reporter` gives the other ranks a
`NullReporter`), and no sink may stop training: a PATCH that fails is logged and retried,
never raised.

Every sink also hears the run's heartbeats (`Beat`, from heartbeat.py): the signs of
progress that tell a slow run from a stuck one. The report gets the last one as
`heartbeat`, Prometheus its time and phase; the console and metrics.jsonl leave them out.

The fields written here are the trainer's half of the status in DESIGN.md (progress,
metrics, metricSummary, diagnosis, dataValidation, biasAudit, artifacts, cost, heartbeat).
They go to
the job's FineTuneJobReport, the one object the pod's ServiceAccount may patch; the
operator checks them and copies them into the FineTuneJob's status, which the trainer
cannot write (the operator rebuilds the workers from it). The trainer never imports the
operator, so the patches are built as plain JSON here and the tests check each one against
the operator's report model.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Column

from kubetune_trainer.cost import RunCost

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

API_GROUP_VERSION: Final = "kubetune.dev/v1alpha1"
REPORT_PLURAL: Final = "finetunejobreports"
TRAINER_SECTIONS: Final = frozenset(
    {"diagnosis", "dataValidation", "biasAudit", "artifacts", "cost"}
)
"""The sections that go into the report; others (e.g. "freezing") reach the console and
metrics.jsonl only, since the operator owns every other status field."""

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
METRICS_FILE_NAME: Final = "metrics.jsonl"
JOB_NAME_ENV: Final = "KUBETUNE_JOB_NAME"
REPORT_NAME_ENV: Final = "KUBETUNE_REPORT_NAME"
"""The FineTuneJobReport to patch (the operator names it; see its builders module)."""
JOB_NAMESPACE_ENV: Final = "KUBETUNE_JOB_NAMESPACE"
METRICS_PORT_ENV: Final = "KUBETUNE_METRICS_PORT"
SERVICE_ACCOUNT_DIR_ENV: Final = "KUBETUNE_SERVICE_ACCOUNT_DIR"
"""Where the token and ca.crt are when not at SERVICE_ACCOUNT_DIR: the operator mounts a
projected token elsewhere and turns the automatic mount off."""
API_URL_ENV: Final = "KUBETUNE_API_URL"
"""A base URL such as http://127.0.0.1:8001 that replaces
https://KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT. For test clusters only (the e2e
tests' kubelet points it at a plain-HTTP API emulator); pods in a cluster leave it unset."""

BODY_REJECTED_CODES: Final = frozenset({400, 422})
"""Answers that reject the patch's content: sending it again cannot succeed."""

Outcome = Literal["succeeded", "failed", "budgetExceeded", "interrupted"]
"""How a run ended, as report.json's `outcome` and metrics.jsonl's "finished" event say it."""

FINAL_WORDS: Final[Mapping[Outcome, str]] = {
    "succeeded": "training succeeded",
    "failed": "training failed",
    "budgetExceeded": "training stopped",
    "interrupted": "training interrupted",
}
"""How the console's last line begins: a stop with a checkpoint to resume from is no failure."""


@dataclass(frozen=True)
class RunInfo:
    """What the run is about to do, known once the data and the model are set up."""

    job_name: str
    namespace: str | None
    """None for a local run."""
    epochs: int
    total_steps: int
    """Optimizer steps planned for the whole run."""
    steps_per_epoch: int
    output_dir: Path
    num_processes: int
    primary_metric: str
    """The validation metric that kubectl get shows (status.metricSummary)."""


@dataclass(frozen=True)
class StepRecord:
    """Training numbers at one logged optimizer step."""

    step: int
    """Optimizer steps done."""
    epoch: float
    """Epochs done, fractional: 1.5 is halfway through the second epoch."""
    loss: float
    learning_rate: float
    grad_norm: float | None
    """None when the gradient norm was not measured."""
    samples_per_second: float
    """Throughput of all processes together over the logging interval that ends here."""
    tokens_per_second: float
    """Tokens (padding included: the model computes on it) per second, same processes and
    interval."""
    mfu: float | None
    """Model FLOPs utilization over the interval, 0 to 1 (flops.py); None on a CPU or a GPU
    whose peak is not known."""
    cost: RunCost | None = None
    """GPU-hours (and their price) so far, earlier starts included; None when not counted."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Training metrics over the interval besides the loss: a dpo run's rewards
    (chosenReward, rejectedReward, rewardMargin, rewardAccuracy)."""


Phase = Literal[
    "Starting", "LoadingModel", "PreparingData", "Training", "Evaluating", "Examining", "Saving"
]
"""What rank 0 was doing when it last made progress (the report's heartbeat.phase)."""
PHASES: Final[tuple[Phase, ...]] = get_args(Phase)


@dataclass(frozen=True)
class Beat:
    """A sign of progress, given by the code that made it (heartbeat.py)."""

    time: float
    """Unix seconds."""
    phase: Phase
    step: int
    """Optimizer steps done."""


@dataclass(frozen=True)
class EvalRecord:
    """Validation metrics (including "loss") after an evaluation."""

    step: int
    epoch: float
    metrics: Mapping[str, float]


class Reporter(Protocol):
    """Receives a run's events: `started` first (sections may come before it), then steps and
    evaluations, then `finished`, and `close` last."""

    def started(self, info: RunInfo) -> None: ...

    def logged(self, record: StepRecord) -> None: ...

    def evaluated(self, record: EvalRecord) -> None: ...

    def section(self, name: str, payload: Mapping[str, Any]) -> None:
        """A named whole payload, camelCase. The TRAINER_SECTIONS also go into the status;
        others (e.g. "freezing") reach the console and metrics.jsonl only."""

    def heartbeat(self, beat: Beat) -> None:
        """A sign of progress: any time, as often as once a second (heartbeat.py throttles)."""

    def finished(self, outcome: Outcome, message: str) -> None: ...

    def close(self) -> None: ...


def current_epoch(epochs_done: float, epochs: int) -> int:
    """The 1-based epoch in progress; an epoch that just ended still counts as current."""
    return min(epochs, max(1, math.ceil(epochs_done)))


def percent_done(step: int, total_steps: int) -> int:
    """Whole percent of the planned steps done, 0 to 100."""
    if total_steps <= 0:
        return 0
    return min(100, 100 * step // total_steps)


def format_duration(seconds: float | None) -> str:
    """H:MM:SS, or --:-- when unknown."""
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class EtaEstimator:
    """Seconds left, from the pace since the first observed step.

    The first observation is the anchor rather than the start of the run: a run resumed
    from a checkpoint starts at a late step, and the first steps carry the warm-up.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._anchor: tuple[int, float] | None = None

    def observe(self, step: int, total_steps: int) -> float | None:
        now = self._clock()
        if self._anchor is None:
            self._anchor = (step, now)
            return None
        first_step, first_time = self._anchor
        if step <= first_step:
            return None
        seconds_per_step = (now - first_time) / (step - first_step)
        return max(0, total_steps - step) * seconds_per_step


def _require_started(info: RunInfo | None) -> RunInfo:
    if info is None:
        raise RuntimeError("Reporter.started() must come before steps and evaluations")
    return info


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as null: JSON has neither, and the API server would
    reject the whole patch for one of them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


# Status patches: pure functions, so the bodies can be checked without a server.


def plan_patch(info: RunInfo) -> dict[str, Any]:
    """The planned size of the run. Step and epoch are left alone: a run resumed from a
    checkpoint keeps showing its progress until its first step is logged."""
    return {"progress": {"epochs": info.epochs, "totalSteps": info.total_steps}}


def progress_patch(info: RunInfo, record: StepRecord, eta_seconds: float | None) -> dict[str, Any]:
    """Where training stands after a logged step; an unknown ETA clears an old one."""
    return {
        "progress": {
            "epoch": current_epoch(record.epoch, info.epochs),
            "epochs": info.epochs,
            "step": record.step,
            "totalSteps": info.total_steps,
            "percent": percent_done(record.step, info.total_steps),
            "etaSeconds": None if eta_seconds is None else round(eta_seconds),
        }
    }


def metric_summary(name: str, value: float) -> str:
    """The primary metric as kubectl get shows it, e.g. accuracy=0.912."""
    return f"{name}={value:.3f}"


def metrics_patch(metrics: Mapping[str, float], primary_metric: str) -> dict[str, Any]:
    """The latest validation metrics. A non-finite value is left out of the map (the schema
    takes numbers only) but still shows in the summary, e.g. loss=nan."""
    patch: dict[str, Any] = {
        "metrics": {name: float(value) for name, value in metrics.items() if math.isfinite(value)}
    }
    if primary_metric in metrics:
        patch["metricSummary"] = metric_summary(primary_metric, metrics[primary_metric])
    return patch


def section_patch(name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """A whole status section. Raises TypeError at once for a value that JSON cannot hold,
    rather than later inside a PATCH."""
    patch = {name: json_safe(payload)}
    json.dumps(patch, allow_nan=False)
    return patch


def rfc3339(seconds: float) -> str:
    """Unix seconds as the API's date-time, in UTC to the second: 2026-12-07T14:55:03Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def heartbeat_patch(beat: Beat) -> dict[str, Any]:
    """When rank 0 last made progress, and doing what."""
    return {"heartbeat": {"time": rfc3339(beat.time), "phase": beat.phase}}


def finished_patch(outcome: Outcome) -> dict[str, Any]:
    """Nothing is left to estimate: no time left after a success, no estimate otherwise."""
    return {"progress": {"etaSeconds": 0 if outcome == "succeeded" else None}}


def merge_patches(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """One merge patch (RFC 7386) with the effect of sending `earlier`, then `later`.

    Exact for the patches built here, which never send an object where an earlier patch
    sent null.
    """
    merged = dict(earlier)
    for key, value in later.items():
        before = merged.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            merged[key] = merge_patches(before, value)
        else:
            merged[key] = value
    return merged


class StatusPatchError(Exception):
    """The API server answered a report PATCH with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code


class StatusClient:
    """PATCHes the trainer's fields into one FineTuneJobReport with the pod's service
    account token."""

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        host: str,
        token_path: Path,
        ca_path: Path | None,
        timeout_s: float = 5.0,
    ) -> None:
        base = host.rstrip("/") if "://" in host else f"https://{host}"
        namespace_part, name_part = (
            urllib.parse.quote(part, safe="") for part in (namespace, name)
        )
        self.url = (
            f"{base}/apis/{API_GROUP_VERSION}/namespaces/{namespace_part}"
            f"/{REPORT_PLURAL}/{name_part}"
        )
        self._token_path = token_path
        self._ca_path = ca_path
        self._timeout_s = timeout_s

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str], *, service_account_dir: Path | None = None
    ) -> StatusClient | None:
        """The client for the report named in `env`, or None outside a cluster or without a
        token.

        The token and CA come from `service_account_dir`, else KUBETUNE_SERVICE_ACCOUNT_DIR,
        else the standard mount; the API server from KUBETUNE_API_URL, else the
        KUBERNETES_SERVICE_HOST and _PORT that every pod gets.
        """
        name, namespace = env.get(REPORT_NAME_ENV), env.get(JOB_NAMESPACE_ENV)
        base_url = api_base_url(env)
        account_dir = service_account_directory(env, service_account_dir)
        token_path = account_dir / "token"
        if not (name and namespace and base_url) or not token_path.is_file():
            return None
        ca_path = account_dir / "ca.crt"
        return cls(
            namespace,
            name,
            host=base_url,
            token_path=token_path,
            ca_path=ca_path if ca_path.is_file() else None,
        )

    def patch(self, fields: Mapping[str, Any]) -> None:
        """Merge-patch these fields into the report; raises StatusPatchError for an error
        answer, OSError or http.client.HTTPException when the server cannot be reached or
        talked to."""
        request = urllib.request.Request(
            self.url,
            data=json.dumps({"report": dict(fields)}, allow_nan=False).encode(),
            method="PATCH",
            headers={
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
                # Projected tokens rotate: read the file for every request.
                "Authorization": f"Bearer {self._token_path.read_text().strip()}",
            },
        )
        try:
            with self._opener().open(request, timeout=self._timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise StatusPatchError(error.code, _server_message(error)) from None

    def _opener(self) -> urllib.request.OpenerDirector:
        # Built per request so a rotated CA bundle is picked up. Proxy variables are ignored:
        # the API server's ClusterIP is reachable from every pod, a proxy only adds failures.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.url.startswith("https://"):
            context = ssl.create_default_context(
                cafile=None if self._ca_path is None else str(self._ca_path)
            )
            handlers.append(urllib.request.HTTPSHandler(context=context))
        return urllib.request.build_opener(*handlers)


def api_base_url(env: Mapping[str, str]) -> str | None:
    """The API server's base URL: KUBETUNE_API_URL, else the in-cluster service, else None."""
    override = env.get(API_URL_ENV)
    if override:
        if urllib.parse.urlsplit(override).scheme not in ("http", "https"):
            raise ValueError(f"{API_URL_ENV} must be an http:// or https:// URL (got {override!r})")
        return override.rstrip("/")
    service_host = env.get("KUBERNETES_SERVICE_HOST")
    if not service_host:
        return None
    if ":" in service_host:
        service_host = f"[{service_host}]"
    return f"https://{service_host}:{env.get('KUBERNETES_SERVICE_PORT', '443')}"


def service_account_directory(env: Mapping[str, str], given: Path | None = None) -> Path:
    """Where the token and ca.crt are: `given`, else KUBETUNE_SERVICE_ACCOUNT_DIR, else the
    standard mount."""
    if given is not None:
        return given
    return Path(env.get(SERVICE_ACCOUNT_DIR_ENV) or SERVICE_ACCOUNT_DIR)


def _server_message(error: urllib.error.HTTPError) -> str:
    """The message of the Kubernetes Status object in an error answer, else the reason."""
    with error:
        try:
            status = json.loads(error.read(4096))
        except (OSError, ValueError):
            status = None
    message = status.get("message") if isinstance(status, dict) else None
    return str(message or error.reason)


def _failure_kind(error: Exception) -> str:
    if isinstance(error, StatusPatchError):
        return f"HTTP {error.code}"
    reason = getattr(error, "reason", None)  # URLError wraps the socket error
    return type(reason if isinstance(reason, Exception) else error).__name__


Cancel = Callable[[], None]
Schedule = Callable[[float, Callable[[], None]], Cancel]
"""Call a function after some seconds, from another thread; returns what cancels the call."""


def timer_thread(delay_s: float, function: Callable[[], None]) -> Cancel:
    """`function` in a daemon timer thread after `delay_s` seconds."""
    timer = threading.Timer(delay_s, function)
    timer.daemon = True
    timer.start()
    return timer.cancel


class StatusReporter:
    """Writes the trainer-owned status fields, at most one PATCH per `min_interval_s`.

    Updates in between are merged into one pending patch, sent when the interval is over:
    by the first event after it, else by a timer. The timer matters for the heartbeat: a
    beat held back must reach the report within one interval even when the run stops
    beating right after it (stuck, or in a step slower than the stall timeout), or the
    operator would judge the run by an older beat. The timer only sends what the run
    reported; it never beats itself. `finished` and `close` send at once. A failed PATCH
    keeps the pending patch for the next try, except when the server rejected its content.
    """

    def __init__(
        self,
        client: StatusClient,
        *,
        min_interval_s: float = 5.0,
        clock: Clock = time.monotonic,
        schedule: Schedule = timer_thread,
    ) -> None:
        self._client = client
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._schedule = schedule
        self._eta = EtaEstimator(clock)
        self._info: RunInfo | None = None
        self._pending: dict[str, Any] = {}
        self._last_attempt: float | None = None
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        """Held while the pending patch changes or is sent (the timer sends from its thread)."""
        self._cancel_timer: Cancel | None = None

    def started(self, info: RunInfo) -> None:
        self._info = info
        self._offer(plan_patch(info))

    def logged(self, record: StepRecord) -> None:
        info = _require_started(self._info)
        eta = self._eta.observe(record.step, info.total_steps)
        patch = progress_patch(info, record, eta)
        if record.cost is not None:
            patch |= section_patch("cost", record.cost.to_status())
        self._offer(patch)

    def evaluated(self, record: EvalRecord) -> None:
        info = _require_started(self._info)
        self._offer(metrics_patch(record.metrics, info.primary_metric))

    def section(self, name: str, payload: Mapping[str, Any]) -> None:
        if name in TRAINER_SECTIONS:
            self._offer(section_patch(name, payload))

    def heartbeat(self, beat: Beat) -> None:
        self._offer(heartbeat_patch(beat))

    def finished(self, outcome: Outcome, message: str) -> None:
        if self._info is not None:
            with self._lock:
                self._pending = merge_patches(self._pending, finished_patch(outcome))
        self.flush()

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Send the pending patch now, whatever the interval."""
        with self._lock:
            self._stop_timer()
            self._send()

    def _send(self) -> None:
        """Send the pending patch (with the lock held)."""
        if not self._pending:
            return
        self._last_attempt = self._clock()
        try:
            self._client.patch(self._pending)
        except StatusPatchError as error:
            if error.code not in BODY_REJECTED_CODES:
                self._warn_once(error, "kept for the next try")
                return
            self._warn_once(error, "dropped, the API server rejected its content")
        except (OSError, http.client.HTTPException) as error:
            self._warn_once(error, "kept for the next try")
            return
        self._pending = {}

    def _offer(self, update: Mapping[str, Any]) -> None:
        with self._lock:
            self._pending = merge_patches(self._pending, update)
            wait = self._wait_left()
            if wait <= 0:
                self._stop_timer()
                self._send()
            elif self._cancel_timer is None:
                self._cancel_timer = self._schedule(wait, self._send_when_due)

    def _wait_left(self) -> float:
        """Seconds until the interval since the last PATCH is over (0 or less: now)."""
        if self._last_attempt is None:
            return 0.0
        return self._last_attempt + self._min_interval_s - self._clock()

    def _send_when_due(self) -> None:
        """The timer's call: what is still pending goes now."""
        with self._lock:
            self._cancel_timer = None
            self._send()

    def _stop_timer(self) -> None:
        if self._cancel_timer is not None:
            self._cancel_timer()
            self._cancel_timer = None

    def _warn_once(self, error: Exception, outcome: str) -> None:
        kind = _failure_kind(error)
        if kind in self._warned:
            return
        self._warned.add(kind)
        logger.warning(
            "report patch to %s failed (%s); %s (further %s failures are not logged)",
            self._client.url,
            error,
            outcome,
            kind,
        )


@dataclass(frozen=True)
class MetricDefinition:
    """A Prometheus metric the trainer serves on rank 0 (the docs list TRAINER_METRICS)."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...] = ("job", "namespace")


LOSS = MetricDefinition(
    "kubetune_trainer_loss", "gauge", "Training loss at the last logged optimizer step."
)
LEARNING_RATE = MetricDefinition(
    "kubetune_trainer_learning_rate", "gauge", "Learning rate at the last logged optimizer step."
)
GRAD_NORM = MetricDefinition(
    "kubetune_trainer_grad_norm",
    "gauge",
    "Gradient norm at the last logged optimizer step that measured it.",
)
SAMPLES_PER_SECOND = MetricDefinition(
    "kubetune_trainer_samples_per_second",
    "gauge",
    "Training samples per second, all processes together, over the last logging interval.",
)
TOKENS_PER_SECOND = MetricDefinition(
    "kubetune_trainer_tokens_per_second",
    "gauge",
    "Training tokens per second (padding included), all processes together, over the last "
    "logging interval.",
)
MODEL_FLOPS_UTILIZATION = MetricDefinition(
    "kubetune_trainer_model_flops_utilization",
    "gauge",
    "Model FLOPs utilization over the last logging interval, 0 to 1: the model's training "
    "FLOPs per second over the GPUs' dense bf16 peak (only on a GPU whose peak is known).",
)
EPOCH = MetricDefinition(
    "kubetune_trainer_epoch", "gauge", "Epochs done, fractional (1.5: halfway through the second)."
)
STEP = MetricDefinition("kubetune_trainer_step", "gauge", "Optimizer steps done.")
PROGRESS_RATIO = MetricDefinition(
    "kubetune_trainer_progress_ratio", "gauge", "Optimizer steps done over steps planned, 0 to 1."
)
EVAL_METRIC = MetricDefinition(
    "kubetune_trainer_eval_metric",
    "gauge",
    "Latest validation metric, by name (the metric label: accuracy, loss, ...).",
    ("job", "namespace", "metric"),
)
TRAIN_METRIC = MetricDefinition(
    "kubetune_trainer_train_metric",
    "gauge",
    "Latest training metric besides the loss, by name, over the last logging interval (a "
    "dpo run's rewardAccuracy, rewardMargin, chosenReward, rejectedReward).",
    ("job", "namespace", "metric"),
)
SAMPLES = MetricDefinition(
    "kubetune_trainer_samples_total",
    "counter",
    "Training samples processed: each logging interval's throughput times its duration.",
)
GPU_HOURS = MetricDefinition(
    "kubetune_trainer_gpu_hours",
    "gauge",
    "GPU-hours of the run at the last logged step: GPUs held times hours since the trainer "
    "started, restarts and a cross-validation's earlier folds included (0 on the CPU).",
)
HEARTBEAT_TIME = MetricDefinition(
    "kubetune_trainer_heartbeat_time_seconds",
    "gauge",
    "Unix time of rank 0's last sign of progress: an optimizer step, or a stage of data "
    "preparation, a model load, an evaluation or examination batch, a save.",
)
PHASE = MetricDefinition(
    "kubetune_trainer_phase",
    "gauge",
    "1 for the phase of rank 0's last sign of progress (the phase label: Starting, "
    "LoadingModel, PreparingData, Training, Evaluating, Examining, Saving), 0 for the others.",
    ("job", "namespace", "phase"),
)
TRAINER_METRICS: Final = (
    LOSS,
    LEARNING_RATE,
    GRAD_NORM,
    SAMPLES_PER_SECOND,
    TOKENS_PER_SECOND,
    MODEL_FLOPS_UTILIZATION,
    EPOCH,
    STEP,
    PROGRESS_RATIO,
    EVAL_METRIC,
    TRAIN_METRIC,
    SAMPLES,
    GPU_HOURS,
    HEARTBEAT_TIME,
    PHASE,
)


class PrometheusReporter:
    """Serves the run's numbers for Prometheus from a registry of its own over HTTP."""

    def __init__(
        self,
        port: int,
        job: str,
        namespace: str,
        *,
        address: str = "0.0.0.0",
        clock: Clock = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        self._labels = {"job": job, "namespace": namespace}
        self._gauges = {
            definition: Gauge(
                definition.name, definition.help, definition.labels, registry=self.registry
            )
            for definition in TRAINER_METRICS
            if definition.kind == "gauge"
        }
        self._samples = Counter(SAMPLES.name, SAMPLES.help, SAMPLES.labels, registry=self.registry)
        self._clock = clock
        self._info: RunInfo | None = None
        self._last_logged: float | None = None
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        self.port: int = self._server.server_port

    def started(self, info: RunInfo) -> None:
        self._info = info
        self._last_logged = self._clock()

    def logged(self, record: StepRecord) -> None:
        info = _require_started(self._info)
        if record.cost is not None:
            self._set(GPU_HOURS, record.cost.gpu_hours)
        self._set(LOSS, record.loss)
        self._set(LEARNING_RATE, record.learning_rate)
        if record.grad_norm is not None:
            self._set(GRAD_NORM, record.grad_norm)
        self._set(SAMPLES_PER_SECOND, record.samples_per_second)
        self._set(TOKENS_PER_SECOND, record.tokens_per_second)
        if record.mfu is not None:
            self._set(MODEL_FLOPS_UTILIZATION, record.mfu)
        self._set(EPOCH, record.epoch)
        self._set(STEP, record.step)
        self._set(PROGRESS_RATIO, record.step / info.total_steps if info.total_steps else 0.0)
        for name, value in record.metrics.items():
            self._gauges[TRAIN_METRIC].labels(**self._labels, metric=name).set(value)
        self._count_samples(record.samples_per_second)

    def evaluated(self, record: EvalRecord) -> None:
        for name, value in record.metrics.items():
            self._gauges[EVAL_METRIC].labels(**self._labels, metric=name).set(value)

    def section(self, name: str, payload: Mapping[str, Any]) -> None:
        pass

    def heartbeat(self, beat: Beat) -> None:
        self._set(HEARTBEAT_TIME, beat.time)
        for phase in PHASES:
            self._gauges[PHASE].labels(**self._labels, phase=phase).set(phase == beat.phase)

    def finished(self, outcome: Outcome, message: str) -> None:
        pass

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def _set(self, definition: MetricDefinition, value: float) -> None:
        self._gauges[definition].labels(**self._labels).set(value)

    def _count_samples(self, samples_per_second: float) -> None:
        now = self._clock()
        since = now if self._last_logged is None else self._last_logged
        samples = samples_per_second * (now - since)
        self._last_logged = now
        if math.isfinite(samples) and samples > 0:
            self._samples.labels(**self._labels).inc(samples)


class JsonlReporter:
    """Appends one JSON object per event to a file, flushed as written, so a crashed run
    keeps its curve. Appends, so a restarted run adds to the same file; each run's events
    begin with a "started" event. NaN and infinities are written as null (strict JSON)."""

    def __init__(self, path: Path, *, clock: Clock = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._file = path.open("a", encoding="utf-8")

    def started(self, info: RunInfo) -> None:
        self._write(
            "started",
            {
                "job": info.job_name,
                "namespace": info.namespace,
                "epochs": info.epochs,
                "totalSteps": info.total_steps,
                "stepsPerEpoch": info.steps_per_epoch,
                "outputDir": str(info.output_dir),
                "numProcesses": info.num_processes,
                "primaryMetric": info.primary_metric,
            },
        )

    def logged(self, record: StepRecord) -> None:
        self._write(
            "step",
            {
                "step": record.step,
                "epoch": record.epoch,
                "loss": record.loss,
                "learningRate": record.learning_rate,
                "gradNorm": record.grad_norm,
                "samplesPerSecond": record.samples_per_second,
                "tokensPerSecond": record.tokens_per_second,
                "mfu": record.mfu,
                "gpuHours": None if record.cost is None else record.cost.gpu_hours,
                **({"metrics": dict(record.metrics)} if record.metrics else {}),
            },
        )

    def evaluated(self, record: EvalRecord) -> None:
        self._write("eval", {"step": record.step, "epoch": record.epoch, "metrics": record.metrics})

    def section(self, name: str, payload: Mapping[str, Any]) -> None:
        self._write("section", {"name": name, "payload": payload})

    def heartbeat(self, beat: Beat) -> None:
        pass  # once a second would drown the curve; heartbeat.json holds the last one

    def finished(self, outcome: Outcome, message: str) -> None:
        self._write(
            "finished",
            {"outcome": outcome, "succeeded": outcome == "succeeded", "message": message},
        )

    def close(self) -> None:
        self._file.close()

    def _write(self, event: str, fields: Mapping[str, Any]) -> None:
        line = json.dumps(
            {"event": event, "time": self._clock(), **json_safe(fields)}, allow_nan=False
        )
        self._file.write(line + "\n")
        self._file.flush()


def start_line(info: RunInfo) -> str:
    where = f"{info.namespace}/{info.job_name}" if info.namespace else info.job_name
    return (
        f"training {where}: {info.epochs} epochs, {info.total_steps} steps "
        f"({info.steps_per_epoch} per epoch) on {info.num_processes} processes, "
        f"primary metric {info.primary_metric}"
    )


def step_line(info: RunInfo, record: StepRecord, eta_seconds: float | None) -> str:
    """Where the run is and when it ends first, so a narrow terminal cuts off only detail."""
    parts = [
        f"epoch {current_epoch(record.epoch, info.epochs)}/{info.epochs}",
        f"step {record.step}/{info.total_steps}",
        f"ETA {format_duration(eta_seconds)}",
        f"loss {record.loss:.4f}",
        f"lr {record.learning_rate:.2e}",
        *(f"{name} {value:.4f}" for name, value in record.metrics.items()),
    ]
    if record.grad_norm is not None:
        parts.append(f"grad norm {record.grad_norm:.3f}")
    parts += [
        f"{record.samples_per_second:.1f} samples/s",
        f"{record.tokens_per_second:,.0f} tokens/s",
    ]
    if record.mfu is not None:
        parts.append(f"MFU {record.mfu:.1%}")
    return "  ".join(parts)


def eval_line(record: EvalRecord) -> str:
    metrics = "  ".join(f"{name}={value:.4f}" for name, value in sorted(record.metrics.items()))
    return f"eval at step {record.step} (epoch {record.epoch:.2f}): {metrics}"


_SUMMARY_KEYS = (
    "verdict",
    "worstGroup",
    "message",
    "suggestion",
    "model",
    "mergedModel",
    "outputUri",
)


def section_summary(name: str, payload: Mapping[str, Any]) -> str:
    """One line for a section: its verdict, counts and message where it has them, else its
    fields as key=value."""
    parts = [str(payload[key]) for key in _SUMMARY_KEYS if payload.get(key) not in (None, "")]
    if "rowsIn" in payload and "rowsOut" in payload:
        kept = f"{payload['rowsOut']} of {payload['rowsIn']} rows kept"
        if not str(payload.get("message", "")).startswith(kept):
            parts.insert(0, kept)
    return f"{name}: {' | '.join(parts) if parts else _fields_summary(payload)}"


def _fields_summary(payload: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={_compact(value)}" for key, value in payload.items())


def _compact(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "-"
    return str(value)


def final_line(outcome: Outcome, message: str) -> str:
    return f"{FINAL_WORDS[outcome]}: {message}"


PLAIN_PROGRESS_LINES = 20
"""Without a terminal, a step line is printed each time another 1/20 of the run is done."""


BAR_WIDTH = 12
"""Columns of the progress bar on a terminal: the step line beside it says the numbers."""


def plain_console() -> Console:
    """Standard error with lines never wrapped: a pod's log or a pipe keeps each line whole
    (searchable); a terminal folds long ones itself. Emoji codes are printed as they are,
    since data rows, labels and paths reach it ("awful :x:" is not "awful ❌")."""
    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


class ConsoleReporter:
    """A progress bar on an interactive terminal; elsewhere (CI logs, files) a plain line
    every 5% of the run, since a live bar would only be drawn once, at the end."""

    def __init__(self, console: Console, *, clock: Clock = time.monotonic) -> None:
        self._console = console
        self._eta = EtaEstimator(clock)
        self._info: RunInfo | None = None
        self._bar: tuple[Progress, TaskID] | None = None
        self._printed_share = -1

    def started(self, info: RunInfo) -> None:
        self._info = info
        self._print(start_line(info))
        if self._console.is_interactive:
            line = Column(no_wrap=True, overflow="ellipsis", ratio=1)  # never wraps the bar
            progress = Progress(
                BarColumn(bar_width=BAR_WIDTH),
                TextColumn("{task.description}", markup=False, table_column=line),
                console=self._console,
                expand=True,
            )
            task = progress.add_task("starting", total=info.total_steps or None)
            progress.start()
            self._bar = (progress, task)

    def logged(self, record: StepRecord) -> None:
        info = _require_started(self._info)
        line = step_line(info, record, self._eta.observe(record.step, info.total_steps))
        if self._bar is None:
            share = record.step * PLAIN_PROGRESS_LINES // max(info.total_steps, 1)
            if share != self._printed_share:
                self._printed_share = share
                self._print(line)
            return
        progress, task = self._bar
        progress.update(task, completed=record.step, description=line)

    def evaluated(self, record: EvalRecord) -> None:
        self._print(eval_line(record))

    def section(self, name: str, payload: Mapping[str, Any]) -> None:
        self._print(section_summary(name, payload))

    def heartbeat(self, beat: Beat) -> None:
        pass

    def finished(self, outcome: Outcome, message: str) -> None:
        self._stop_bar()
        self._print(final_line(outcome, message))

    def close(self) -> None:
        self._stop_bar()

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None

    def _print(self, line: str) -> None:
        self._console.print(line, markup=False)


class NullReporter:
    """Reports nothing: what every rank but 0 gets."""

    def started(self, info: RunInfo) -> None:
        pass

    def logged(self, record: StepRecord) -> None:
        pass

    def evaluated(self, record: EvalRecord) -> None:
        pass

    def section(self, name: str, payload: Mapping[str, Any]) -> None:
        pass

    def heartbeat(self, beat: Beat) -> None:
        pass

    def finished(self, outcome: Outcome, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class FanOut:
    """Passes every event to each reporter in turn."""

    def __init__(self, reporters: Iterable[Reporter]) -> None:
        self.reporters = tuple(reporters)

    def started(self, info: RunInfo) -> None:
        for reporter in self.reporters:
            reporter.started(info)

    def logged(self, record: StepRecord) -> None:
        for reporter in self.reporters:
            reporter.logged(record)

    def evaluated(self, record: EvalRecord) -> None:
        for reporter in self.reporters:
            reporter.evaluated(record)

    def section(self, name: str, payload: Mapping[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.section(name, payload)

    def heartbeat(self, beat: Beat) -> None:
        for reporter in self.reporters:
            reporter.heartbeat(beat)

    def finished(self, outcome: Outcome, message: str) -> None:
        for reporter in self.reporters:
            reporter.finished(outcome, message)

    def close(self) -> None:
        """Closes every reporter, even when one of them raises."""
        with contextlib.ExitStack() as stack:
            for reporter in self.reporters:
                stack.callback(reporter.close)


def build_reporter(
    *,
    rank_zero: bool,
    output_dir: Path,
    env: Mapping[str, str],
    console: Console,
    service_account_dir: Path | None = None,
) -> Reporter:
    """The sinks this process reports to: none off rank 0; on rank 0 the console and
    metrics.jsonl, Prometheus when KUBETUNE_METRICS_PORT is set, and the job's report when
    its name and namespace are set and a cluster's service account token is mounted
    (see StatusClient.from_environment for where the token and the API server are found)."""
    if not rank_zero:
        return NullReporter()
    metrics_port = env.get(METRICS_PORT_ENV)
    port = None if metrics_port is None else _port_number(metrics_port)
    reporters: list[Reporter] = [
        ConsoleReporter(console),
        JsonlReporter(output_dir / METRICS_FILE_NAME),
    ]
    if port is not None:
        reporters.append(
            PrometheusReporter(
                port, job=env.get(JOB_NAME_ENV, ""), namespace=env.get(JOB_NAMESPACE_ENV, "")
            )
        )
    client = StatusClient.from_environment(env, service_account_dir=service_account_dir)
    if client is not None:
        reporters.append(StatusReporter(client))
    elif JOB_NAME_ENV in env and api_base_url(env) is not None:
        logger.warning(
            "running in a cluster but without %s, %s or a service account token in %s: "
            "the FineTuneJob status will not show progress",
            REPORT_NAME_ENV,
            JOB_NAMESPACE_ENV,
            service_account_directory(env, service_account_dir),
        )
    return FanOut(reporters)


def _port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"{METRICS_PORT_ENV} must be a port number, 0 to 65535 (got {text!r})")
    return int(text)
