"""The operator's calls to the Kubernetes API, shared with `kubetune submit` and `status`.

A thin layer over the official client, so the handlers read as intent (create this child,
restart that Job) and never build URLs. Creating is idempotent: an object that already
exists (HTTP 409) counts as done, and deleting one that is gone (404) too, which makes every
reconcile safe to repeat after an operator restart or a lost answer. The CLI wraps its calls
in `explained`, which turns refusals and network failures into one line a person can act on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import quote

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune_operator import metrics
from kubetune_operator.api import v1alpha1

CONFLICT: Final = 409
NOT_FOUND: Final = 404
BAD_REQUEST: Final = 400
UNAUTHORIZED: Final = 401
FORBIDDEN: Final = 403
TOO_MANY_REQUESTS: Final = 429
SERVER_ERROR: Final = 500
TRANSIENT_RETRY_S: Final = 1.0
"""How soon a handler that met a 5xx (or a 429 without Retry-After) runs again; kopf's
default for an unexpected error is a minute."""
SERVICE_ACCOUNT_TOKEN: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SERVICE_ACCOUNT_NAMESPACE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_NAMESPACE: Final = "default"
MERGE_PATCH: Final = "application/merge-patch+json"
EVENT_SOURCE: Final = "kubetune"
KUEUE_VISIBILITY_GROUP: Final = "visibility.kueue.x-k8s.io"
KUEUE_VISIBILITY_VERSIONS: Final = ("v1beta2", "v1beta1")
"""The versions of Kueue's visibility API asked, newest first: Kueue 0.15 and later serve
v1beta2, 0.9 to 0.14 v1beta1 (0.6 to 0.8 served only v1alpha1, which is not asked)."""

_CUSTOM_PLURALS: Final = {
    v1alpha1.KIND: v1alpha1.PLURAL,
    v1alpha1.REPORT_KIND: v1alpha1.REPORT_PLURAL,
}
"""kubetune's own kinds that the operator creates and deletes, by kind."""
_KIND_METHODS: Final[dict[tuple[str, str], tuple[type[Any], str]]] = {
    ("v1", "ConfigMap"): (client.CoreV1Api, "namespaced_config_map"),
    ("v1", "ServiceAccount"): (client.CoreV1Api, "namespaced_service_account"),
    ("v1", "Service"): (client.CoreV1Api, "namespaced_service"),
    ("rbac.authorization.k8s.io/v1", "Role"): (client.RbacAuthorizationV1Api, "namespaced_role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        client.RbacAuthorizationV1Api,
        "namespaced_role_binding",
    ),
    ("batch/v1", "Job"): (client.BatchV1Api, "namespaced_job"),
}
"""The client class and method suffix (after create_, read_, delete_) of each child kind."""
_CUSTOM_VERBS: Final = {
    "create": "create_namespaced_custom_object",
    "read": "get_namespaced_custom_object",
    "delete": "delete_namespaced_custom_object",
}


class KubeError(Exception):
    """An API call that failed for a reason a person can act on; the message says which."""


def _in_cluster() -> bool:
    return os.path.exists(SERVICE_ACCOUNT_TOKEN) and "KUBERNETES_SERVICE_HOST" in os.environ


def _kubeconfig_file() -> str | None:
    # The client reads KUBECONFIG when it is imported; read it when connecting.
    return os.environ.get("KUBECONFIG") or None


def connect() -> client.ApiClient:
    """A client with the pod's service account in a cluster, else the current kubeconfig."""
    try:
        if _in_cluster():
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(config_file=_kubeconfig_file())  # type: ignore[no-untyped-call]
    except config.ConfigException as error:
        raise KubeError(f"cannot find a cluster to talk to: {_config_problem(error)}") from None
    return client.ApiClient()


def _config_problem(error: config.ConfigException) -> str:
    named = _kubeconfig_file()
    paths = named.split(os.pathsep) if named else [os.path.expanduser("~/.kube/config")]
    if not any(os.path.exists(path) for path in paths):
        source = "KUBECONFIG" if named else "the default kubeconfig"
        return f"{source} {os.pathsep.join(paths)} does not exist (and this is not a pod)"
    return str(error)


