"""Reporting sinks against real endpoints: a Prometheus scrape, a loopback API server, files."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from rich.console import Console

from kubetune_operator.api import v1alpha1
from kubetune_operator.api.v1alpha1 import TrainerReport
from kubetune_operator.controller import reports
from kubetune_trainer.cost import RunCost
from kubetune_trainer.data.report import failed_status
from kubetune_trainer.report.progress import (
    API_GROUP_VERSION,
    REPORT_PLURAL,
    TRAINER_METRICS,
    ConsoleReporter,
    EtaEstimator,
    EvalRecord,
    FanOut,
    JsonlReporter,
    NullReporter,
    Outcome,
    PrometheusReporter,
    RunInfo,
    StatusClient,
    StatusReporter,
    StepRecord,
    api_base_url,
    build_reporter,
    current_epoch,
    format_duration,
    merge_patches,
    metrics_patch,
    percent_done,
    plain_console,
    progress_patch,
    section_patch,
    service_account_directory,
    step_line,
)

INFO = RunInfo(
    job_name="sentiment",
    namespace="ml",
    epochs=3,
    total_steps=100,
    steps_per_epoch=34,
    output_dir=Path("/output"),
    num_processes=2,
    primary_metric="accuracy",
)
TRAINER_FIELDS = set(reports.TRAINER_FIELDS)
DIAGNOSIS = {
    "verdict": "Overfitting",
    "evidence": ["validation loss rose 3 evaluations in a row"],
    "suggestion": "raise weight decay",
}


def step(number: int, **overrides: Any) -> StepRecord:
    fields: dict[str, Any] = {
        "step": number,
        "epoch": number / INFO.steps_per_epoch,
        "loss": 0.6931,
        "learning_rate": 2e-5,
        "grad_norm": 1.25,
        "samples_per_second": 32.0,
        "tokens_per_second": 1024.0,
        "mfu": None,
    }
    return StepRecord(**(fields | overrides))


class FakeClock:
    """Time that moves only when a test moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def without_proxies() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# Pure helpers


def test_current_epoch_is_one_based_and_an_ended_epoch_is_still_current() -> None:
    assert [current_epoch(e, 3) for e in (0.0, 0.5, 1.0, 1.01, 2.9, 3.0)] == [1, 1, 1, 2, 3, 3]


def test_percent_done_is_whole_and_bounded() -> None:
    assert [percent_done(s, 300) for s in (0, 1, 299, 300, 301)] == [0, 0, 99, 100, 100]
    assert percent_done(5, 0) == 0


def test_format_duration() -> None:
    assert format_duration(None) == "--:--"
    assert format_duration(3725.4) == "1:02:05"


def test_eta_comes_from_the_pace_since_the_first_observed_step() -> None:
    clock = FakeClock(100.0)
    eta = EtaEstimator(clock)
    assert eta.observe(40, 100) is None
    clock.now = 110.0
    assert eta.observe(50, 100) == 50.0
    assert eta.observe(40, 100) is None


def test_progress_patch_fills_the_status_progress() -> None:
    patch = progress_patch(INFO, step(51), eta_seconds=12.6)
    assert patch == {
        "progress": {
            "epoch": 2,
            "epochs": 3,
            "step": 51,
            "totalSteps": 100,
            "percent": 51,
            "etaSeconds": 13,
        }
    }


def test_metrics_patch_leaves_non_finite_values_out_of_the_map_but_not_the_summary() -> None:
    patch = metrics_patch({"loss": math.nan, "perplexity": 12.5}, "loss")
    assert patch == {"metrics": {"perplexity": 12.5}, "metricSummary": "loss=nan"}
    assert metrics_patch({"accuracy": 0.91234}, "accuracy")["metricSummary"] == "accuracy=0.912"


def test_section_patch_writes_nan_as_null_and_rejects_what_json_cannot_hold() -> None:
    audit = {"verdict": "Passed", "metrics": [{"name": "x", "attribute": "g", "value": math.inf}]}
    assert section_patch("biasAudit", audit)["biasAudit"]["metrics"][0]["value"] is None
    with pytest.raises(TypeError):
        section_patch("artifacts", {"model": Path("/m")})


