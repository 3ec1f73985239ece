"""The emulator harness (tests/kube) runs a real kopf operator end to end.

A tiny operator (harness_operator.py) stands in for kubetune's: these tests prove that what
operator tests rely on works through the emulator: discovery, create/watch/patch/delete,
the status subresource, JSON-patched finalizers, ownerReferences and garbage collection,
Events, label-filtered watches, report patches from another process, request counting, and
both ways to run kopf.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.kube.client import TEST_USER_AGENT, KubeApiError, KubeClient
from tests.kube.emulator import EmulatorServer
from tests.kube.operators import OperatorProcess, OperatorThread, kopf_environment

OPERATOR = "tests.integration.harness_operator"
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"

TRAINER_PATCH = """
import sys
from pathlib import Path
from kubetune_trainer.report.progress import StatusClient

url, token = sys.argv[1], Path(sys.argv[2])
client = StatusClient("default", "sentiment", host=url, token_path=token, ca_path=None)
client.patch({"progress": {"step": 7, "totalSteps": 20}})
"""


def reasons(kube: KubeClient, body: dict[str, Any]) -> list[str]:
    return [event["reason"] for event in kube.events_for(body)]


def pending(job: dict[str, Any]) -> bool:
    return bool(job.get("status", {}).get("phase") == "Pending")


def test_status_subresource_changes_only_status_and_spec_changes_bump_generation(
    kube: KubeClient, sentiment: dict[str, Any]
) -> None:
    created = kube.create(sentiment)
    assert created["metadata"]["generation"] == 1

    patched = kube.patch(
        "FineTuneJob",
        "sentiment",
        {"status": {"phase": "Running"}, "spec": {"training": {"epochs": 9}}},
        subresource="status",
    )
    assert patched["status"] == {"phase": "Running"}
    assert patched["spec"]["training"]["epochs"] == 2
    assert patched["metadata"]["generation"] == 1

    # The CRD's rules leave suspend the one spec field a patch may change.
    respec = kube.patch(
        "FineTuneJob", "sentiment", {"spec": {"runPolicy": {"suspend": True}}, "status": None}
    )
    assert respec["spec"]["runPolicy"]["suspend"] is True
    assert respec["status"] == {"phase": "Running"}
    assert respec["metadata"]["generation"] == 2
    assert int(respec["metadata"]["resourceVersion"]) > int(patched["metadata"]["resourceVersion"])


def test_a_trainer_patch_without_the_status_stanza_changes_nothing(
    kube: KubeClient, sentiment: dict[str, Any]
) -> None:
    # As on a real API server: the status subresource ignores all but `status`.
    kube.create(sentiment)
    patched = kube.patch(
        "FineTuneJob", "sentiment", {"progress": {"step": 1}}, subresource="status"
    )
    assert "progress" not in patched
    assert "status" not in patched


def test_lists_filter_by_label_selector_and_name_their_kind(kube: KubeClient) -> None:
    for name, labels in (("a", {"tier": "x"}), ("b", {"tier": "y"}), ("c", {})):
        kube.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}}
        )

    def names(selector: str) -> list[str]:
        found = kube.list_objects("ConfigMap", label_selector=selector)
        return [item["metadata"]["name"] for item in found]

    answer = kube.request("GET", kube.resource("ConfigMap").path("default"))
    assert answer["kind"] == "ConfigMapList"
    assert names("tier=x") == ["a"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("tier notin (x)") == ["b", "c"]
    assert names("tier in (x, y),tier!=y") == ["a"]


def test_the_typed_kubernetes_client_works_through_the_kubeconfig(
    kube_emulator: EmulatorServer,
) -> None:
    api = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kube_emulator.kubeconfig_path)
    )
    core = kubernetes.client.CoreV1Api(api)
    typed = kubernetes.client.V1ConfigMap(
        metadata=kubernetes.client.V1ObjectMeta(name="typed"), data={"k": "v"}
    )
    core.create_namespaced_config_map("ml", typed)

    assert core.read_namespaced_config_map("typed", "ml").data == {"k": "v"}
    listed = core.list_namespaced_config_map("ml").items
    assert [item.metadata.name for item in listed if item.metadata] == ["typed"]
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        core.create_namespaced_config_map("ml", typed)
    assert conflict.value.status == 409
    api.close()


def test_operator_in_a_thread_creates_an_owned_config_map_status_and_event(
    kube_emulator: EmulatorServer,
    kube: KubeClient,
    operator_thread: Callable[[str], OperatorThread],
    sentiment: dict[str, Any],
) -> None:
    operator_thread(OPERATOR)
    before = len(kube_emulator.requests())
    job = kube.create(sentiment)

    job = kube.wait_for_object("FineTuneJob", "sentiment", pending)
    config_map = kube.wait_for_object("ConfigMap", "sentiment-config")
    assert config_map["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "sentiment",
            "uid": job["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert '"epochs": 2' in config_map["data"]["spec.json"]
    kube.wait_for_event(job, reason="ConfigCreated")
    assert job["metadata"]["finalizers"] == [KOPF_FINALIZER]
    counts = kube_emulator.request_counts(since=before, exclude_agent=TEST_USER_AGENT)
    assert counts["create configmaps"] == 1
    assert counts["patch finetunejobs/status"] >= 1

    kube.delete("FineTuneJob", "sentiment")
    kube.wait_until_gone("FineTuneJob", "sentiment")
    kube.wait_for_event(job, reason="Deleting")
    # The emulator collects garbage: the owned ConfigMap goes with its owner.
    kube.wait_until_gone("ConfigMap", "sentiment-config")


def test_a_report_patch_from_another_process_reaches_the_operator(
    kube_emulator: EmulatorServer,
    kube: KubeClient,
    operator_thread: Callable[[str], OperatorThread],
    sentiment: dict[str, Any],
    tmp_path: Path,
) -> None:
    operator_thread(OPERATOR)
    kube.create(sentiment)
    kube.wait_for_object("FineTuneJob", "sentiment", pending)
    token = tmp_path / "token"
    token.write_text("any-token\n")

    kube.create(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJobReport",
            "metadata": {"name": "sentiment"},
        }
    )
    subprocess.run(
        [sys.executable, "-c", TRAINER_PATCH, kube_emulator.url, str(token)],
        env=kopf_environment(kube_emulator.kubeconfig_path),
        check=True,
        timeout=120,
    )

    job = kube.wait_for_object(
        "FineTuneJob", "sentiment", lambda job: job["status"].get("seenStep") == 7
    )
    assert job["status"]["phase"] == "Pending"
    report = kube.get("FineTuneJobReport", "sentiment")
    assert report is not None
    assert report["report"]["progress"] == {"step": 7, "totalSteps": 20}


def test_label_filtered_pod_and_job_watches_reach_their_handlers(
    kube: KubeClient, operator_thread: Callable[[str], OperatorThread]
) -> None:
    operator_thread(OPERATOR)
    managed = {"app.kubernetes.io/managed-by": "kubetune"}
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "c", "image": "i"}]}}
    job = {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": pod["spec"]}}
    stray_pod = kube.create({**pod, "metadata": {"name": "stray"}})
    stray_job = kube.create({**job, "metadata": {"name": "stray"}})
    worker_pod = kube.create({**pod, "metadata": {"name": "worker", "labels": managed}})
    worker_job = kube.create({**job, "metadata": {"name": "workers", "labels": managed}})

    kube.wait_for(lambda: reasons(kube, worker_pod) == ["PodSeen"], "the PodSeen Event")
    kube.wait_for(lambda: reasons(kube, worker_job) == ["JobSeen"], "the JobSeen Event")
    assert reasons(kube, stray_pod) == []
    assert reasons(kube, stray_job) == []


def test_operator_as_a_kopf_run_subprocess(
    kube: KubeClient,
    operator_process: Callable[[str], OperatorProcess],
    sentiment: dict[str, Any],
) -> None:
    operator = operator_process(OPERATOR)
    job = kube.create(sentiment)

    kube.wait_for_object("FineTuneJob", "sentiment", pending)
    config_map = kube.wait_for_object("ConfigMap", "sentiment-config")
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    kube.wait_for_event(job, reason="ConfigCreated")
    assert operator.stop() == 0


def test_errors_come_back_as_kubernetes_statuses(kube: KubeClient) -> None:
    with pytest.raises(KubeApiError) as missing:
        kube.request("GET", kube.resource("FineTuneJob").path("default", "none"))
    assert missing.value.status == 404
    with pytest.raises(KubeApiError) as unknown:
        kube.request("GET", "/apis/kubetune.dev/v1alpha1/namespaces/default/nothings")
    assert unknown.value.status == 404


def test_kmock_reactions_inject_faults_and_the_store_keeps_serving(
    kube_emulator: EmulatorServer, kube: KubeClient
) -> None:
    for name in ("flaky", "steady"):
        kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    path = kube.resource("ConfigMap").path("default", "flaky")
    kube_emulator.call(lambda emulator: emulator[f"get {path}"][:1] << 503)

    with pytest.raises(KubeApiError) as unavailable:
        kube.get("ConfigMap", "flaky")
    assert unavailable.value.status == 503
    assert kube.get("ConfigMap", "flaky") is not None
    assert [item["metadata"]["name"] for item in kube.list_objects("ConfigMap")] == [
        "flaky",
        "steady",
    ]
