"""The Kubernetes API that integration tests, e2e tests and benchmarks run the operator against.

kmock's `KubernetesEmulator` (by kopf's author) keeps objects in memory and serves discovery,
list, watch, get, create, patch and delete. `KubetuneEmulator` fills the gaps of kmock 0.8
that a real kopf operator trips over, and `EmulatorServer` serves it on a loopback TCP port
from a background thread, so separate processes reach it: the operator (`kopf run`), the
`kubernetes` client, and trainer processes that PATCH a FineTuneJob's status.

What this module adds to kmock 0.8, because kopf or the operator needs it, or because an
operator could otherwise get away with what a real API server refuses:

- metadata on create: `uid`, `creationTimestamp`, `generation`, the namespace from the URL,
  `name` from `generateName` (kopf's Events have no name), `kind`/`apiVersion` when absent;
- one cluster-wide, increasing `resourceVersion`, assigned under the storage lock, so
  kopf's consistency wait after its own patches works; the list's `resourceVersion` is the
  current one;
- watches served from an event log: a watch without a version gets every object as ADDED,
  one resumed from a version gets exactly the events since (MODIFIED and DELETED
  included), one from a version older than the log keeps (`log_capacity` events, half
  dropped when full, as etcd compacts) an ERROR event with 410 Gone, as the API server
  sends it; BOOKMARK events every `bookmark_s` seconds when the client allows them; a
  watch honours `timeoutSeconds` and filters by `labelSelector` like list does;
- garbage collection of the objects an owner's deletion leaves (see below for how it
  differs);
- the status subresource: a PATCH of `.../status` changes only `status`, a PATCH of the
  object leaves `status` alone (for resources that declare the subresource); `generation`
  grows when anything but `metadata` and `status` is patched;
- optimistic concurrency: a merge patch, a JSON patch or a PUT whose result names another
  `metadata.resourceVersion` than the stored one answers 409 Conflict; a failed JSON-patch
  `test` answers 422; merge patches follow RFC 7386 (null deletes, lists and scalars
  replace); PUT (replace) is served, keeping uid, creationTimestamp and generation;
- admission of custom resources (tests/kube/admission.py, the code the CRD unit tests use):
  on create, patch and PUT, of the object and of its status, the CRD version's structural
  schema (types, required, enum, pattern, minimum/maximum, lengths, item and property
  counts; `format` is not checked) and its `x-kubernetes-validations` CEL rules, evaluated
  on the defaulted object, transition rules (`oldSelf`) on updates only, with ratcheting
  (an unchanged value is not checked again, as since Kubernetes 1.30); a refusal is 422
  Invalid worded as the API server words it (`FineTuneJob.kubetune.dev "x" is invalid:
  spec.resources.workers: Invalid value: 0: ...`); nulls of non-nullable fields are pruned
  before storing, as the API server does; `admission = False` turns it off (a CRD applied
  without its schema) so tests can reach the operator's own validation;
- faults on demand (`EmulatorServer.inject(Faults(...))`, tests/kube/faults.py), seeded
  and counted: a share of requests answered 500 or 429 with Retry-After, which store
  nothing; delayed answers; watches cut before their timeout; resumed watches answered
  410 Gone. The tests' own client is spared unless asked;
- list responses carry `kind: <Kind>List` and `apiVersion`; `/api/v1` discovery says
  `groupVersion: v1` (kmock 0.8 says `/v1`);
- discovery for every resource kubetune touches, and the CRDs of `crds/` both as a resource
  and as stored CustomResourceDefinition objects;
- linear cost: kmock 0.8 matches each request against every earlier one to pick its
  reaction (quadratic over a benchmark), so resource requests are answered straight from
  the store while no test has added reactions of its own.

kmock's DSL still injects faults of a test's choosing, on the loop: for example
`server.call(lambda emulator: emulator["get /api/v1/namespaces/ns/pods/p"][:1] << 503)`.
Unlike `inject`, a write that such a reaction answers with an error is still applied to
the store (the reaction only replaces the answer): a lost answer, not a failed write.

What the emulator does NOT prove (a real cluster or kind/k3s is the only evidence there):

- garbage collection is immediate and always background: deleting an owner deletes at once
  every object that names it in its ownerReferences (a real collector does it shortly after,
  waits for every owner of an object with several, and honours foreground deletion);
- admission is partial: defaults are applied only to validate (the stored object is not
  defaulted), unknown fields are not pruned, `format` and `x-kubernetes-list-type` are not
  checked, CEL cost limits are not enforced, ratcheting covers CEL rules but not the
  schema; built-in kinds are not validated at all, and no admission webhooks run;
- no controllers: Jobs create no pods, pods never run, nothing is scheduled, Services get
  no endpoints; a test kubelet or the test itself writes pod and Job status;
- strategic merge patches are applied as merge patches (lists are replaced, never merged by
  key); server-side apply (`application/apply-patch+yaml`) and delete-collection are not
  served; DELETE ignores `propagationPolicy` and preconditions;
- there is no RBAC (any token works), no quota, no field selectors (they answer 400 rather
  than being ignored), no API priority and fairness (429s come only from `inject`);
- a watch with a label selector sees only events whose object matches now; a real API
  server also reports an object that stops matching as DELETED; an injected cut ends the
  stream cleanly (as a server timeout does), never with a reset connection;
- `/api/v1/namespaces` (and any cluster-scoped core resource) cannot be listed or fetched:
  kmock 0.8 parses `namespaces` as the namespace prefix and answers 500, so run kopf
  cluster-wide (`-A`/`clusterwide=True`), never with namespace patterns;
- single process, in memory, no TLS: speed measured against it is the operator's plus this
  emulator's, not an API server's.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import copy
import datetime
import functools
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp.web
import attrs
import jsonpatch  # type: ignore[import-untyped]
import kmock
import yaml
from kmock._internal import apps, enums, k8s, rendering

from tests.kube.admission import CustomResourceSchema
from tests.kube.faults import GONE, TOO_MANY_REQUESTS, FaultPlan, Faults

T = TypeVar("T")

REPO: Final = Path(__file__).resolve().parents[2]
ALL_VERBS: Final = frozenset(
    {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
)
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0
SHUTDOWN_TIMEOUT_S: Final = 0.2
MERGE_PATCH: Final = "application/merge-patch+json"
WRITE_ACTIONS: Final = frozenset({enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE})
EVENT_LOG_CAPACITY: Final = 100_000
"""Watch events kept for resumed watches; an older resourceVersion is answered 410 Gone."""
BOOKMARK_S: Final = 10.0
"""How often a watch that allows bookmarks gets one (a real API server: about a minute)."""
_FAULT_REASONS: Final = {500: "InternalError", 429: "TooManyRequests", 503: "ServiceUnavailable"}


@dataclass(frozen=True)
class ResourceType:
    """One served resource: what discovery reports and how URLs and kinds map to it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: frozenset[str] = frozenset()
    shortnames: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()

    @property
    def api_version(self) -> str:
        """The `apiVersion` of the objects: `v1` for the core group, else group/version."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """The kmock spelling of the resource: group/version/plural (`v1/pods` for core)."""
        return f"{self.api_version}/{self.plural}"

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The API path of the collection, or of one object (and its subresource)."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [root]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        parts.extend(part for part in (name, subresource) if part)
        return "/".join(parts)


def _core(plural: str, kind: str, *, namespaced: bool = True, status: bool = False) -> ResourceType:
    return ResourceType("", "v1", plural, kind, namespaced, frozenset({"status"} if status else ()))


BUILTIN_RESOURCES: Final = (
    _core("configmaps", "ConfigMap"),
    _core("secrets", "Secret"),
    _core("serviceaccounts", "ServiceAccount"),
    _core("services", "Service", status=True),
    _core("pods", "Pod", status=True),
    _core("persistentvolumeclaims", "PersistentVolumeClaim", status=True),
    _core("events", "Event"),
    _core("namespaces", "Namespace", namespaced=False, status=True),
    ResourceType("batch", "v1", "jobs", "Job", subresources=frozenset({"status"})),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceType("kopf.dev", "v1", "kopfpeerings", "KopfPeering"),
    ResourceType("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
    ),
)
"""The built-in kinds the operator, kopf (events, peering, CRD scanning) and tests use."""


def load_crds(folder: Path = REPO / "crds") -> list[dict[str, Any]]:
    """The CustomResourceDefinition documents of a folder (the generated `crds/`)."""
    return copy.deepcopy(_parsed_crds(folder))


@functools.cache
def _parsed_crds(folder: Path) -> list[dict[str, Any]]:
    # Parsed once per process: every test starts an emulator, and the CRD is large.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    documents: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        documents.extend(doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc)
    return documents


def crd_resources(crds: Iterable[Mapping[str, Any]]) -> list[ResourceType]:
    """One ResourceType per served version of each CRD."""
    return [
        ResourceType(
            group=crd["spec"]["group"],
            version=version["name"],
            plural=crd["spec"]["names"]["plural"],
            kind=crd["spec"]["names"]["kind"],
            namespaced=crd["spec"]["scope"] == "Namespaced",
            subresources=frozenset(version.get("subresources") or {}),
            shortnames=frozenset(crd["spec"]["names"].get("shortNames", ())),
            categories=frozenset(crd["spec"]["names"].get("categories", ())),
        )
        for crd in crds
        for version in crd["spec"]["versions"]
        if version.get("served", True)
    ]


@dataclass(frozen=True)
class RequestRecord:
    """One request the emulator served, reduced to what counting and debugging need."""

    verb: str
    """get, list, watch, create, patch, delete; or the HTTP method for anything else."""
    resource: str
    """The plural, with `/status` for the status subresource; the path for non-resources."""
    namespace: str | None
    name: str | None
    user_agent: str

    @property
    def label(self) -> str:
        """`verb resource`, e.g. `patch finetunejobs/status`."""
        return f"{self.verb} {self.resource}"


_VERBS: Final = {
    enums.action.FETCH: "get",
    enums.action.LIST: "list",
    enums.action.WATCH: "watch",
    enums.action.CREATE: "create",
    enums.action.UPDATE: "patch",
    enums.action.DELETE: "delete",
}


def _record(request: rendering.Request) -> RequestRecord:
    resource = request.resource
    if request.method == enums.method.PUT and _is_named(request):
        request = attrs.evolve(request, action=enums.action.UPDATE)
    if resource is None or not _is_resource_request(request):
        verb, what = request.method.value.lower(), request.url.path
    else:
        assert request.action is not None
        verb = "update" if request.method == enums.method.PUT else _VERBS[request.action]
        what = str(resource.plural) + (f"/{request.subresource}" if request.subresource else "")
    return RequestRecord(
        verb, what, request.namespace, request.name, _header(request, "User-Agent")
    )


def _header(request: rendering.Request, name: str) -> str:
    """A request header by its case-insensitive name (urllib sends `Content-type`)."""
    wanted = name.lower()
    return next((value for key, value in request.headers.items() if key.lower() == wanted), "")


class LabelSelector:
    """A parsed `labelSelector` query: equality-, inequality-, existence- and set-based."""

    _REQUIREMENT: Final = re.compile(
        r"\s*(?P<neg>!)?\s*(?P<key>[\w./-]+)\s*"
        r"(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)|\s(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?"
        r"\s*(?:,|$)"
    )

    def __init__(self, text: str) -> None:
        self._checks: list[Callable[[Mapping[str, str]], bool]] = []
        position = 0
        while position < len(text):
            match = self._REQUIREMENT.match(text, position)
            if match is None or match.end() == position:
                raise k8s.KubernetesError(400, "BadRequest", f"unparsable labelSelector {text!r}")
            self._checks.append(self._check(match))
            position = match.end()

    @staticmethod
    def _check(match: re.Match[str]) -> Callable[[Mapping[str, str]], bool]:
        key, op, value, setop = match["key"], match["op"], match["value"], match["setop"]
        if match["neg"]:
            return lambda labels: key not in labels
        if op in ("=", "=="):
            return lambda labels: labels.get(key) == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        if setop:
            values = {item.strip() for item in match["values"].split(",")}
            if setop == "in":
                return lambda labels: labels.get(key) in values
            return lambda labels: labels.get(key) not in values
        return lambda labels: key in labels

    def matches(self, body: Mapping[str, Any]) -> bool:
        """Whether the object's labels satisfy every requirement."""
        labels = body.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in self._checks)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str) -> k8s.KubernetesError:
    return k8s.KubernetesError(status=status, reason=reason, message=message)


class KubetuneEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the fixes listed in the module docstring."""

    def __init__(self, resources: Iterable[ResourceType], crds: Iterable[Mapping[str, Any]] = ()):
        super().__init__()
        self.types: dict[str, ResourceType] = {}
        self._revision = 0
        self._builtin_reactions = len(self._payloads)
        self.plan = FaultPlan()
        self.bookmark_s = BOOKMARK_S
        self.log_capacity = EVENT_LOG_CAPACITY
        self._log: list[tuple[int, kmock.resource, dict[str, Any]]] = []
        self._compacted = 0
        self._published = asyncio.Event()
        self.schemas: dict[str, CustomResourceSchema] = {}
        self.admission = True
        """Whether custom resources are checked against their CRD (off: as with a CRD
        installed without a schema, to reach the operator's own validation)."""
        for resource in resources:
            self.types[resource.key] = resource
            self.resources[resource.key] = kmock.ResourceInfo(
                kind=resource.kind,
                singular=resource.kind.lower(),
                namespaced=resource.namespaced,
                verbs=ALL_VERBS,
                shortnames=resource.shortnames,
                categories=resource.categories,
                subresources=resource.subresources,
            )
        crd_key = "apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd in crds:
            name = crd["metadata"]["name"]
            self.objects[crd_key, None, name] = self._stamped(copy.deepcopy(dict(crd)))
            self._add_schemas(crd)

    def _add_schemas(self, crd: Mapping[str, Any]) -> None:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for version in crd["spec"]["versions"]:
            schema = CustomResourceSchema.of(crd, version["name"])
            if schema is not None:
                self.schemas[f"{group}/{version['name']}/{plural}"] = schema

    def inject(self, faults: Faults) -> FaultPlan:
        """Fail requests from now on as `faults` says (`Faults()` stops); the plan counts
        what it injects."""
        self.plan = FaultPlan(faults)
        return self.plan

    @property
    def revision(self) -> int:
        """The latest resourceVersion handed out."""
        return self._revision

    def type_of(self, resource: kmock.resource) -> ResourceType:
        """The registered type of a parsed request resource (404 when not served)."""
        served = self.types.get(
            f"{resource.group}/{resource.version}/{resource.plural}".lstrip("/")
        )
        if served is None:
            raise k8s.KubernetesResourceNotFoundError()
        return served

    def request_log(self) -> list[RequestRecord]:
        """Every request served so far, oldest first (call on the emulator's loop)."""
        return [_record(request) for request in self._requests]

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _stamped(self, body: dict[str, Any]) -> dict[str, Any]:
        metadata = body.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", _now())
        metadata["generation"] = 1
        metadata["resourceVersion"] = self._next_revision()
        return body

    # Writes: the state changes here, under the lock, before the answer is rendered from
    # the stored object.
    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        fault = await self._fault(request)
        if fault is not None:
            return fault
        if request.method == enums.method.PUT and _is_named(request):
            request = attrs.evolve(request, action=enums.action.UPDATE)  # kmock serves no PUT
        released: tuple[kmock.resource, str | None, str] | None = None
        if request.resource is not None and request.action in WRITE_ACTIONS:
            async with self._lock:
                event, released = self._write(request)
                if event is not None:
                    self._publish(request.resource, event)
                    self._collect_garbage(event)
        try:
            if self.has_test_reactions or not _is_resource_request(request):
                return await apps.RawHandler._handle(self, request)
            return await self._respond(request)
        finally:
            if released is not None:
                await self._forget(released)

    async def _fault(self, request: rendering.Request) -> aiohttp.web.StreamResponse | None:
        """The injected error answer for this request, if any, after the injected delay.
        Nothing is stored: the request fails before it reaches the store."""
        if not _is_resource_request(request) or self.plan.spares(_header(request, "User-Agent")):
            return None
        chance = self.plan.draw(_signature(request))
        delay = self.plan.delay(chance)
        if delay:
            await asyncio.sleep(delay)
        code = self.plan.error(chance)
        if code is None:
            return None
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": code,
            "reason": _FAULT_REASONS.get(code, "InternalError"),
            "message": f"injected fault: {code} for {request.method.value} {request.url.path}",
        }
        headers = {}
        if code == TOO_MANY_REQUESTS:
            body["details"] = {"retryAfterSeconds": self.plan.faults.retry_after}
            headers["Retry-After"] = str(self.plan.faults.retry_after)
        return aiohttp.web.json_response(body, status=code, headers=headers)

    def _publish(self, resource: kmock.resource, event: dict[str, Any]) -> None:
        """Record a change for the watches (call under the lock), forgetting the oldest
        events beyond the log's capacity, as etcd compacts."""
        revision = int(event["object"]["metadata"]["resourceVersion"])
        self._log.append((revision, resource, event))
        if len(self._log) > self.log_capacity:
            dropped = len(self._log) - self.log_capacity // 2
            self._compacted = self._log[dropped - 1][0]
            del self._log[:dropped]
        self._published.set()
        self._published = asyncio.Event()

    @property
    def has_test_reactions(self) -> bool:
        """Whether a test added kmock reactions (e.g. `emulator["patch"] << 500`)."""
        return len(self._payloads) > self._builtin_reactions

    async def _respond(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Answer a resource request directly from the store.

        kmock 0.8 matches every request against every request served before (to find its
        reactions), which makes a benchmark's thousands of requests quadratic; this path
        skips that while no test reactions exist, and answers as the fallbacks would.
        """
        assert request.action is not None  # the caller sends only resource actions here
        if request.action == enums.action.WATCH:
            return await self._stream(request)
        readers = {
            enums.action.FETCH: self._serve_fetch,
            enums.action.LIST: self._serve_list,
            enums.action.CREATE: self._serve_create,
            enums.action.UPDATE: self._serve_update,
            enums.action.DELETE: self._serve_delete,
        }
        status = 201 if request.action == enums.action.CREATE else 200
        return aiohttp.web.json_response(await readers[request.action](request), status=status)

    async def _stream(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        events = self._serve_watch(request)
        await anext(events)  # validates the request before the headers go out
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        assert request._raw_request is not None  # always set for served requests
        await response.prepare(request._raw_request)
        with contextlib.suppress(ConnectionResetError):
            async for event in events:
                await response.write(json.dumps(event).encode() + b"\n")
        return response

    def _write(
        self, request: rendering.Request
    ) -> tuple[dict[str, Any] | None, tuple[kmock.resource, str | None, str] | None]:
        assert request.resource is not None
        served = self.type_of(request.resource)
        if request.action == enums.action.CREATE:
            return self._create(request, served), None
        key = (request.resource, request.namespace, str(request.name))
        if key not in self.objects or self.objects[key].deleted:
            raise k8s.KubernetesObjectNotFoundError()
        event: dict[str, Any] | None
        if request.action == enums.action.UPDATE:
            event = self._patch(request, served, self.objects[key])
        else:
            event = self._delete(self.objects[key])
        metadata = self.objects[key].last.raw.get("metadata", {})
        done = metadata.get("deletionTimestamp") and not metadata.get("finalizers")
        return event, key if done and not self.objects[key].deleted else None

    def _create(self, request: rendering.Request, served: ResourceType) -> dict[str, Any]:
        assert request.resource is not None
        body = request.data
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the body of a create must be a JSON object")
        metadata = body.setdefault("metadata", {})
        if not served.namespaced:
            metadata.pop("namespace", None)
        elif metadata.setdefault("namespace", request.namespace) != request.namespace:
            raise _error(400, "BadRequest", "the namespace of the body and the URL differ")
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        if not metadata.get("name"):
            raise _error(422, "Invalid", "metadata.name: Required value")
        body.setdefault("apiVersion", served.api_version)
        body.setdefault("kind", served.kind)
        body = self._admitted(served, body)
        key = (request.resource, request.namespace, metadata["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise _error(
                409, "AlreadyExists", f"{served.plural} {metadata['name']!r} already exists"
            )
        self._stamped(body)
        if key in self.objects:
            self.objects[key].create(body)
        else:
            self.objects[key] = body
        return {"type": "ADDED", "object": body}

    def _patch(
        self, request: rendering.Request, served: ResourceType, stored: kmock.Object
    ) -> dict[str, Any]:
        old = copy.deepcopy(stored.raw)
        if request.method == enums.method.PUT:
            new = _replaced(request, old)
        else:
            new = self._patched(request, old)
        wanted = new.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != old["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified; apply to the latest")
        with_status = "status" in served.subresources
        if request.subresource == "status":
            new = {**old, "status": new["status"]} if "status" in new else _without(old, "status")
        elif request.subresource:
            raise _error(404, "NotFound", f"the emulator does not serve {request.subresource!r}")
        elif with_status:
            new = {**new, "status": old["status"]} if "status" in old else _without(new, "status")
        new = self._admitted(served, new, old)
        if _without(new, "metadata", "status") != _without(old, "metadata", "status"):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self._next_revision()
        stored.history.append(new)
        return {"type": "MODIFIED", "object": new}

    @staticmethod
    def _patched(request: rendering.Request, old: dict[str, Any]) -> dict[str, Any]:
        kind = _header(request, "Content-Type").split(";")[0].strip() or MERGE_PATCH
        if kind == "application/json-patch+json":
            try:
                patched: dict[str, Any] = jsonpatch.apply_patch(old, request.data, in_place=False)
            except jsonpatch.JsonPatchTestFailed as failure:
                raise _error(422, "Invalid", f"the JSON patch test failed: {failure}") from None
            except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchException) as failure:
                raise _error(422, "Invalid", f"the JSON patch does not apply: {failure}") from None
            return patched
        if kind not in (MERGE_PATCH, "application/strategic-merge-patch+json"):
            raise _error(415, "UnsupportedMediaType", f"the emulator cannot apply {kind!r}")
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "a merge patch must be a JSON object")
        patched = merge_patch(old, request.data)
        return copy.deepcopy(patched)

    def _admitted(
        self, served: ResourceType, new: dict[str, Any], old: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The object to store, its non-nullable nulls pruned; refused, 422 Invalid as the
        API server words it, when the CRD's schema or CEL rules refuse it (`old` given for
        an update, for the transition rules)."""
        schema = self.schemas.get(served.key) if self.admission else None
        if schema is None:
            return new
        new = schema.pruned(new)
        problems = schema.problems(new, old)
        if not problems:
            return new
        name = new.get("metadata", {}).get("name", "")
        listed = problems[0] if len(problems) == 1 else f"[{', '.join(problems)}]"
        causes = [{"reason": "FieldValueInvalid", "message": problem} for problem in problems]
        raise k8s.KubernetesError(
            status=422,
            reason="Invalid",
            message=f'{served.kind}.{served.group} "{name}" is invalid: {listed}',
            details={"name": name, "group": served.group, "kind": served.kind, "causes": causes},
        )

    def _delete(self, stored: kmock.Object) -> dict[str, Any] | None:
        metadata = stored.raw.get("metadata", {})
        if metadata.get("deletionTimestamp"):
            return None
        if metadata.get("finalizers"):
            marked = merge_patch(stored.raw, {"metadata": {"deletionTimestamp": _now()}})
            marked["metadata"]["resourceVersion"] = self._next_revision()
            stored.history.append(marked)
            return {"type": "MODIFIED", "object": marked}
        last = merge_patch(stored.raw, {"metadata": {"resourceVersion": self._next_revision()}})
        stored.history.append(last)
        stored.delete()
        return {"type": "DELETED", "object": last}

    async def _forget(self, key: tuple[kmock.resource, str | None, str]) -> None:
        """Delete an object whose last finalizer went away (after the answer was rendered)."""
        async with self._lock:
            stored = self.objects[key]
            if stored.deleted:
                return
            last = merge_patch(stored.raw, {"metadata": {"resourceVersion": self._next_revision()}})
            stored.history.append(last)
            stored.delete()
            deleted = {"type": "DELETED", "object": last}
            self._publish(key[0], deleted)
            self._collect_garbage(deleted)

    def _collect_garbage(self, event: Mapping[str, Any]) -> None:
        """Background cascading deletion, done at once (call under the lock): the objects
        that name a deleted object in their ownerReferences go too, and theirs after them.
        A dependent with finalizers is only marked, as the API server does."""
        if event["type"] != "DELETED":
            return
        owners = [event["object"]["metadata"].get("uid")]
        while owners:
            uid = owners.pop()
            for key, stored in list(self.objects.items()):
                if stored.deleted or not _owned_by(stored.raw, uid):
                    continue
                dependent = self._delete(stored)
                if dependent is None:
                    continue
                self._publish(key[0], dependent)
                if dependent["type"] == "DELETED":
                    owners.append(dependent["object"]["metadata"].get("uid"))

    # Reads: answered from the stored objects by key or by a filtered scan.
    def _stored(self, request: rendering.Request, name: str, live: bool = False) -> dict[str, Any]:
        """The object the request names, or its last state when a write just deleted it."""
        assert request.resource is not None
        key = (request.resource, request.namespace, name)
        if key not in self.objects or (live and self.objects[key].deleted):
            raise k8s.KubernetesObjectNotFoundError()
        return self.objects[key].last.raw

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        async with self._lock:
            return self._stored(request, str(request.name), live=True)

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        async with self._lock:
            return self._stored(request, request.data["metadata"]["name"])

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        async with self._lock:
            return self._stored(request, str(request.name))

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        async with self._lock:
            return self._stored(request, str(request.name))

    def _selected(self, request: rendering.Request) -> Callable[[Mapping[str, Any]], bool]:
        if request.params.get("fieldSelector"):
            raise _error(400, "BadRequest", "the emulator does not serve fieldSelector")
        selector = LabelSelector(request.params.get("labelSelector", ""))

        def selected(body: Mapping[str, Any]) -> bool:
            metadata = body.get("metadata", {})
            return (
                (request.namespace is None or metadata.get("namespace") == request.namespace)
                and (request.name is None or metadata.get("name") == request.name)
                and selector.matches(body)
            )

        return selected

    def _current(self, request: rendering.Request, since: int = 0) -> list[dict[str, Any]]:
        selected = self._selected(request)
        return [
            stored.raw
            for (resource, _, _), stored in self.objects.items()
            if resource == request.resource and not stored.deleted
            if int(stored.raw["metadata"]["resourceVersion"]) > since and selected(stored.raw)
        ]

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        served = self.type_of(request.resource)
        async with self._lock:
            items = self._current(request)
            revision = str(self._revision)
        return {
            "apiVersion": served.api_version,
            "kind": f"{served.kind}List",
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """Events after the asked resourceVersion (all objects as ADDED without one), then
        live ones, until timeoutSeconds or an injected cut; 410 Gone (as an ERROR event, as
        the API server sends it) for a version older than the event log keeps."""
        assert request.resource is not None
        served = self.type_of(request.resource)
        selected = self._selected(request)
        since = request.params.get("resourceVersion", "")
        yield b""  # sends the headers: the stream is open even if nothing happens
        watch = self._watch_plan(request)
        async with self._lock:
            resumed = since.isdigit() and int(since) > 0
            if resumed and (int(since) < self._compacted or watch.gone):
                yield _expired(since)
                return
            replay = [] if resumed else self._current(request)
            last = int(since) if resumed else self._revision
        for body in replay:
            yield {"type": "ADDED", "object": body}
        async for event in self._follow(request.resource, served, last, selected, watch):
            yield event

    def _watch_plan(self, request: rendering.Request) -> _WatchPlan:
        loop = asyncio.get_running_loop()
        limits = [float(request.params.get("timeoutSeconds", 0)) or None]
        gone = False
        if not self.plan.spares(_header(request, "User-Agent")):
            chance = self.plan.draw("watch|" + _signature(request))
            limits.append(self.plan.cut(chance))
            gone = bool(request.params.get("resourceVersion")) and self.plan.gone(chance)
        seconds = [limit for limit in limits if limit is not None]
        bookmarks = request.params.get("allowWatchBookmarks") == "true"
        return _WatchPlan(
            deadline=loop.time() + min(seconds) if seconds else None,
            bookmark_s=self.bookmark_s if bookmarks else None,
            gone=gone,
        )

    async def _follow(
        self,
        resource: kmock.resource,
        served: ResourceType,
        last: int,
        selected: Callable[[Mapping[str, Any]], bool],
        watch: _WatchPlan,
    ) -> AsyncIterator[dict[str, Any]]:
        """The logged events of `resource` after revision `last`, as they come, and a
        bookmark (at the last revision looked at) when one is due. Ends at the deadline."""
        loop = asyncio.get_running_loop()
        bookmark_at = loop.time() + watch.bookmark_s if watch.bookmark_s else None
        while True:
            published = self._published
            if last < self._compacted:  # fell behind the log: the client must list again
                yield _expired(str(last))
                return
            start = bisect.bisect_right(self._log, last, key=lambda entry: entry[0])
            for revision, kind, event in self._log[start:]:
                last = revision
                if kind == resource and selected(event["object"]):
                    yield event
            if watch.deadline is not None and loop.time() >= watch.deadline:
                return
            if bookmark_at is not None and loop.time() >= bookmark_at:
                yield _bookmark(served, last)
                bookmark_at = loop.time() + (watch.bookmark_s or 0)
                continue
            wake = min((t for t in (watch.deadline, bookmark_at) if t is not None), default=None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake):
                    await published.wait()

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        assert isinstance(payload, dict)
        assert request.resource is not None
        if request.resource.group == "":
            payload["groupVersion"] = request.resource.version
        return payload


@dataclass(frozen=True)
class _WatchPlan:
    """When one watch stream ends, whether it gets bookmarks, whether it is answered Gone."""

    deadline: float | None
    bookmark_s: float | None
    gone: bool


def _expired(since: str) -> dict[str, Any]:
    status = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {since}",
        "reason": "Expired",
        "code": GONE,
    }
    return {"type": "ERROR", "object": status}


def _bookmark(served: ResourceType, revision: int) -> dict[str, Any]:
    body = {"apiVersion": served.api_version, "kind": served.kind}
    return {"type": "BOOKMARK", "object": {**body, "metadata": {"resourceVersion": str(revision)}}}


def _signature(request: rendering.Request) -> str:
    """What identifies a request for the fault plan: not its resourceVersion, which differs
    from run to run."""
    query = sorted((k, v) for k, v in request.params.items() if k != "resourceVersion")
    return f"{request.method.value} {request.url.path}?{query}"


def _is_named(request: rendering.Request) -> bool:
    return (
        request.resource is not None and request.resource.plural is not None and bool(request.name)
    )


def _is_resource_request(request: rendering.Request) -> bool:
    """A request about objects (not discovery, which kmock parses as a list of no plural)."""
    resource = request.resource
    return resource is not None and resource.plural is not None and request.action is not None


def _replaced(request: rendering.Request, old: dict[str, Any]) -> dict[str, Any]:
    """The object a PUT sends, with what the server owns kept from the stored one."""
    body = request.data
    if not isinstance(body, dict) or body.get("metadata", {}).get("name") != request.name:
        raise _error(400, "BadRequest", "a replacement must be an object of the URL's name")
    new = copy.deepcopy(body)
    kept = ("uid", "creationTimestamp", "namespace", "generation", "deletionTimestamp")
    new["metadata"].update({k: old["metadata"][k] for k in kept if k in old["metadata"]})
    new["metadata"].setdefault("resourceVersion", old["metadata"]["resourceVersion"])
    return new


def _owned_by(body: Mapping[str, Any], uid: str | None) -> bool:
    references = body.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in references)


