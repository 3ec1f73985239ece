"""What a test does to the emulated cluster, over HTTP with the `kubernetes` client.

Tests create, read, patch and delete objects the way `kubectl` and the operator do, through
the real API and the kubeconfig, never by poking the emulator's memory: what passes here
passed through the same serialisation, URLs and status codes as on a cluster. The one
generic client works for every kind the emulator serves (the CRD included), so tests name
objects by kind and never spell URLs.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import kubernetes

from tests.kube.emulator import MERGE_PATCH, ResourceType, kubetune_resources

T = TypeVar("T")

TEST_USER_AGENT: Final = "kubetune-tests"
"""The User-Agent of the tests' own requests, so request counts can leave them out."""
WAIT_TIMEOUT_S: Final = 60.0
"""Generous on purpose: a wait that times out is a failure, never a speed measurement."""
POLL_INTERVAL_S: Final = 0.05


class KubeApiError(Exception):
    """An error answer of the API, with its status code and the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    *,
    timeout_s: float = WAIT_TIMEOUT_S,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy, and return that.

    Fails with an AssertionError that names `what` and shows `details()` (the objects the
    emulator holds, say) when `timeout_s` passes first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            shown = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {what}{shown}")
        time.sleep(POLL_INTERVAL_S)


class KubeClient:
    """Generic object access for tests, by kind, through the `kubernetes` client."""

    def __init__(
        self,
        kubeconfig_path: Path,
        *,
        resources: Iterable[ResourceType] | None = None,
        details: Callable[[], str] | None = None,
    ) -> None:
        self.api = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig_path)
        )
        self.api.user_agent = TEST_USER_AGENT
        self._kinds = {served.kind: served for served in resources or kubetune_resources()}
        self._details = details

    def close(self) -> None:
        """Release the connection pool."""
        self.api.close()

    def resource(self, kind: str) -> ResourceType:
        """The served resource of a kind."""
        try:
            return self._kinds[kind]
        except KeyError:
            raise KeyError(f"unknown kind {kind!r}; known: {sorted(self._kinds)}") from None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call; the decoded answer, or KubeApiError for an error status."""
        url = self.api.configuration.host + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {
            "Accept": "application/json",
            "Content-Type": content_type,
            "User-Agent": TEST_USER_AGENT,
        }
        response = self.api.call_api(method, url, header_params=headers, body=body)
        data = response.read()
        if response.status >= 400:
            raise KubeApiError(response.status, _message(data))
        return json.loads(data) if data else None

    def create(self, body: Mapping[str, Any], namespace: str = "default") -> dict[str, Any]:
        """Create an object from a manifest; returns it as stored (uid, resourceVersion...)."""
        served = self.resource(body["kind"])
        namespace = body.get("metadata", {}).get("namespace", namespace)
        created: dict[str, Any] = self.request("POST", served.path(namespace), dict(body))
        return created

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            found: dict[str, Any] = self.request("GET", self.resource(kind).path(namespace, name))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise
        return found

    def list_objects(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """The objects of a kind (in a namespace, or all), optionally by label selector."""
        query = {"labelSelector": label_selector} if label_selector else None
        answer = self.request("GET", self.resource(kind).path(namespace), query=query)
        items: list[dict[str, Any]] = answer["items"]
        return items

    def patch(
        self,
        kind: str,
        name: str,
        patch: Mapping[str, Any],
        namespace: str = "default",
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch of the object (or of its `status` subresource)."""
        path = self.resource(kind).path(namespace, name, subresource)
        patched: dict[str, Any] = self.request("PATCH", path, dict(patch), content_type=MERGE_PATCH)
        return patched

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        """Ask for deletion (finalizers may keep the object a while)."""
        self.request("DELETE", self.resource(kind).path(namespace, name))

    def events_for(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The Events whose involvedObject is this object (matched by uid), oldest first."""
        metadata = body["metadata"]
        return [
            event
            for event in self.list_objects("Event", metadata.get("namespace"))
            if event.get("involvedObject", {}).get("uid") == metadata["uid"]
        ]

    def wait_for_event(
        self,
        body: Mapping[str, Any],
        *,
        reason: str | None = None,
        message: str | None = None,
        count: int = 1,
    ) -> list[dict[str, Any]]:
        """Wait until `count` of this object's Events match `reason` and `message` (each
        when given); return the matching Events.

        kopf posts Events from a background task, after the change that caused them, so
        a test that has seen the change may not see its Event yet.
        """

        def matches(event: Mapping[str, Any]) -> bool:
            return (reason is None or event.get("reason") == reason) and (
                message is None or event.get("message") == message
            )

        def matching() -> list[dict[str, Any]] | None:
            found = [event for event in self.events_for(body) if matches(event)]
            return found if len(found) >= count else None

        wanted = " ".join(repr(part) for part in (reason, message) if part is not None)
        return self.wait_for(matching, f"{count} Event(s) {wanted}")

    def wait_for(self, probe: Callable[[], T | None], what: str, **kwargs: Any) -> T:
        """`wait_for` whose failure message shows this client's `details` (the objects)."""
        return wait_for(probe, what, details=self._details, **kwargs)

    def wait_for_object(
        self,
        kind: str,
        name: str,
        condition: Callable[[dict[str, Any]], object] = bool,
        namespace: str = "default",
    ) -> dict[str, Any]:
        """Wait until the object exists and `condition(object)` holds; return the object."""

        def satisfied() -> dict[str, Any] | None:
            found = self.get(kind, name, namespace)
            return found if found is not None and condition(found) else None

        return self.wait_for(satisfied, f"{kind} {namespace}/{name} to satisfy the condition")

    def wait_until_gone(self, kind: str, name: str, namespace: str = "default") -> None:
        """Wait until the object no longer exists."""
        self.wait_for(
            lambda: self.get(kind, name, namespace) is None, f"{kind} {namespace}/{name} to go"
        )


def _message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message", data[:200]))
    except ValueError:
        return data[:200].decode(errors="replace")
