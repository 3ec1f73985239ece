"""The operator's process-wide parts: settings from the chart's environment, its metrics."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kubetune_operator import builders, metrics
from kubetune_operator.api.runtime import Guardrails
from kubetune_operator.controller.handlers import settings_from_env


def test_settings_come_from_the_environment_with_defaults() -> None:
    assert settings_from_env({}) == builders.OperatorSettings()
    settings = settings_from_env(
        {
            "KUBETUNE_TRAINER_IMAGE": "registry.example/trainer:2",
            "KUBETUNE_IMAGE_PULL_SECRETS": " regcred, ,other ",
        }
    )
    assert settings.trainer_image == "registry.example/trainer:2"
    assert settings.image_pull_secrets == ("regcred", "other")


def test_the_default_policy_comes_from_the_environment() -> None:
    assert settings_from_env({}).default_policy == Guardrails()
    env = {"KUBETUNE_DEFAULT_POLICY": '{"maxGpusPerJob": 8, "allowedSecrets": []}'}
    assert settings_from_env(env).default_policy == Guardrails(
        max_gpus_per_job=8, allowed_secrets=[]
    )


def test_a_bad_default_policy_stops_the_operator_naming_the_value() -> None:
    env = {"KUBETUNE_DEFAULT_POLICY": '{"maxGpusPerJob": 8, "alowedSecrets": []}'}
    with pytest.raises(
        ValueError,
        match=r"KUBETUNE_DEFAULT_POLICY \(Helm value defaultPolicy\) "
        r"is invalid: alowedSecrets: unknown field; did you mean allowedSecrets\?",
    ):
        settings_from_env(env)


@pytest.mark.parametrize("port", ["http", "-1", "70000"])
def test_a_bad_metrics_port_names_the_variable(port: str) -> None:
    with pytest.raises(ValueError, match="KUBETUNE_OPERATOR_METRICS_PORT"):
        metrics.serve({"KUBETUNE_OPERATOR_METRICS_PORT": port})


def test_port_zero_serves_nothing() -> None:
    assert metrics.serve({"KUBETUNE_OPERATOR_METRICS_PORT": "0"}) is None


def test_jobs_per_phase_count_the_last_phase_of_each_job() -> None:
    collector = metrics.JobsCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    collector.track(("ml", "a"), "Running")
    collector.track(("ml", "b"), "Running")
    collector.track(("ml", "a"), "Succeeded", "Failed")
    collector.track(("ml", "c"), "Failed")
    collector.track(("ml", "c"), None)  # deleted
    text = generate_latest(registry).decode()
    assert 'kubetune_jobs{phase="Running"} 1.0' in text
    assert 'kubetune_jobs{phase="Succeeded"} 1.0' in text
    assert 'kubetune_jobs{phase="Failed"} 0.0' in text
    assert 'kubetune_jobs{phase="Pending"} 0.0' in text
    assert 'kubetune_bias_audits{verdict="Failed"} 1.0' in text
    assert 'kubetune_bias_audits{verdict="Passed"} 0.0' in text


def test_every_status_reason_has_a_troubleshooting_section() -> None:
    from kubetune_operator.status import Reason
    from tests.conftest import REPO

    guide = (REPO / "docs/troubleshooting.md").read_text()
    reasons = [value for name, value in vars(Reason).items() if not name.startswith("_")]
    assert len(reasons) > 20
    missing = [reason for reason in reasons if f"### `{reason}`" not in guide]
    assert missing == []


def test_a_deleted_job_leaves_nothing_behind_for_a_new_one_of_its_name() -> None:
    from kubernetes import client

    from kubetune_operator import kube
    from kubetune_operator.controller.state import OperatorState

    shared = OperatorState(kube.Cluster(client.ApiClient()), builders.OperatorSettings())
    key, other = ("ml", "sentiment"), ("ml", "other")
    for job in (key, other):
        shared.locks[job].acquire()
        shared.locks[job].release()
        shared.restarted[job] = 2
        shared.written[job] = {"phase": "Running"}
        shared.created_jobs[job] = {"kind": "Job"}
    shared.forget(key)
    for kept in (shared.locks, shared.restarted, shared.written, shared.created_jobs):
        assert key not in kept
        assert other in kept


def indexed(version: str, status: dict[str, Any]) -> dict[str, Any]:
    metadata = {"namespace": "ml", "name": "q2", "resourceVersion": version}
    return {"metadata": metadata, "status": status}


def test_own_writes_stay_over_a_newer_index_version_that_lacks_them() -> None:
    """The create handler's status goes through kopf after the handler ends; a Job handler's
    direct patch can reach the API first, so the index shows a newer version without the
    Validated status. The queue must still see that the job holds its GPUs."""
    from kubernetes import client

    from kubetune_operator import kube
    from kubetune_operator.controller.state import OperatorState

    shared = OperatorState(kube.Cluster(client.ApiClient()), builders.OperatorSettings())
    key = ("ml", "q2")
    validated = {"conditions": [{"type": "Validated", "status": "True"}], "queuePosition": None}
    progress = {"phase": "Pending", "workers": {"running": 0}}
    shared.written[key], shared.written_at[key] = {**validated, **progress}, shared.clock()

    newer_without_it = indexed("12", {**progress, "progress": {"step": 3}})
    seen = shared.own_writes_over(key, newer_without_it)
    assert seen is not None
    assert seen["status"] == {**progress, "progress": {"step": 3}, **validated}
    assert key in shared.written

    conditions = validated["conditions"]
    showing_all = indexed("13", {**progress, "workers": {"running": 0, "failed": 0}})
    showing_all["status"]["conditions"] = conditions  # queuePosition: None is absent
    assert shared.own_writes_over(key, showing_all) is showing_all
    assert key not in shared.written


def test_own_writes_give_way_to_the_index_after_a_while() -> None:
    """A create handler's patch that kopf retried through API faults landed after the
    refresh's Succeeded and set the phase back to Pending: the index must be believed again,
    or the operator would think the job Succeeded and never write it again."""
    from kubernetes import client

    from kubetune_operator import kube
    from kubetune_operator.controller.state import OWN_WRITES_TTL_S, OperatorState

    now = [100.0]
    shared = OperatorState(
        kube.Cluster(client.ApiClient()), builders.OperatorSettings(), clock=lambda: now[0]
    )
    key = ("ml", "q2")
    shared.written[key], shared.written_at[key] = {"phase": "Succeeded"}, now[0]
    undone = indexed("14", {"phase": "Pending"})
    seen = shared.own_writes_over(key, undone)
    assert seen is not None
    assert seen["status"]["phase"] == "Succeeded"
    now[0] += OWN_WRITES_TTL_S + 1
    assert shared.own_writes_over(key, undone) is undone
    assert key not in shared.written