def _without(body: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in keys}


def kubetune_resources() -> list[ResourceType]:
    """The built-in resources plus the CRDs of this checkout."""
    return [*BUILTIN_RESOURCES, *crd_resources(load_crds())]


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig whose current context is the emulator (any token is accepted)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tests", "user": {"token": "kubetune-tests"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "tests", "namespace": namespace},
            }
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class EmulatorServer:
    """The emulator on 127.0.0.1:<free port>, served by its own event loop in a thread.

    `call` runs a function on that loop, so reading `emulator.objects` or the request log
    never races with a request being served.
    """

    kubeconfig_path: Path
    resources: list[ResourceType] = field(default_factory=kubetune_resources)
    crds: list[dict[str, Any]] = field(default_factory=load_crds)
    url: str = field(init=False, default="")
    emulator: KubetuneEmulator = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _stop: asyncio.Event = field(init=False)
    _thread: threading.Thread | None = field(init=False, default=None)
    _started: threading.Event = field(init=False, default_factory=threading.Event)
    _failure: BaseException | None = field(init=False, default=None)

    def start(self) -> EmulatorServer:
        """Serve in a daemon thread; return once the port accepts connections."""
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S) or self._failure is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._failure!r}")
        write_kubeconfig(self.kubeconfig_path, self.url)
        return self

    def stop(self) -> None:
        """Close the server and its streams, and wait for the thread."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def call(self, function: Callable[[KubetuneEmulator], T], timeout: float = 30.0) -> T:
        """`function(emulator)` run on the emulator's loop, under its storage lock."""

        async def locked() -> T:
            async with self.emulator._lock:
                return function(self.emulator)

        return asyncio.run_coroutine_threadsafe(locked(), self._loop).result(timeout)

    def inject(self, faults: Faults) -> FaultPlan:
        """Fail requests from now on as `faults` says (`Faults()` stops); read the plan's
        `injected` counts through `call` while requests are still being served."""
        return self.call(lambda emulator: emulator.inject(faults))

    def objects(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Deep copies of the live objects (of one kind, or all), in creation order."""

        def live(emulator: KubetuneEmulator) -> list[dict[str, Any]]:
            return [
                copy.deepcopy(stored.raw)
                for _, stored in emulator.objects.items()
                if not stored.deleted and (kind is None or stored.raw.get("kind") == kind)
            ]

        return self.call(live)

    def requests(self) -> list[RequestRecord]:
        """Every request served so far, oldest first."""
        return self.call(KubetuneEmulator.request_log)

    def request_counts(
        self, since: int = 0, exclude_agent: str | None = None
    ) -> collections.Counter[str]:
        """Requests per `verb resource` from the `since`-th request on, optionally without
        those whose User-Agent starts with `exclude_agent` (e.g. the test's own client)."""
        return collections.Counter(
            record.label
            for record in self.requests()[since:]
            if exclude_agent is None or not record.user_agent.startswith(exclude_agent)
        )

    def watched(self) -> set[str]:
        """The resources (plurals) that some client has opened a watch on, e.g. to know
        that an operator is up before a benchmark starts its clock."""
        return {record.resource for record in self.requests() if record.verb == "watch"}

    def describe(self) -> str:
        """A one-line-per-object summary of the live objects, for failure messages."""
        lines = []
        for body in self.objects():
            metadata = body.get("metadata", {})
            where = "/".join(filter(None, (metadata.get("namespace"), metadata.get("name"))))
            status = body.get("status")
            lines.append(
                f"  {body.get('kind')} {where} rv={metadata.get('resourceVersion')}"
                + (f" status={status}" if status else "")
            )
        return "\n".join(lines) or "  (no objects)"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as failure:  # reported to start() instead of dying silently
            self._failure = failure
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.emulator = KubetuneEmulator(self.resources, self.crds)
        async with self.emulator:
            # Watch handlers wait on the bus until a write, so they never see a client leave;
            # at shutdown, cancel them instead of waiting aiohttp's default minute.
            server = aiohttp.web.Server(self.emulator)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