def test_merged_patches_equal_sending_them_in_order() -> None:
    earlier = {"progress": {"step": 1, "etaSeconds": 5}, "diagnosis": {"verdict": "Healthy"}}
    later = {"progress": {"step": 2, "etaSeconds": None}, "metrics": {"loss": 0.5}}
    assert merge_patches(earlier, later) == {
        "progress": {"step": 2, "etaSeconds": None},
        "diagnosis": {"verdict": "Healthy"},
        "metrics": {"loss": 0.5},
    }


# The report: a loopback HTTP server plays the API server.


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    content_type: str
    authorization: str
    body: dict[str, Any]


class FakeApiServer(ThreadingHTTPServer):
    """Records every request and answers with the scripted codes, then 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ApiHandler)
        self.requests: list[RecordedRequest] = []
        self.codes: list[int] = []

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self) -> list[dict[str, Any]]:
        """The trainer fields of each report patch."""
        assert all(set(request.body) == {"report"} for request in self.requests)
        return [request.body["report"] for request in self.requests]


class ApiHandler(BaseHTTPRequestHandler):
    server: FakeApiServer
    timeout = 10

    def do_PATCH(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.requests.append(
            RecordedRequest(
                method=self.command,
                path=self.path,
                content_type=self.headers["Content-Type"],
                authorization=self.headers["Authorization"],
                body=json.loads(self.rfile.read(length)),
            )
        )
        code = self.server.codes.pop(0) if self.server.codes else 200
        answer = json.dumps({"kind": "Status", "message": f"scripted {code}"}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on the recorded requests."""


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


def client_for(api: FakeApiServer, token: Path) -> StatusClient:
    return StatusClient("ml", "sentiment", host=api.host, token_path=token, ca_path=None)


def assert_trainer_status(body: dict[str, Any]) -> None:
    assert set(body) <= TRAINER_FIELDS, f"the operator owns {set(body) - TRAINER_FIELDS}"
    TrainerReport.model_validate(body, by_name=False)


def test_client_patches_the_jobs_report_with_a_fresh_token(api: FakeApiServer, token: Path) -> None:
    client = client_for(api, token)
    client.patch({"progress": {"step": 1}})
    token.write_text("token-2")
    client.patch({"progress": {"step": 2}})
    first, second = api.requests
    assert first.method == "PATCH"
    assert first.path == "/apis/kubetune.dev/v1alpha1/namespaces/ml/finetunejobreports/sentiment"
    assert first.content_type == "application/merge-patch+json"
    assert (first.authorization, second.authorization) == ("Bearer token-1", "Bearer token-2")
    assert second.body == {"report": {"progress": {"step": 2}}}


def test_the_url_matches_the_operators_api() -> None:
    assert (API_GROUP_VERSION, REPORT_PLURAL) == (v1alpha1.API_VERSION, v1alpha1.REPORT_PLURAL)


def test_status_patches_are_throttled_merged_and_flushed_on_finish(
    api: FakeApiServer, token: Path
) -> None:
    clock = FakeClock()
    reporter = StatusReporter(client_for(api, token), min_interval_s=5.0, clock=clock)
    reporter.section("dataValidation", {"rowsIn": 120, "rowsOut": 118, "dropped": {"empty": 2}})
    reporter.started(INFO)
    clock.now = 1.0
    reporter.logged(step(10))
    clock.now = 2.0
    reporter.evaluated(EvalRecord(step=10, epoch=0.29, metrics={"accuracy": 0.875, "loss": 0.4}))
    clock.now = 3.0
    reporter.logged(step(20))
    assert len(api.requests) == 1
    clock.now = 5.0
    reporter.section("diagnosis", DIAGNOSIS)
    clock.now = 7.0
    reporter.logged(step(30))
    reporter.finished("succeeded", "done")
    reporter.close()

    assert api.bodies() == [
        {"dataValidation": {"rowsIn": 120, "rowsOut": 118, "dropped": {"empty": 2}}},
        {
            "progress": {
                "epoch": 1,
                "epochs": 3,
                "step": 20,
                "totalSteps": 100,
                "percent": 20,
                "etaSeconds": 16,  # 10 steps in 2 s since step 10, 80 steps left
            },
            "metrics": {"accuracy": 0.875, "loss": 0.4},
            "metricSummary": "accuracy=0.875",
            "diagnosis": DIAGNOSIS,
        },
        {
            "progress": {
                "epoch": 1,
                "epochs": 3,
                "step": 30,
                "totalSteps": 100,
                "percent": 30,
                "etaSeconds": 0,
            }
        },
    ]
    for body in api.bodies():
        assert_trainer_status(body)


