"""The operator end to end: `kubectl apply` of the sentiment example to a finished, audited run.

Everything is real except the cluster: the kmock emulator serves the API, the operator runs
as `kopf run` in a subprocess, and the test kubelet (tests/kube/kubelet.py, which says what
it does not emulate) plays the Job controller and runs each worker pod's `accelerate launch`
as local processes, two machines rendezvousing over loopback with gloo. The trainer
reports to the FineTuneJob's status through the emulator, and a real Prometheus scrapes the
trainer's and the operator's metrics ports.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import REPO, load_example, required_program
from tests.kube.client import KubeClient, wait_for
from tests.kube.emulator import EmulatorServer
from tests.kube.kubelet import TestKubelet, free_port
from tests.kube.operators import OperatorProcess

pytestmark = pytest.mark.slow

HANDLERS: Final = "kubetune_operator.controller.handlers"
JOB: Final = "sentiment"
TRAINER_METRICS_PORT: Final = 9400
"""The trainer's containerPort (builders.OperatorSettings.metrics_port)."""
RUN_TIMEOUT_S: Final = 1800.0
"""Generous: a timeout is a failure with the objects and logs shown, never a speed check."""


@dataclass
class Cluster:
    """One emulated cluster with the operator, the test kubelet and (optionally) Prometheus."""

    server: EmulatorServer
    kube: KubeClient
    kubelet: TestKubelet
    operator: OperatorProcess
    operator_metrics_port: int
    prometheus_url: str | None = None

    def describe(self) -> str:
        ftj = self.kube.get("FineTuneJob", JOB)
        shown = json.dumps(ftj.get("status") if ftj else None, indent=1)[-6000:]
        return (
            f"FineTuneJob status: {shown}\nobjects:\n{self.server.describe()[-4000:]}\n"
            f"operator log:\n{self.operator.log_tail(3000)}\npods:\n{self.kubelet.describe()}"
        )

    def wait(self, probe: Callable[[], Any], what: str) -> Any:
        return wait_for(probe, what, timeout_s=RUN_TIMEOUT_S, details=self.describe)

    def finetunejob(self) -> dict[str, Any]:
        found = self.kube.get("FineTuneJob", JOB)
        assert found is not None, self.describe()
        return found

    def wait_for_phase(self, phase: str) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            ftj = self.finetunejob()
            current = ftj.get("status", {}).get("phase")
            if current == "Failed" and phase != "Failed":
                raise AssertionError(
                    f"the job failed instead of reaching {phase}\n{self.describe()}"
                )
            return ftj if current == phase else None

        result: dict[str, Any] = self.wait(reached, f"FineTuneJob {JOB} to reach {phase}")
        return result


@contextlib.contextmanager
def start_cluster(root: Path, *, prometheus: bool = False) -> Iterator[Cluster]:
    operator_port = free_port()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(EmulatorServer(root / "kubeconfig"))
        kube = KubeClient(server.kubeconfig_path, details=server.describe)
        stack.callback(kube.close)
        kubelet = stack.enter_context(TestKubelet(kube, server.url, root / "kubelet"))
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setenv("KUBETUNE_OPERATOR_METRICS_PORT", str(operator_port))
        patch.setenv("KUBETUNE_TRAINER_IMAGE", "registry.example/kubetune-trainer:e2e")
        operator = OperatorProcess([HANDLERS], server.kubeconfig_path, root / "kopf.log")
        stack.enter_context(operator)
        cluster = Cluster(server, kube, kubelet, operator, operator_port)
        if prometheus:
            targets = {
                "trainer": kubelet.host_port(TRAINER_METRICS_PORT),
                "operator": operator_port,
            }
            cluster.prometheus_url = stack.enter_context(
                run_prometheus(root / "prometheus", targets)
            )
        yield cluster


