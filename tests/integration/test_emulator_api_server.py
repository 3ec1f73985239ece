"""The emulator answers as an API server would where an operator could get away with less.

Optimistic concurrency (409 for a stale resourceVersion, in a patch or a PUT), merge-patch
semantics of status writes, admission by the CRD's schema and CEL rules (422 naming the
field), and the faults a test asks for: error answers that store nothing, 429 with
Retry-After, resumed watches that replay what was missed, 410 Gone, bookmarks and cut
streams.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from typing import Any

import pytest

from tests.kube.client import KubeApiError, KubeClient
from tests.kube.emulator import EmulatorServer
from tests.kube.faults import Faults

JSON_PATCH = "application/json-patch+json"


def config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


def condition(kind: str, status: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "reason": "R",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def status_of(code: int, call: Any) -> int:
    with pytest.raises(KubeApiError) as failed:
        call()
    return failed.value.status


def watch(server: EmulatorServer, path: str, **params: str) -> list[dict[str, Any]]:
    """The events of one watch request, read until the server ends the stream."""
    query = "&".join(f"{k}={v}" for k, v in {"watch": "true", **params}.items())
    request = urllib.request.Request(f"{server.url}{path}?{query}")
    with urllib.request.urlopen(request, timeout=30) as stream:
        return [json.loads(line) for line in stream if line.strip()]


# --- optimistic concurrency and merge patches ---------------------------------------------


def test_a_write_naming_a_stale_resource_version_is_refused_409(kube: KubeClient) -> None:
    created = kube.create(config_map("c"))
    stale = created["metadata"]["resourceVersion"]
    kube.patch("ConfigMap", "c", {"data": {"a": "1"}})
    path = kube.resource("ConfigMap").path("default", "c")

    merge = {"metadata": {"resourceVersion": stale}, "data": {"a": "2"}}
    assert status_of(409, lambda: kube.patch("ConfigMap", "c", merge)) == 409
    replace = [{"op": "replace", "path": "/metadata/resourceVersion", "value": stale}]
    assert status_of(409, lambda: kube.request("PATCH", path, replace, content_type=JSON_PATCH))
    test = [{"op": "test", "path": "/data/a", "value": "2"}]
    assert status_of(422, lambda: kube.request("PATCH", path, test, content_type=JSON_PATCH)) == 422
    put = {**config_map("c"), "metadata": {"name": "c", "resourceVersion": stale}}
    assert status_of(409, lambda: kube.request("PUT", path, put)) == 409
    assert kube.get("ConfigMap", "c")["data"] == {"a": "1"}  # type: ignore[index]


def test_a_put_replaces_the_object_and_keeps_what_the_server_owns(kube: KubeClient) -> None:
    created = kube.create(config_map("c"))
    path = kube.resource("ConfigMap").path("default", "c")
    current = {**config_map("c"), "data": {"b": "2"}}
    current["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]

    replaced = kube.request("PUT", path, current)
    assert replaced["data"] == {"b": "2"}
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(replaced["metadata"]["resourceVersion"]) > int(
        current["metadata"]["resourceVersion"]
    )


def test_status_merge_patches_delete_nulls_and_replace_lists(
    kube: KubeClient, sentiment: dict[str, Any]
) -> None:
    kube.create(sentiment)
    first = {"phase": "Running", "metrics": {"accuracy": 0.5, "loss": 0.9}, "restarts": 1}
    first["conditions"] = [condition("Running", "True"), condition("Validated", "True")]
    kube.patch("FineTuneJob", "sentiment", {"status": first}, subresource="status")
    later = {"metrics": {"loss": None}, "conditions": [condition("Running", "False")]}
    patched = kube.patch("FineTuneJob", "sentiment", {"status": later}, subresource="status")

    assert patched["status"]["metrics"] == {"accuracy": 0.5}
    assert patched["status"]["conditions"] == [condition("Running", "False")]
    assert patched["status"]["restarts"] == 1


# --- admission --------------------------------------------------------------------------


def test_a_manifest_the_crd_refuses_is_refused_422_naming_the_field(
    kube: KubeClient, sentiment: dict[str, Any]
) -> None:
    bad = copy.deepcopy(sentiment)
    bad["spec"]["resources"]["workers"] = 0
    bad["spec"]["training"]["scheduler"] = "cosin"
    with pytest.raises(KubeApiError) as refused:
        kube.create(bad)
    assert refused.value.status == 422
    message = str(refused.value)
    assert 'FineTuneJob.kubetune.dev "sentiment" is invalid' in message
    assert "spec.resources.workers: Invalid value: 0: " in message
    assert 'spec.training.scheduler: Unsupported value: "cosin"' in message
    bad["spec"]["training"] = {**sentiment["spec"]["training"], "warmupSteps": 10}
    bad["spec"]["resources"]["workers"] = 1
    with pytest.raises(KubeApiError, match="set warmupRatio or warmupSteps, not both"):
        kube.create(bad)
    assert kube.get("FineTuneJob", "sentiment") is None


def test_an_immutable_field_changed_after_creation_is_refused_422(
    kube: KubeClient, sentiment: dict[str, Any]
) -> None:
    kube.create(sentiment)
    with pytest.raises(KubeApiError) as refused:
        kube.patch("FineTuneJob", "sentiment", {"spec": {"resources": {"workers": 3}}})
    assert refused.value.status == 422
    assert "spec.resources: Invalid value: " in str(refused.value)
    assert "spec.resources is immutable" in str(refused.value)
    suspended = kube.patch("FineTuneJob", "sentiment", {"spec": {"runPolicy": {"suspend": True}}})
    assert suspended["spec"]["runPolicy"]["suspend"] is True


def test_status_writes_are_checked_against_the_status_schema(
    kube: KubeClient, sentiment: dict[str, Any]
) -> None:
    kube.create(sentiment)
    with pytest.raises(KubeApiError, match=r'status.phase: Unsupported value: "Done"'):
        kube.patch("FineTuneJob", "sentiment", {"status": {"phase": "Done"}}, subresource="status")
    trials = [{"number": 0, "name": "t", "state": "Pruned", "objective": None}]
    stored = kube.patch(
        "FineTuneJob", "sentiment", {"status": {"trials": trials}}, subresource="status"
    )
    assert stored["status"]["trials"] == [{"number": 0, "name": "t", "state": "Pruned"}]


# --- faults -----------------------------------------------------------------------------


def test_an_injected_error_stores_nothing_and_a_429_says_when_to_retry(
    kube_emulator: EmulatorServer, kube: KubeClient
) -> None:
    plan = kube_emulator.inject(Faults(share=1.0, codes=(500,), spare_agent=None))
    assert status_of(500, lambda: kube.create(config_map("lost"))) == 500
    kube_emulator.inject(Faults(share=1.0, codes=(429,), retry_after=3, spare_agent=None))
    path = kube.resource("ConfigMap").path("default")
    request = urllib.request.Request(
        kube_emulator.url + path, data=json.dumps(config_map("lost")).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(request)
    assert answered.value.code == 429
    assert answered.value.headers["Retry-After"] == "3"
    assert json.loads(answered.value.read())["details"] == {"retryAfterSeconds": 3}
    assert plan.injected == {"500": 1}

    kube_emulator.inject(Faults())
    assert kube.get("ConfigMap", "lost") is None


def test_faults_fall_on_the_same_requests_for_the_same_seed(
    kube_emulator: EmulatorServer, kube: KubeClient
) -> None:
    def failures() -> list[int]:
        kube_emulator.inject(Faults(share=0.5, codes=(500,), seed=7, spare_agent=None))
        failed = []
        for number in range(20):
            try:
                kube.get("ConfigMap", f"c{number}")
            except KubeApiError:
                failed.append(number)
        return failed

    first = failures()
    assert 0 < len(first) < 20
    assert failures() == first


def test_the_tests_own_client_is_spared_by_default(
    kube_emulator: EmulatorServer, kube: KubeClient
) -> None:
    plan = kube_emulator.inject(Faults(share=1.0))
    kube.create(config_map("kept"))
    assert kube.get("ConfigMap", "kept") is not None
    assert plan.injected == {}


# --- watches ----------------------------------------------------------------------------


def test_a_resumed_watch_replays_what_it_missed_deletions_included(
    kube_emulator: EmulatorServer, kube: KubeClient
) -> None:
    since = kube.create(config_map("a"))["metadata"]["resourceVersion"]
    kube.patch("ConfigMap", "a", {"data": {"x": "1"}})
    kube.create(config_map("b"))
    kube.delete("ConfigMap", "a")
    path = kube.resource("ConfigMap").path("default")

    events = watch(kube_emulator, path, resourceVersion=since, timeoutSeconds="1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]


def test_a_watch_from_a_compacted_version_gets_410_gone(
    kube_emulator: EmulatorServer, kube: KubeClient
) -> None:
    kube_emulator.call(lambda emulator: setattr(emulator, "log_capacity", 4))
    since = kube.create(config_map("a"))["metadata"]["resourceVersion"]
    for number in range(6):
        kube.patch("ConfigMap", "a", {"data": {"n": str(number)}})
    path = kube.resource("ConfigMap").path("default")

    (event,) = watch(kube_emulator, path, resourceVersion=since, timeoutSeconds="1")
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")


def test_faults_cut_watches_answer_gone_and_bookmarks_come_when_asked(
    kube_emulator: EmulatorServer, kube: KubeClient
) -> None:
    since = kube.create(config_map("a"))["metadata"]["resourceVersion"]
    path = kube.resource("ConfigMap").path("default")
    kube_emulator.call(lambda emulator: setattr(emulator, "bookmark_s", 0.2))
    plan = kube_emulator.inject(Faults(cut_share=1.0, cut_after=(0.5, 0.5), spare_agent=None))

    events = watch(kube_emulator, path, allowWatchBookmarks="true", timeoutSeconds="60")
    assert events[0]["type"] == "ADDED"
    assert {e["type"] for e in events[1:]} == {"BOOKMARK"}
    assert events[-1]["object"]["metadata"]["resourceVersion"] == since
    assert plan.injected["watch cut"] == 1

    plan = kube_emulator.inject(Faults(gone_share=1.0, spare_agent=None))
    (gone,) = watch(kube_emulator, path, resourceVersion=since, timeoutSeconds="1")
    assert gone["object"]["code"] == 410
    assert plan.injected["410 Gone"] == 1