def current_namespace() -> str:
    """The namespace kubectl would use: a pod's own, else the kubeconfig context's, else default."""
    if _in_cluster():
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text(encoding="utf-8").strip()
    try:
        _, context = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=_kubeconfig_file()
        )
    except config.ConfigException:
        return DEFAULT_NAMESPACE
    namespace = (context or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else DEFAULT_NAMESPACE


@contextlib.contextmanager
def explained(action: str) -> Iterator[None]:
    """Re-raise the API's refusals and network failures during `action` as a KubeError."""
    try:
        yield
    except ApiException as error:
        raise KubeError(f"cannot {action}: {_refusal(error)}") from None
    except urllib3.exceptions.HTTPError as error:
        unreachable = f"the cluster is unreachable ({_network(error)})"
        raise KubeError(f"cannot {action}: {unreachable}") from None


def _refusal(error: ApiException) -> str:
    said = _server_message(error)
    if error.status == UNAUTHORIZED:
        return "the cluster does not accept your credentials (401); log in again"
    if error.status == FORBIDDEN:
        return f"not allowed (403): {said}"
    return f"{error.status} {error.reason}: {said}".rstrip(": ")


def _server_message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return ""
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def _network(error: urllib3.exceptions.HTTPError) -> str:
    cause = error.reason if isinstance(error, urllib3.exceptions.MaxRetryError) else error
    # "HTTPSConnection(host=..., port=...): Failed to establish ...": the host is known already.
    return str(cause).split("): ", 1)[-1]


class Cluster:
    """The calls kubetune makes, each one request."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.visibility_version = KUEUE_VISIBILITY_VERSIONS[0]
        """The version of Kueue's visibility API that answered last: asked first."""

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Create `obj` in its namespace; False when one of its name exists already."""
        try:
            self._method(obj, "create")(dict(obj))
        except ApiException as error:
            if error.status == CONFLICT:
                return False
            _count_failure(f"create {obj['kind']}", error)
            raise
        return True

    def read(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The object of `obj`'s kind, namespace and name as it is now; None when none is."""
        try:
            found = self._method(obj, "read")()
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None
            _count_failure(f"read {obj['kind']}", error)
            raise
        plain = self.api.sanitize_for_serialization(found)  # type: ignore[no-untyped-call]
        return dict(plain)

    def delete_job(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a batch Job and, before it disappears, its pods (foreground deletion), so
        the next worker group of the same name never meets the old one."""
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"namespace": namespace, "name": name},
        }
        self.delete(job, uid)

    def delete(self, obj: Mapping[str, Any], uid: str | None = None) -> None:
        """Delete one child by kind and name (after ttlSecondsAfterFinished; a pruned trial);
        with `uid`, only while the object of that name is still that one."""
        options = client.V1DeleteOptions(
            preconditions=None if uid is None else client.V1Preconditions(uid=uid),
            propagation_policy="Foreground" if obj["kind"] == "Job" else None,
        )
        self._ignore_missing(
            f"delete {obj['kind']}", lambda: self._method(obj, "delete")(body=options)
        )

    def _method(self, obj: Mapping[str, Any], verb: str) -> Callable[..., Any]:
        """The client method that does `verb` (create, read, delete) to `obj`'s kind, with
        the arguments that name the object bound (create takes the body after them)."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"].get("name")
        named = () if verb == "create" else (name,)
        if obj["apiVersion"] == v1alpha1.API_VERSION:
            plural = _CUSTOM_PLURALS[obj["kind"]]
            custom = client.CustomObjectsApi(self.api)
            where = (v1alpha1.GROUP, v1alpha1.VERSION, namespace, plural)
            return functools.partial(getattr(custom, _CUSTOM_VERBS[verb]), *where, *named)
        api_class, suffix = _KIND_METHODS[(obj["apiVersion"], obj["kind"])]
        return functools.partial(
            getattr(api_class(self.api), f"{verb}_{suffix}"), *named, namespace
        )

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

    def post_event(
        self, about: Mapping[str, Any], kind: str, reason: str, message: str, moment: str
    ) -> None:
        """An Event about a FineTuneJob, as kopf posts them. Best effort, as with kopf: a
        refused Event is counted and logged by the metrics, the work goes on."""
        metadata = about["metadata"]
        namespace = metadata["namespace"]
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{metadata['name']}.",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": v1alpha1.API_VERSION,
                "kind": v1alpha1.KIND,
                "name": metadata["name"],
                "namespace": namespace,
                "uid": metadata.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": moment,
            "lastTimestamp": moment,
            "count": 1,
        }
        try:
            client.CoreV1Api(self.api).create_namespaced_event(namespace, event)  # type: ignore[arg-type]
        except ApiException as error:
            _count_failure("create Event", error)

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

    def list_job_names(self, namespace: str) -> list[str]:
        """The names of the FineTuneJobs in a namespace, sorted."""
        found = client.CustomObjectsApi(self.api).list_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL
        )
        items = cast(dict[str, Any], found).get("items") or []
        return sorted(str(item["metadata"]["name"]) for item in items)

    def list_events(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        """The Events about one object, as plain data in the API's field names."""
        try:
            events = self._events(namespace, f"involvedObject.uid={uid}")
        except ApiException as error:
            if error.status != BAD_REQUEST:
                raise
            # A server without field selectors (the test emulator): filter here instead.
            events = [
                event
                for event in self._events(namespace)
                if (event.get("involvedObject") or {}).get("uid") == uid
            ]
        return events

    def _events(self, namespace: str, field_selector: str | None = None) -> list[dict[str, Any]]:
        found = client.CoreV1Api(self.api).list_namespaced_event(
            namespace, field_selector=field_selector
        )
        # As the API wrote them (camelCase, RFC 3339 times), like the FineTuneJob itself.
        plain = self.api.sanitize_for_serialization(found)  # type: ignore[no-untyped-call]
        return [item for item in plain.get("items") or [] if isinstance(item, dict)]

    def pending_workloads(
        self, namespace: str, local_queue: str, *, offset: int = 0, limit: int = 1000
    ) -> dict[str, Any] | None:
        """Kueue's pending Workloads of a LocalQueue in the order Kueue admits them, `limit`
        of them from `offset` on (a PendingWorkloadsSummary, kueue.py); None when no version
        of Kueue's visibility API answers for it: not served (404: no Kueue, its
        VisibilityOnDemand feature off, or no such LocalQueue) or not allowed (403)."""
        others = [v for v in KUEUE_VISIBILITY_VERSIONS if v != self.visibility_version]
        for version in [self.visibility_version, *others]:
            path = (
                f"/apis/{KUEUE_VISIBILITY_GROUP}/{version}/namespaces/{quote(namespace, safe='')}"
                f"/localqueues/{quote(local_queue, safe='')}/pendingworkloads"
            )
            try:
                found = self._get_path(path, [("offset", offset), ("limit", limit)])
            except ApiException as error:
                if error.status in (NOT_FOUND, FORBIDDEN):
                    continue
                _count_failure("get localqueues/pendingworkloads", error)
                raise
            self.visibility_version = version
            return found
        return None

    def _get_path(self, path: str, query: list[tuple[str, int]]) -> dict[str, Any]:
        """GET an API path the generated client has no method for (an aggregated API's
        subresource), the way its generated methods send a request."""
        request = self.api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        found = self.api._call_with_legacy_options(
            request, {"200": "object"}, None, True, None, True
        )
        return cast(dict[str, Any], found)

    @staticmethod
    def _ignore_missing(operation: str, call: Callable[[], object]) -> None:
        try:
            call()
        except ApiException as error:
            if error.status != NOT_FOUND:
                _count_failure(operation, error)
                raise


def retry_delay(error: BaseException) -> float | None:
    """Seconds to wait before trying a failed call again when the failure is the API
    server's passing trouble (429 with its Retry-After, or a 5xx), else None."""
    if not isinstance(error, ApiException) or error.status is None:
        return None
    if error.status == TOO_MANY_REQUESTS:
        header = (error.headers or {}).get("Retry-After")
        with contextlib.suppress(ValueError):
            return max(float(str(header)), TRANSIENT_RETRY_S)
        return TRANSIENT_RETRY_S
    return TRANSIENT_RETRY_S if error.status >= SERVER_ERROR else None


def _count_failure(operation: str, error: ApiException) -> None:
    metrics.API_ERRORS.labels(operation, str(error.status)).inc()