@contextlib.contextmanager
def run_prometheus(root: Path, targets: dict[str, int]) -> Iterator[str]:
    """Prometheus on a loopback port scraping the given ports every second; its URL."""
    root.mkdir(parents=True)
    jobs = [
        # honor_labels: the trainer's own `job` label (the FineTuneJob) wins over the target's.
        {
            "job_name": name,
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        }
        for name, port in targets.items()
    ]
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}
    (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    address = f"127.0.0.1:{free_port()}"
    with (root / "log").open("wb") as log:
        process = subprocess.Popen(
            [
                required_program("prometheus", package="prometheus"),
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{address}"
    try:
        wait_for(
            lambda: process.poll() is None and _answers(f"{url}/-/ready"),
            "Prometheus to be ready",
            details=lambda: (root / "log").read_text(errors="replace")[-3000:],
        )
        yield url
    finally:
        process.terminate()
        process.wait()


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
        return bool(answer.status == 200)
    return False


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query through Prometheus' HTTP API."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def cluster_manifest(kubelet: TestKubelet, epochs: int, **output: Any) -> dict[str, Any]:
    """The sentiment example on 2 CPU workers, reading its data from a claim and writing
    its output to another; the claim's files are copied where the kubelet mounts it."""
    data = kubelet.pvc_dir("data") / "sentiment"
    shutil.copytree(REPO / "examples/sentiment/data", data)
    manifest = copy.deepcopy(load_example("sentiment/job.yaml"))
    spec = manifest["spec"]
    spec["data"]["train"]["source"] = "pvc://data/sentiment/train.csv"
    spec["data"]["validation"]["source"] = "pvc://data/sentiment/validation.csv"
    spec["training"]["epochs"] = epochs
    spec["output"] = {"uri": f"pvc://runs/{JOB}", **output}
    # One CPU per worker: two workers on a two-core machine, one thread each.
    spec["resources"] = {"workers": 2, "gpusPerWorker": 0, "cpu": 1}
    return manifest


def condition(ftj: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in ftj.get("status", {}).get("conditions", []) if c["type"] == kind]
    return found[0] if found else {}


# A successful run, shared by the status and the Prometheus tests.


@dataclass
class FinishedRun:
    ftj: dict[str, Any]
    output: Path
    prometheus_url: str
    loss_while_running: list[dict[str, Any]]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:
    root = tmp_path_factory.mktemp("e2e-run")
    with start_cluster(root, prometheus=True) as cluster:
        assert cluster.prometheus_url is not None
        cluster.kube.create(cluster_manifest(cluster.kubelet, epochs=1))
        loss = cluster.wait(
            lambda: query(cluster.prometheus_url or "", f'kubetune_trainer_loss{{job="{JOB}"}}'),
            "Prometheus to scrape the trainer's loss while the job runs",
        )
        cluster.wait_for_phase("Succeeded")
        # The operator derives BiasAuditPassed from the trainer's status.biasAudit; should it
        # see the Job complete before that patch, the condition follows the phase.
        ftj = cluster.kube.wait_for_object(
            "FineTuneJob", JOB, lambda found: condition(found, "BiasAuditPassed")
        )
        yield FinishedRun(ftj, cluster.kubelet.pvc_dir("runs") / JOB, cluster.prometheus_url, loss)


def test_the_sentiment_example_succeeds_on_two_workers(finished_run: FinishedRun) -> None:
    status = finished_run.ftj["status"]
    assert condition(finished_run.ftj, "Succeeded")["status"] == "True"
    assert condition(finished_run.ftj, "BiasAuditPassed"), status["conditions"]
    assert status.get("restarts", 0) == 0
    progress = status["progress"]
    assert progress["step"] == progress["totalSteps"] > 0
    assert progress["percent"] == 100
    assert 0.0 <= status["metrics"]["accuracy"] <= 1.0
    assert status["metricSummary"].startswith("accuracy=")
    assert status["diagnosis"]["verdict"]
    assert status["dataValidation"]
    assert status["biasAudit"]["verdict"] in ("Passed", "Failed")
    assert status["workers"]["succeeded"] == 2
    report = json.loads((finished_run.output / "report.json").read_text())
    assert report["bestMetrics"]["accuracy"] == pytest.approx(status["metrics"]["accuracy"])


def test_prometheus_scrapes_the_trainer_loss_and_the_operator_jobs(
    finished_run: FinishedRun,
) -> None:
    logged = [
        json.loads(line)
        for line in (finished_run.output / "metrics.jsonl").read_text().splitlines()
    ]
    losses = {event["loss"] for event in logged if event["event"] == "step"}
    (series,) = finished_run.loss_while_running
    assert series["metric"]["namespace"] == "default"
    assert float(series["value"][1]) in losses
    # The trainer's server went with its process; the stored series stays.
    promql = f'last_over_time(kubetune_trainer_loss{{job="{JOB}"}}[1h])'
    (stored,) = query(finished_run.prometheus_url, promql)
    assert float(stored["value"][1]) in losses
    succeeded = wait_for(
        lambda: query(finished_run.prometheus_url, 'kubetune_jobs{phase="Succeeded"} == 1'),
        "Prometheus to scrape the operator's kubetune_jobs{phase=Succeeded} == 1",
        timeout_s=RUN_TIMEOUT_S,
    )
    assert succeeded[0]["metric"]["job"] == "operator"
    phases = query(finished_run.prometheus_url, "kubetune_jobs")
    assert sum(float(sample["value"][1]) for sample in phases) == 1


def test_a_killed_worker_restarts_the_group_which_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    with start_cluster(tmp_path) as cluster:
        manifest = cluster_manifest(cluster.kubelet, epochs=1, checkpointEverySteps=5)
        cluster.kube.create(manifest)
        checkpoints = cluster.kubelet.pvc_dir("runs") / JOB / "checkpoints"
        cluster.wait(
            lambda: (
                cluster.finetunejob().get("status", {}).get("progress", {}).get("step", 0) > 0
                and any(checkpoints.glob("step-*"))
            ),
            "a logged step and a checkpoint in the output claim",
        )
        killed = cluster.kubelet.kill(1)
        ftj = cluster.wait_for_phase("Succeeded")

        assert ftj["status"]["restarts"] == 1
        assert ftj["status"]["lastFailure"]["exitCode"] == 137
        assert condition(ftj, "Succeeded")["status"] == "True"
        logs = cluster.kubelet.pod_logs()
        assert killed in logs
        assert len(logs) == 4, list(logs)  # two workers, twice
        resumed = [pod for pod, log in logs.items() if "Resuming from" in log]
        # Every rank of the second group, and only those, resumed.
        assert len(resumed) == 2, cluster.describe()
        assert killed not in resumed
        events = [
            json.loads(line)
            for line in (checkpoints.parent / "metrics.jsonl").read_text().splitlines()
        ]
        starts = [index for index, event in enumerate(events) if event["event"] == "started"]
        assert len(starts) == 2
        first_step_after_restart = next(e for e in events[starts[1] :] if e["event"] == "step")
        assert first_step_after_restart["step"] > 5


def test_a_suspended_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    with start_cluster(tmp_path) as cluster:
        manifest = cluster_manifest(cluster.kubelet, epochs=1, checkpointEverySteps=5)
        created = cluster.kube.create(manifest)
        checkpoints = cluster.kubelet.pvc_dir("runs") / JOB / "checkpoints"
        cluster.wait(lambda: any(checkpoints.glob("step-*")), "a checkpoint in the output claim")

        cluster.kube.patch("FineTuneJob", JOB, {"spec": {"runPolicy": {"suspend": True}}})
        suspended = cluster.wait_for_phase("Suspended")
        cluster.wait(
            lambda: not cluster.kube.list_objects("Pod", "default") or None, "the pods to go"
        )
        saved = sorted(path.name for path in checkpoints.glob("step-*"))
        cluster.kube.patch("FineTuneJob", JOB, {"spec": {"runPolicy": {"suspend": False}}})
        ftj = cluster.wait_for_phase("Succeeded")

        assert condition(suspended, "Suspended")["status"] == "True"
        assert ftj["status"].get("restarts", 0) == 0
        logs = cluster.kubelet.pod_logs()
        assert len(logs) == 4, list(logs)  # two workers, before and after the suspension
        # The console wraps long lines: compare without the whitespace.
        unwrapped = {pod: "".join(log.split()) for pod, log in logs.items()}
        resumed = [pod for pod, log in unwrapped.items() if "Resumingfrom/" in log]
        assert all(saved[-1] in unwrapped[pod] for pod in resumed)
        assert len(resumed) == 2, cluster.describe()
        events = [
            json.loads(line)
            for line in (checkpoints.parent / "metrics.jsonl").read_text().splitlines()
        ]
        starts = [index for index, event in enumerate(events) if event["event"] == "started"]
        assert len(starts) == 2
        first_step_after = next(e for e in events[starts[1] :] if e["event"] == "step")
        assert first_step_after["step"] > int(saved[-1].removeprefix("step-"))
        cluster.kube.wait_for_event(created, reason="Suspended")


def test_a_group_stuck_in_its_data_loader_is_restarted_as_stalled_and_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's test hook blocks the data loader of the first group for good: the pods
    stay Running, the heartbeat stops, and only the operator's watchdog can end it."""
    monkeypatch.setenv("KUBETUNE_TEST_HANG", "dataloader")
    monkeypatch.setenv("KUBETUNE_TICK_SECONDS", "1")
    with start_cluster(tmp_path) as cluster:
        manifest = cluster_manifest(cluster.kubelet, epochs=1, checkpointEverySteps=5)
        manifest["spec"]["runPolicy"] = {
            "stallTimeout": "40s",
            "terminationGracePeriodSeconds": 30,
        }
        cluster.kube.create(manifest)
        ftj = cluster.wait_for_phase("Succeeded")

        assert ftj["status"]["restarts"] == 1
        assert ftj["status"]["lastFailure"]["reason"] == "Stalled"
        (stalled,) = [
            event["message"]
            for event in cluster.kube.events_for(ftj)
            if event["reason"] == "Restarting"
        ]
        assert re.search(r"no sign of progress for \d+ s while Training", stalled), stalled
        assert "spec.runPolicy.stallTimeout 40s" in stalled
        assert ftj["status"]["heartbeat"]["phase"] in ("Examining", "Saving", "Training")