def test_a_failed_patch_does_not_raise_is_kept_and_warned_about_once(
    api: FakeApiServer, token: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.codes = [500, 500]
    clock = FakeClock()
    reporter = StatusReporter(client_for(api, token), min_interval_s=5.0, clock=clock)
    reporter.started(INFO)
    clock.now = 5.0
    reporter.section("diagnosis", DIAGNOSIS)
    clock.now = 10.0
    reporter.logged(step(10))

    plan = {"progress": {"epochs": 3, "totalSteps": 100}}
    with_diagnosis = plan | {"diagnosis": DIAGNOSIS}
    after_step = progress_patch(INFO, step(10), None) | {"diagnosis": DIAGNOSIS}
    assert api.bodies() == [plan, with_diagnosis, after_step]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "HTTP 500: scripted 500" in warnings[0].getMessage()
    for body in api.bodies():
        assert_trainer_status(body)


def test_logged_steps_and_the_end_carry_the_cost_into_the_status(
    api: FakeApiServer, token: Path
) -> None:
    reporter = StatusReporter(client_for(api, token), min_interval_s=0.0, clock=FakeClock())
    reporter.started(INFO)
    reporter.logged(step(10, cost=RunCost(0.25)))
    reporter.section("cost", RunCost(0.5, 1.25, "EUR").to_status())
    reporter.close()
    assert api.bodies()[1]["cost"] == {"gpuHours": 0.25}
    assert api.bodies()[2] == {"cost": {"gpuHours": 0.5, "amount": 1.25, "currency": "EUR"}}
    for body in api.bodies():
        assert_trainer_status(body)


def test_a_patch_the_server_rejects_is_dropped(api: FakeApiServer, token: Path) -> None:
    api.codes = [422]
    clock = FakeClock()
    reporter = StatusReporter(client_for(api, token), min_interval_s=5.0, clock=clock)
    reporter.section("diagnosis", DIAGNOSIS)
    clock.now = 5.0
    reporter.section("artifacts", {"outputUri": "/output"})
    assert api.bodies() == [{"diagnosis": DIAGNOSIS}, {"artifacts": {"outputUri": "/output"}}]


def test_an_unreachable_server_does_not_stop_training(
    token: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = StatusClient(
        "ml", "sentiment", host=f"http://127.0.0.1:{closed_port}", token_path=token, ca_path=None
    )
    reporter = StatusReporter(client, clock=FakeClock())
    reporter.started(INFO)
    reporter.logged(step(10))
    reporter.finished("failed", "diverged")
    reporter.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ConnectionRefusedError" in warnings[0]


def test_sections_outside_the_status_stay_out_of_it(api: FakeApiServer, token: Path) -> None:
    reporter = StatusReporter(client_for(api, token), clock=FakeClock())
    reporter.section("freezing", {"epoch": 1, "trainable": ["classifier"]})
    reporter.close()
    assert api.requests == []


def test_nan_metrics_and_sections_still_make_valid_patches(api: FakeApiServer, token: Path) -> None:
    reporter = StatusReporter(client_for(api, token), min_interval_s=0.0, clock=FakeClock())
    reporter.started(INFO)
    reporter.evaluated(EvalRecord(step=5, epoch=0.1, metrics={"accuracy": math.nan, "loss": 9.0}))
    audit_metric = {"name": "demographicParityRatio", "attribute": "group", "value": math.nan}
    reporter.section("biasAudit", {"verdict": "InsufficientData", "metrics": [audit_metric]})
    reporter.close()
    assert api.bodies()[1] == {"metrics": {"loss": 9.0}, "metricSummary": "accuracy=nan"}
    assert api.bodies()[2]["biasAudit"]["metrics"][0]["value"] is None
    for body in api.bodies():
        assert_trainer_status(body)


def write_service_account(directory: Path) -> Path:
    directory.mkdir()
    (directory / "token").write_text("token")
    (directory / "ca.crt").write_text("not read until a request is made")
    return directory


def test_client_from_the_pod_environment(tmp_path: Path) -> None:
    account = write_service_account(tmp_path / "sa")
    env = {
        "KUBETUNE_REPORT_NAME": "sentiment",
        "KUBETUNE_JOB_NAMESPACE": "ml",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
    }
    client = StatusClient.from_environment(env, service_account_dir=account)
    assert client is not None
    assert client.url == (
        "https://10.96.0.1:6443/apis/kubetune.dev/v1alpha1/namespaces/ml/finetunejobreports/sentiment"
    )
    ipv6 = StatusClient.from_environment(
        env | {"KUBERNETES_SERVICE_HOST": "fd00::1"}, service_account_dir=account
    )
    assert ipv6 is not None
    assert ipv6.url.startswith("https://[fd00::1]:6443/apis/")


@pytest.mark.parametrize(
    "missing", ["KUBETUNE_REPORT_NAME", "KUBETUNE_JOB_NAMESPACE", "KUBERNETES_SERVICE_HOST"]
)
def test_no_client_without_the_job_or_a_cluster(tmp_path: Path, missing: str) -> None:
    account = write_service_account(tmp_path / "sa")
    env = {
        "KUBETUNE_REPORT_NAME": "sentiment",
        "KUBETUNE_JOB_NAMESPACE": "ml",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    }
    del env[missing]
    assert StatusClient.from_environment(env, service_account_dir=account) is None


def test_no_client_without_a_token(tmp_path: Path) -> None:
    env = {
        "KUBETUNE_REPORT_NAME": "sentiment",
        "KUBETUNE_JOB_NAMESPACE": "ml",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    }
    assert StatusClient.from_environment(env, service_account_dir=tmp_path) is None


def test_the_token_directory_comes_from_the_environment(tmp_path: Path) -> None:
    account = write_service_account(tmp_path / "projected")
    env = {
        "KUBETUNE_REPORT_NAME": "sentiment",
        "KUBETUNE_JOB_NAMESPACE": "ml",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBETUNE_SERVICE_ACCOUNT_DIR": str(account),
    }
    assert service_account_directory(env) == account
    assert StatusClient.from_environment(env) is not None
    elsewhere = env | {"KUBETUNE_SERVICE_ACCOUNT_DIR": str(tmp_path / "empty")}
    assert StatusClient.from_environment(elsewhere) is None
    assert StatusClient.from_environment(elsewhere, service_account_dir=account) is not None
    assert service_account_directory({}) == Path("/var/run/secrets/kubernetes.io/serviceaccount")


def test_the_api_url_replaces_the_in_cluster_service_and_is_used(
    tmp_path: Path, api: FakeApiServer
) -> None:
    account = write_service_account(tmp_path / "sa")
    env = {
        "KUBETUNE_REPORT_NAME": "sentiment",
        "KUBETUNE_JOB_NAMESPACE": "ml",
        "KUBETUNE_API_URL": api.host + "/",
        "KUBETUNE_SERVICE_ACCOUNT_DIR": str(account),
    }
    client = StatusClient.from_environment(env | {"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert client is not None
    assert client.url == (
        f"{api.host}/apis/kubetune.dev/v1alpha1/namespaces/ml/finetunejobreports/sentiment"
    )
    without_service = StatusClient.from_environment(env)
    assert without_service is not None
    without_service.patch({"progress": {"step": 3}})
    (request,) = api.requests
    assert request.path == "/apis/kubetune.dev/v1alpha1/namespaces/ml/finetunejobreports/sentiment"
    assert (request.authorization, request.body) == (
        "Bearer token",
        {"report": {"progress": {"step": 3}}},
    )


def test_an_api_url_without_a_scheme_is_named() -> None:
    assert api_base_url({"KUBERNETES_SERVICE_HOST": "fd00::1"}) == "https://[fd00::1]:443"
    assert api_base_url({}) is None
    with pytest.raises(ValueError, match="KUBETUNE_API_URL must be an http"):
        api_base_url({"KUBETUNE_API_URL": "127.0.0.1:8080"})


# Prometheus: scrape the real endpoint.


def scrape(port: int) -> dict[str, list[Sample]]:
    with without_proxies().open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def only_value(samples: list[Sample], name: str | None = None) -> float:
    (sample,) = [s for s in samples if name is None or s.name == name]
    assert sample.labels.get("job") == "sentiment"
    assert sample.labels.get("namespace") == "ml"
    return sample.value


def test_prometheus_serves_the_latest_numbers() -> None:
    clock = FakeClock()
    reporter = PrometheusReporter(
        0, job="sentiment", namespace="ml", address="127.0.0.1", clock=clock
    )
    try:
        reporter.started(INFO)
        clock.now = 10.0
        reporter.logged(step(10, samples_per_second=32.0, mfu=0.375, cost=RunCost(0.004)))
        clock.now = 15.0
        reporter.logged(
            step(
                20,
                epoch=0.5,
                loss=0.5,
                learning_rate=1e-5,
                grad_norm=None,
                samples_per_second=16,
                tokens_per_second=16 * 48.0,
                mfu=None,  # not measured this time: the gauge keeps the last known value
                cost=RunCost(2 * 15.0 / 3600),
            )
        )
        reporter.evaluated(EvalRecord(step=20, epoch=0.5, metrics={"accuracy": 0.875, "loss": 0.3}))
        families = scrape(reporter.port)
    finally:
        reporter.close()

    assert only_value(families["kubetune_trainer_loss"]) == 0.5
    assert only_value(families["kubetune_trainer_learning_rate"]) == 1e-5
    assert only_value(families["kubetune_trainer_grad_norm"]) == 1.25
    assert only_value(families["kubetune_trainer_samples_per_second"]) == 16.0
    assert only_value(families["kubetune_trainer_tokens_per_second"]) == 768.0
    assert only_value(families["kubetune_trainer_model_flops_utilization"]) == 0.375
    assert only_value(families["kubetune_trainer_epoch"]) == 0.5
    assert only_value(families["kubetune_trainer_step"]) == 20.0
    assert only_value(families["kubetune_trainer_progress_ratio"]) == 0.2
    assert only_value(families["kubetune_trainer_gpu_hours"]) == 2 * 15.0 / 3600  # the latest
    samples = families["kubetune_trainer_samples"]
    assert only_value(samples, "kubetune_trainer_samples_total") == 32.0 * 10 + 16.0 * 5
    evals = {s.labels["metric"]: s.value for s in families["kubetune_trainer_eval_metric"]}
    assert evals == {"accuracy": 0.875, "loss": 0.3}


def test_prometheus_documents_every_metric_and_stops_serving_on_close() -> None:
    reporter = PrometheusReporter(0, job="sentiment", namespace="ml", address="127.0.0.1")
    reporter.started(INFO)
    reporter.logged(step(10))
    reporter.evaluated(EvalRecord(step=10, epoch=0.3, metrics={"accuracy": 0.5}))
    with without_proxies().open(f"http://127.0.0.1:{reporter.port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    reporter.close()
    assert "kubetune_trainer_model_flops_utilization{" not in text  # never known: no sample
    for metric in TRAINER_METRICS:
        assert f"# HELP {metric.name} {metric.help}" in text
        assert f"# TYPE {metric.name} {metric.kind}" in text
    with pytest.raises(urllib.error.URLError):
        without_proxies().open(f"http://127.0.0.1:{reporter.port}/metrics", timeout=10)


# Files and the console


def run_events(reporter: Any) -> None:
    reporter.section("dataValidation", {"rowsIn": 120, "rowsOut": 118, "message": "2 empty"})
    reporter.started(INFO)
    reporter.logged(step(10, cost=RunCost(0.5, 1.25, "EUR"), mfu=0.412))
    reporter.logged(step(20, loss=math.nan, grad_norm=None))
    reporter.evaluated(EvalRecord(step=20, epoch=0.59, metrics={"accuracy": 0.875, "loss": 0.4}))
    reporter.section("diagnosis", DIAGNOSIS)
    reporter.finished("succeeded", "saved the best model")


def test_jsonl_writes_one_flushed_object_per_event(tmp_path: Path) -> None:
    path = tmp_path / "out" / "metrics.jsonl"
    reporter = JsonlReporter(path, clock=FakeClock(1700000000.0))
    run_events(reporter)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    reporter.close()
    time = 1700000000.0
    assert written == [
        {
            "event": "section",
            "time": time,
            "name": "dataValidation",
            "payload": {"rowsIn": 120, "rowsOut": 118, "message": "2 empty"},
        },
        {
            "event": "started",
            "time": time,
            "job": "sentiment",
            "namespace": "ml",
            "epochs": 3,
            "totalSteps": 100,
            "stepsPerEpoch": 34,
            "outputDir": "/output",
            "numProcesses": 2,
            "primaryMetric": "accuracy",
        },
        {
            "event": "step",
            "time": time,
            "step": 10,
            "epoch": 10 / 34,
            "loss": 0.6931,
            "learningRate": 2e-5,
            "gradNorm": 1.25,
            "samplesPerSecond": 32.0,
            "tokensPerSecond": 1024.0,
            "mfu": 0.412,
            "gpuHours": 0.5,
        },
        {
            "event": "step",
            "time": time,
            "step": 20,
            "epoch": 20 / 34,
            "loss": None,
            "learningRate": 2e-5,
            "gradNorm": None,
            "samplesPerSecond": 32.0,
            "tokensPerSecond": 1024.0,
            "mfu": None,
            "gpuHours": None,
        },
        {
            "event": "eval",
            "time": time,
            "step": 20,
            "epoch": 0.59,
            "metrics": {"accuracy": 0.875, "loss": 0.4},
        },
        {"event": "section", "time": time, "name": "diagnosis", "payload": DIAGNOSIS},
        {
            "event": "finished",
            "time": time,
            "outcome": "succeeded",
            "succeeded": True,
            "message": "saved the best model",
        },
    ]


@pytest.mark.parametrize(
    ("outcome", "line"),
    [
        ("succeeded", "training succeeded: best accuracy=0.9000"),
        ("failed", "training failed: best accuracy=0.9000"),
        ("interrupted", "training interrupted: best accuracy=0.9000"),
        ("budgetExceeded", "training stopped: best accuracy=0.9000"),
    ],
)
def test_the_last_line_and_event_say_how_the_run_ended(
    tmp_path: Path, outcome: Outcome, line: str
) -> None:
    """A stop with a checkpoint to resume from (SIGTERM, the budget) is not called a failure."""
    output = io.StringIO()
    path = tmp_path / "metrics.jsonl"
    reporter = FanOut([ConsoleReporter(Console(file=output, width=120)), JsonlReporter(path)])
    reporter.started(INFO)
    reporter.finished(outcome, "best accuracy=0.9000")
    reporter.close()
    assert output.getvalue().splitlines()[-1] == line
    event = json.loads(path.read_text().splitlines()[-1])
    assert (event["event"], event["outcome"]) == ("finished", outcome)
    assert event["succeeded"] is (outcome == "succeeded")


def test_jsonl_appends_a_restarted_run(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for _ in range(2):
        reporter = JsonlReporter(path)
        reporter.started(INFO)
        reporter.close()
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == [
        "started",
        "started",
    ]


def test_console_prints_plain_lines_when_not_a_terminal() -> None:
    output = io.StringIO()
    clock = FakeClock()
    reporter = ConsoleReporter(Console(file=output, width=120), clock=clock)
    run_events(reporter)
    reporter.close()
    lines = output.getvalue().splitlines()
    assert lines == [
        "dataValidation: 118 of 120 rows kept | 2 empty",
        "training ml/sentiment: 3 epochs, 100 steps (34 per epoch) on 2 processes, "
        "primary metric accuracy",
        "epoch 1/3  step 10/100  ETA --:--  loss 0.6931  lr 2.00e-05  grad norm 1.250  "
        "32.0 samples/s  1,024 tokens/s  MFU 41.2%",
        "epoch 1/3  step 20/100  ETA 0:00:00  loss nan  lr 2.00e-05  32.0 samples/s  "
        "1,024 tokens/s",
        "eval at step 20 (epoch 0.59): accuracy=0.8750  loss=0.4000",
        "diagnosis: Overfitting | raise weight decay",
        "training succeeded: saved the best model",
    ]


def test_console_eta_comes_from_the_pace() -> None:
    output = io.StringIO()
    clock = FakeClock()
    reporter = ConsoleReporter(Console(file=output, width=120), clock=clock)
    reporter.started(INFO)
    reporter.logged(step(10))
    clock.now = 20.0
    reporter.logged(step(20))
    assert "step 20/100  ETA 0:02:40  loss" in output.getvalue().splitlines()[-1]


def test_console_draws_a_bar_on_a_terminal() -> None:
    output = io.StringIO()
    console = Console(file=output, width=120, force_terminal=True, color_system=None)
    reporter = ConsoleReporter(console, clock=FakeClock())
    reporter.started(INFO)
    reporter.logged(step(10))
    reporter.section("freezing", {"epoch": 1, "trainable": ["classifier"], "frozen": []})
    reporter.finished("failed", "diverged")
    reporter.close()
    text = output.getvalue()
    assert "step 10/100  ETA --:--  loss 0.6931" in text
    assert "freezing: epoch=1 trainable=classifier frozen=-" in text
    assert text.rstrip().endswith("training failed: diverged")


def test_an_80_column_terminal_keeps_the_progress_line_on_one_row_with_its_eta() -> None:
    output = io.StringIO()
    console = Console(file=output, width=80, force_terminal=True, color_system=None)
    reporter = ConsoleReporter(console, clock=FakeClock())
    reporter.started(INFO)
    reporter.logged(step(10))
    reporter.close()
    (bar,) = [row for row in output.getvalue().split("\r") if "step 10/100" in row]
    row = re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", bar).rstrip("\n")  # no terminal codes
    assert len(row) <= 80
    assert "epoch 1/3  step 10/100  ETA --:--  loss 0.6931" in row
    assert row.endswith("…")  # the detail that does not fit is cut, not wrapped


def test_piped_lines_are_never_wrapped() -> None:
    """A pod's log or a pipe: each line whole, however long, so a log search finds it."""
    from kubetune_trainer.report.progress import plain_console

    console = plain_console()
    console.file = io.StringIO()
    console.width = 80
    long = "dataValidation: " + "word " * 40
    console.print(long, markup=False)
    assert console.file.getvalue() == long + "\n"


def test_fan_out_sends_every_event_to_every_reporter(tmp_path: Path) -> None:
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    clock = FakeClock(1.0)
    reporter = FanOut([JsonlReporter(path, clock=clock) for path in paths])
    run_events(reporter)
    reporter.close()
    first, second = (path.read_text() for path in paths)
    assert first == second
    assert len(first.splitlines()) == 7


def test_the_plain_console_prints_data_rows_as_they_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    row = "'awful :x: lamp [b]' (1 row)"
    message = f"data.labelColumn: train.csv has 1 row with labels that are not in {row}"
    reporter = ConsoleReporter(plain_console())
    reporter.section("dataValidation", failed_status(message))
    reporter.finished("failed", message)
    shown = capsys.readouterr().err
    assert shown.count(row) == 2
    assert "\N{CROSS MARK}" not in shown


# Choosing the sinks


def test_other_ranks_report_nothing(tmp_path: Path) -> None:
    reporter = build_reporter(rank_zero=False, output_dir=tmp_path, env={}, console=Console())
    assert isinstance(reporter, NullReporter)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_rank_zero_on_a_laptop_reports_to_the_console_and_a_file(tmp_path: Path) -> None:
    reporter = build_reporter(
        rank_zero=True,
        output_dir=tmp_path,
        env={"KUBETUNE_JOB_NAME": "sentiment"},
        console=Console(file=io.StringIO()),
        service_account_dir=tmp_path / "no-account",
    )
    assert isinstance(reporter, FanOut)
    assert [type(r) for r in reporter.reporters] == [ConsoleReporter, JsonlReporter]
    reporter.close()
    assert (tmp_path / "metrics.jsonl").exists()


def test_rank_zero_in_a_pod_also_serves_metrics_and_patches_the_status(tmp_path: Path) -> None:
    env = {
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_REPORT_NAME": "sentiment",
        "KUBETUNE_JOB_NAMESPACE": "ml",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    }
    reporter = build_reporter(
        rank_zero=True,
        output_dir=tmp_path,
        env=env,
        console=Console(file=io.StringIO()),
        service_account_dir=write_service_account(tmp_path / "sa"),
    )
    assert isinstance(reporter, FanOut)
    kinds = [type(r) for r in reporter.reporters]
    reporter.close()
    assert kinds == [ConsoleReporter, JsonlReporter, PrometheusReporter, StatusReporter]


def test_a_pod_of_the_test_kubelet_patches_the_status_through_the_api_url(
    tmp_path: Path,
) -> None:
    env = {
        "KUBETUNE_REPORT_NAME": "sentiment",
        "KUBETUNE_JOB_NAMESPACE": "ml",
        "KUBETUNE_API_URL": "http://127.0.0.1:8001",
        "KUBETUNE_SERVICE_ACCOUNT_DIR": str(write_service_account(tmp_path / "sa")),
    }
    reporter = build_reporter(
        rank_zero=True, output_dir=tmp_path, env=env, console=Console(file=io.StringIO())
    )
    assert isinstance(reporter, FanOut)
    kinds = [type(r) for r in reporter.reporters]
    reporter.close()
    assert kinds == [ConsoleReporter, JsonlReporter, StatusReporter]


def test_a_bad_metrics_port_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="KUBETUNE_METRICS_PORT must be a port number"):
        build_reporter(
            rank_zero=True,
            output_dir=tmp_path,
            env={"KUBETUNE_METRICS_PORT": "http"},
            console=Console(file=io.StringIO()),
        )


def test_console_without_a_terminal_prints_a_line_per_twentieth_of_the_run() -> None:
    output = io.StringIO()
    reporter = ConsoleReporter(Console(file=output, width=200), clock=FakeClock())
    reporter.started(INFO)
    for number in range(1, INFO.total_steps + 1):
        reporter.logged(step(number))
    step_lines = [line for line in output.getvalue().splitlines() if "  step " in line]
    assert len(step_lines) == 21  # steps 1, 5, 10, ..., 100
    assert "step 5/100" in step_lines[1]
    assert "step 100/100" in step_lines[-1]


def test_a_message_that_already_counts_the_rows_is_not_prefixed_twice() -> None:
    from kubetune_trainer.report.progress import section_summary

    payload = {"rowsIn": 10, "rowsOut": 8, "message": "8 of 10 rows kept: 2 duplicates dropped"}
    assert section_summary("dataValidation", payload) == (
        "dataValidation: 8 of 10 rows kept: 2 duplicates dropped"
    )


PREFERENCE_METRICS = {
    "chosenReward": 0.4,
    "rejectedReward": -0.6,
    "rewardMargin": 1.0,
    "rewardAccuracy": 0.75,
}


def test_a_dpo_runs_rewards_reach_every_output(tmp_path: Path) -> None:
    """Console, metrics.jsonl and Prometheus carry the training rewards of each logged step;
    the validation ones reach the status like any metric."""
    record = step(10, metrics=PREFERENCE_METRICS)
    line = step_line(INFO, record, None)
    assert "rewardMargin 1.0000  rewardAccuracy 0.7500" in line
    path = tmp_path / "metrics.jsonl"
    jsonl = JsonlReporter(path)
    jsonl.logged(record)
    jsonl.close()
    assert json.loads(path.read_text())["metrics"] == PREFERENCE_METRICS
    prometheus = PrometheusReporter(0, job="prefs", namespace="ml", address="127.0.0.1")
    try:
        prometheus.started(INFO)
        prometheus.logged(record)
        families = scrape(prometheus.port)
    finally:
        prometheus.close()
    served = {s.labels["metric"]: s.value for s in families["kubetune_trainer_train_metric"]}
    assert served == PREFERENCE_METRICS
    assert_trainer_status(metrics_patch({"loss": 0.3, **PREFERENCE_METRICS}, "rewardMargin"))
