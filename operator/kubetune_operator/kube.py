"""The operator's calls to the Kubernetes API, shared with `kubetune submit` and `status`.

A thin layer over the official client, so the handlers read as intent (create this child,
restart that Job) and never build URLs. Creating is idempotent: an object that already
exists (HTTP 409) counts as done, and deleting one that is gone (404) too, which makes every
reconcile safe to repeat after an operator restart or a lost answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune_operator import metrics
from kubetune_operator.api import v1alpha1

CONFLICT: Final = 409
NOT_FOUND: Final = 404
SERVICE_ACCOUNT_TOKEN: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"
MERGE_PATCH: Final = "application/merge-patch+json"

_CREATE_METHODS: Final[dict[tuple[str, str], tuple[type[Any], str]]] = {
    ("v1", "ConfigMap"): (client.CoreV1Api, "create_namespaced_config_map"),
    ("v1", "ServiceAccount"): (client.CoreV1Api, "create_namespaced_service_account"),
    ("v1", "Service"): (client.CoreV1Api, "create_namespaced_service"),
    ("rbac.authorization.k8s.io/v1", "Role"): (
        client.RbacAuthorizationV1Api,
        "create_namespaced_role",
    ),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        client.RbacAuthorizationV1Api,
        "create_namespaced_role_binding",
    ),
    ("batch/v1", "Job"): (client.BatchV1Api, "create_namespaced_job"),
}


class KubeError(Exception):
    """An API call that failed for a reason a person can act on; the message says which."""


def connect() -> client.ApiClient:
    """A client with the pod's service account in a cluster, else the current kubeconfig."""
    try:
        if os.path.exists(SERVICE_ACCOUNT_TOKEN) and "KUBERNETES_SERVICE_HOST" in os.environ:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            # The client reads KUBECONFIG when it is imported; read it when connecting.
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG") or None
            )
    except config.ConfigException as error:
        raise KubeError(f"cannot find a cluster to talk to: {error}") from None
    return client.ApiClient()


class Cluster:
    """The calls kubetune makes, each one request."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Create `obj` in its namespace; False when it already existed."""
        namespace = obj["metadata"]["namespace"]
        try:
            if obj["apiVersion"] == v1alpha1.API_VERSION:
                client.CustomObjectsApi(self.api).create_namespaced_custom_object(
                    v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, dict(obj)
                )
            else:
                api_class, method = _CREATE_METHODS[(obj["apiVersion"], obj["kind"])]
                getattr(api_class(self.api), method)(namespace, obj)
        except ApiException as error:
            if error.status == CONFLICT:
                return False
            _count_failure(f"create {obj['kind']}", error)
            raise
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a batch Job and, before it disappears, its pods (foreground deletion), so
        the next worker group of the same name never meets the old one."""
        self._ignore_missing(
            "delete Job",
            lambda: client.BatchV1Api(self.api).delete_namespaced_job(
                name, namespace, propagation_policy="Foreground"
            ),
        )

    def delete(self, obj: Mapping[str, Any]) -> None:
        """Delete one child by kind and name (for cleanup after ttlSecondsAfterFinished)."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        kind = obj["kind"]
        core, rbac = client.CoreV1Api(self.api), client.RbacAuthorizationV1Api(self.api)
        deleters: dict[str, Callable[[], object]] = {
            "ConfigMap": lambda: core.delete_namespaced_config_map(name, namespace),
            "ServiceAccount": lambda: core.delete_namespaced_service_account(name, namespace),
            "Service": lambda: core.delete_namespaced_service(name, namespace),
            "Role": lambda: rbac.delete_namespaced_role(name, namespace),
            "RoleBinding": lambda: rbac.delete_namespaced_role_binding(name, namespace),
        }
        if kind == "Job":
            self.delete_job(namespace, name)
        else:
            self._ignore_missing(f"delete {kind}", deleters[kind])

    def set_suspended(self, namespace: str, name: str, suspended: bool) -> None:
        """Suspend (pods deleted) or resume a batch Job."""
        self._ignore_missing(
            "patch Job",
            lambda: client.BatchV1Api(self.api).patch_namespaced_job(
                name, namespace, {"spec": {"suspend": suspended}}, _content_type=MERGE_PATCH
            ),
        )

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch the FineTuneJob's status subresource."""
        self._ignore_missing(
            "patch FineTuneJob/status",
            lambda: client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                namespace,
                v1alpha1.PLURAL,
                name,
                {"status": dict(patch)},
            ),
        )

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        """One FineTuneJob as plain data; KubeError when it does not exist."""
        try:
            found = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name
            )
        except ApiException as error:
            if error.status == NOT_FOUND:
                raise KubeError(f"FineTuneJob {namespace}/{name} not found") from None
            raise
        return cast(dict[str, Any], found)

    @staticmethod
    def _ignore_missing(operation: str, call: Callable[[], object]) -> None:
        try:
            call()
        except ApiException as error:
            if error.status != NOT_FOUND:
                _count_failure(operation, error)
                raise


def _count_failure(operation: str, error: ApiException) -> None:
    metrics.API_ERRORS.labels(operation, str(error.status)).inc()
