"""Runtimes applied to jobs: pick one, merge its defaults, enforce its guardrails.

Pure functions on plain data and the API models, shared by the operator and `kubetune
validate --runtime`, so a job is judged the same way on a laptop and in the cluster.
Merge order: the runtime's defaults, then the job's own fields (a field the job sets
wins; a list the job sets replaces the default's whole list; a null counts as unset, as
the API server prunes it). The guardrails then judge the merged spec, so neither a
default nor a job value can get past them. One value is filled in by the guardrails: a
job without `runPolicy.activeDeadlineSeconds` gets the longest deadline the runtime
allows (maxActiveDeadlineSeconds, and for a GPU job what fits in maxGpuHours), and a GPU
job without `runPolicy.maxGpuHours` gets the runtime's maxGpuHours as its budget, which the
trainer enforces while it runs (it stops with a checkpoint when the budget is spent).

Creating a FineTuneJob is creating pods with the operator's rights, so no job goes
unjudged in the cluster: one that no runtime applies to is held to the cluster's default
policy (the chart's defaultPolicy, the same guardrails, nothing merged), a cluster runtime
serves only the namespaces it allows, and a system-* priority class needs a guardrail that
names it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pydantic import ValidationError

from kubetune_operator.api.problems import problems_from
from kubetune_operator.api.runtime import (
    DEFAULT_RUNTIME_LABEL,
    RUNTIME_MODELS,
    AnyRuntime,
    Guardrails,
    QueueSpec,
)
from kubetune_operator.api.v1alpha1 import (
    CLUSTER_RUNTIME_KIND,
    DEFAULT_STALL_TIMEOUT,
    RUNTIME_KIND,
    FineTuneJob,
    ResourcesSpec,
    RuntimeRef,
    Toleration,
    duration_seconds,
)

GUARDRAIL_VIOLATED = "GuardrailViolated"
"""Condition reason of a job refused by its runtime's guardrails."""
WAITING_FOR_CLEANUP = "WaitingForCleanup"
"""Condition reason of a job whose child names an earlier job of its name still holds, until
the garbage collector deletes them."""
RUNTIME_NOT_FOUND = "RuntimeNotFound"
"""Condition reason of a job whose runtime (named or default) cannot be found."""
RUNTIME_AMBIGUOUS = "RuntimeAmbiguous"
"""Condition reason of a job that names no runtime while two are labelled default."""
RUNTIME_NOT_ALLOWED = "RuntimeNotAllowed"
"""Condition reason of a job that names a ClusterFineTuneRuntime its namespace may not use."""
RUNTIME_INVALID = "RuntimeInvalid"
"""Condition reason of a job whose runtime is not a valid runtime object."""
INVALID_SPEC = "InvalidSpec"
"""Condition reason of a job whose spec is invalid once the runtime's defaults are merged in."""
WAITING_REASONS = frozenset(
    {RUNTIME_NOT_FOUND, RUNTIME_AMBIGUOUS, RUNTIME_INVALID, WAITING_FOR_CLEANUP}
)
"""The reasons of a refused job that is validated again (on the clock, on a runtime's
change): it may start later without being re-created."""

DEFAULT_POLICY_ENV = "KUBETUNE_DEFAULT_POLICY"
"""The operator's environment variable that holds the chart's defaultPolicy as JSON."""

_DEFAULT_WORKERS: int = ResourcesSpec.model_fields["workers"].default
_DEFAULT_GPUS_PER_WORKER: int = ResourcesSpec.model_fields["gpus_per_worker"].default


class RuntimeSelectionError(Exception):
    """The job's runtime cannot be determined: a missing runtimeRef target, or two defaults."""


class RuntimeNotAllowedError(RuntimeSelectionError):
    """The job's runtimeRef names a ClusterFineTuneRuntime that its namespace may not use."""


@dataclass(frozen=True)
class Violation:
    """One guardrail a spec breaks: where, what it holds, and the limit it exceeds."""

    field: str
    """Manifest path of the offending field, e.g. spec.resources.workers."""
    value: Any
    """What the (effective) spec holds there."""
    limit: Any
    """The guardrail's setting."""
    text: str
    """What is wrong, without the field and the runtime."""
    runtime: str
    """The runtime's kind and name, e.g. ClusterFineTuneRuntime a100."""

    @property
    def message(self) -> str:
        """The full line for a condition, an Event or a terminal."""
        return f"{self.field}: {self.text} ({self.runtime})"

    def __str__(self) -> str:
        return self.message


# --- merging ---------------------------------------------------------------------------


def merged(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """`own` deep-merged over `defaults`: mappings merge, anything else (lists too) replaces."""
    result = copy.deepcopy(dict(defaults))
    for key, value in own.items():
        if value is None:
            continue
        below = result.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            result[key] = merged(below, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def effective_spec(
    job_manifest: Mapping[str, Any], runtime: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The spec the job runs with: runtime defaults < the job's fields, plus a deadline
    within the guardrails."""
    own: Mapping[str, Any] = job_manifest.get("spec") or {}
    if runtime is None:
        return merged({}, own)
    runtime_spec: Mapping[str, Any] = runtime.get("spec") or {}
    spec = merged(runtime_spec.get("defaults") or {}, own)
    _fill_limits(spec, runtime_spec.get("guardrails") or {})
    return spec


def effective_manifest(
    job_manifest: Mapping[str, Any], runtime: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The job manifest with its spec replaced by the effective spec (what gets validated)."""
    return {**copy.deepcopy(dict(job_manifest)), "spec": effective_spec(job_manifest, runtime)}


def _fill_limits(spec: dict[str, Any], guardrails: Mapping[str, Any]) -> None:
    """The longest deadline the guardrails allow, for a GPU job the runtime's maxGpuHours as
    its own budget (the trainer stops at it with a checkpoint), and a stall timeout within
    maxStallTimeout, where the job sets none."""
    run_policy = spec.get("runPolicy") or {}
    if not isinstance(run_policy, dict):
        return
    filled = dict(run_policy)
    gpus = _gpus(spec.get("resources") or {})
    gpu_hours = guardrails.get("maxGpuHours")
    if filled.get("activeDeadlineSeconds") is None:
        candidates = [guardrails.get("maxActiveDeadlineSeconds")]
        if gpus and isinstance(gpu_hours, int | float):
            candidates.append(math.floor(gpu_hours * 3600 / gpus))
        deadlines = [c for c in candidates if isinstance(c, int) and c >= 1]
        if deadlines:
            filled["activeDeadlineSeconds"] = min(deadlines)
    if gpus and isinstance(gpu_hours, int | float) and filled.get("maxGpuHours") is None:
        filled["maxGpuHours"] = gpu_hours
    longest = guardrails.get("maxStallTimeout")
    if isinstance(longest, str) and filled.get("stallTimeout") is None:
        filled["stallTimeout"] = min(longest, DEFAULT_STALL_TIMEOUT, key=duration_seconds)
    if filled != run_policy:
        spec["runPolicy"] = filled


def _gpus(resources: Mapping[str, Any]) -> int:
    workers = resources.get("workers", _DEFAULT_WORKERS)
    per_worker = resources.get("gpusPerWorker", _DEFAULT_GPUS_PER_WORKER)
    return workers * per_worker if isinstance(workers, int) and isinstance(per_worker, int) else 0


def spec_hash(effective: Mapping[str, Any]) -> str:
    """sha256 of the spec's canonical JSON (sorted keys, no spaces): same spec, same hash."""
    canonical = json.dumps(effective, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def job_gpus(spec: Mapping[str, Any]) -> int:
    """GPUs a (camelCase) spec requests in all: workers times gpusPerWorker, with the defaults."""
    return _gpus(spec.get("resources") or {})


# --- resolving: what the operator does at validation ----------------------------------


@dataclass(frozen=True)
class Resolved:
    """A job the runtime accepts, with what it runs with."""

    job: FineTuneJob
    """The job with its effective spec."""
    runtime: AnyRuntime | None
    """The runtime that applied; None when none does."""
    record: dict[str, Any]
    """Status fields that record it: runtime, effectiveSpecHash, effectiveSpec."""


@dataclass(frozen=True)
class Refused:
    """A job that cannot run with its runtime (yet), and why."""

    reason: str
    """GuardrailViolated, InvalidSpec, RuntimeNotAllowed, RuntimeNotFound, RuntimeAmbiguous or
    RuntimeInvalid."""
    messages: list[str]
    """One line per problem, each naming the field."""

    @property
    def waits(self) -> bool:
        """Whether the job can start later as it is: a runtime created or edited may make it
        valid (it names a missing, ambiguous or invalid runtime), or an earlier job's
        children may go; any other refused job must be re-created."""
        return self.reason in WAITING_REASONS


def resolve(
    job: FineTuneJob,
    document: Mapping[str, Any],
    namespace_runtimes: Sequence[Mapping[str, Any]],
    cluster_runtimes: Sequence[Mapping[str, Any]],
    default_policy: Guardrails | None = None,
) -> Resolved | Refused:
    """Pick the job's runtime, merge its defaults under the job's fields, validate the result
    as a FineTuneJob and check the guardrails: what `kubetune validate --runtime` does, for
    the operator. `document` is the job as applied (no status). A job no runtime applies to
    keeps its own spec and is judged by `default_policy`, the cluster's, where one is given."""
    try:
        chosen = pick_runtime(job, namespace_runtimes, cluster_runtimes)
    except RuntimeNotAllowedError as error:
        return Refused(RUNTIME_NOT_ALLOWED, [str(error)])
    except RuntimeSelectionError as error:
        reason = RUNTIME_NOT_FOUND if job.spec.runtime_ref is not None else RUNTIME_AMBIGUOUS
        return Refused(reason, [str(error)])
    if chosen is None:
        return _resolved_by_policy(document, default_policy)
    runtime = _runtime_model(chosen)
    if isinstance(runtime, Refused):
        return runtime
    return _resolved_with(document, chosen, runtime)


def recheck(job: FineTuneJob, document: Mapping[str, Any]) -> FineTuneJob | Refused:
    """A recorded effective spec checked again against the guardrails of the runtime it
    was recorded with, before the operator builds workers from it."""
    runtime = _runtime_model(document)
    if isinstance(runtime, Refused):
        return runtime
    return _rechecked(job, check_guardrails(job, runtime))


def recheck_policy(job: FineTuneJob, policy: Guardrails) -> FineTuneJob | Refused:
    """A recorded effective spec of a job no runtime applies to, checked again against the
    cluster's default policy before the operator builds workers from it."""
    return _rechecked(job, check_default_policy(job, policy))


def _rechecked(job: FineTuneJob, violations: list[Violation]) -> FineTuneJob | Refused:
    if violations:
        messages = [f"status.effectiveSpec: {v.message}" for v in violations]
        return Refused(GUARDRAIL_VIOLATED, messages)
    return job


def _runtime_model(document: Mapping[str, Any]) -> AnyRuntime | Refused:
    kind = str(document.get("kind", ""))
    shown = f"{kind} {_name(document)}"
    model = RUNTIME_MODELS.get(kind)
    if model is None:
        return Refused(RUNTIME_INVALID, [f"spec.runtimeRef: {shown} is not a runtime"])
    try:
        return model.model_validate(dict(document), by_alias=True, by_name=False)
    except ValidationError as error:
        problems = "; ".join(str(p) for p in problems_from(error, model))
        return Refused(RUNTIME_INVALID, [f"spec.runtimeRef: {shown} is invalid: {problems}"])


def _resolved_with(
    document: Mapping[str, Any], chosen: Mapping[str, Any], runtime: AnyRuntime
) -> Resolved | Refused:
    manifest = effective_manifest(document, chosen)
    effective = _effective_job(manifest, f" (with {runtime.display_name}'s defaults)")
    if isinstance(effective, Refused):
        return effective
    violations = check_guardrails(effective, runtime)
    if violations:
        messages = [v.message for v in violations]
        if runtime_problems(runtime):
            messages.append(
                f"{runtime.display_name}'s own defaults break its guardrails "
                "(its Validated condition says which): tell its owners"
            )
        return Refused(GUARDRAIL_VIOLATED, messages)
    return Resolved(effective, runtime, _record(effective, runtime))


def _resolved_by_policy(
    document: Mapping[str, Any], policy: Guardrails | None
) -> Resolved | Refused:
    """A job no runtime applies to: its own spec, with the deadline and GPU budget the policy
    allows filled in as a runtime's guardrails would, judged by the cluster's default policy."""
    limits = None if policy is None else {"spec": {"guardrails": policy.model_dump(mode="json")}}
    effective = _effective_job(effective_manifest(document, limits), "")
    if isinstance(effective, Refused):
        return effective
    violations = [] if policy is None else check_default_policy(effective, policy)
    if violations:
        return Refused(GUARDRAIL_VIOLATED, [v.message for v in violations])
    return Resolved(effective, None, _record(effective, None))


def _effective_job(manifest: Mapping[str, Any], with_defaults: str) -> FineTuneJob | Refused:
    """The effective manifest as a FineTuneJob; InvalidSpec, each problem ending with
    `with_defaults`, when the merge made it invalid."""
    try:
        return FineTuneJob.model_validate(manifest, by_alias=True, by_name=False)
    except ValidationError as error:
        problems = problems_from(error, FineTuneJob)
        return Refused(INVALID_SPEC, [f"{p}{with_defaults}" for p in problems])


def default_policy_from(env: Mapping[str, str]) -> Guardrails:
    """The cluster's default policy, which the chart passes as JSON in DEFAULT_POLICY_ENV;
    unset or empty: no limits but the one every set of guardrails keeps (system-* priority
    classes). A policy that does not parse stops the operator with the reason, rather than
    let it run without one."""
    text = env.get(DEFAULT_POLICY_ENV, "").strip()
    if not text:
        return Guardrails()
    try:
        return Guardrails.model_validate_json(text, by_alias=True, by_name=False)
    except ValidationError as error:
        problems = "; ".join(str(p) for p in problems_from(error, Guardrails))
        raise ValueError(
            f"{DEFAULT_POLICY_ENV} ({DEFAULT_POLICY_SOURCE}) is invalid: {problems}"
        ) from None


def _record(job: FineTuneJob, runtime: AnyRuntime | None) -> dict[str, Any]:
    spec = job.spec.model_dump(mode="json", exclude_none=True)
    record: dict[str, Any] = {"effectiveSpecHash": spec_hash(spec), "effectiveSpec": spec}
    if runtime is not None:
        applied: dict[str, Any] = {
            "kind": runtime.kind,
            "name": runtime.metadata.name,
            "generation": int(getattr(runtime.metadata, "generation", 0) or 0),
        }
        if runtime.spec.queue.kueue_local_queue is not None:
            applied["kueueLocalQueue"] = runtime.spec.queue.kueue_local_queue
        record["runtime"] = applied
    return record


# --- choosing --------------------------------------------------------------------------


def pick_runtime(
    job: FineTuneJob,
    namespace_runtimes: Sequence[Mapping[str, Any]],
    cluster_runtimes: Sequence[Mapping[str, Any]],
) -> Mapping[str, Any] | None:
    """The job's runtime: its runtimeRef, else the namespace's default, else the cluster's
    default among those that serve the job's namespace.

    `namespace_runtimes` are the FineTuneRuntimes of the job's namespace. Raises
    RuntimeSelectionError for a runtimeRef to a missing runtime and for two defaults, and
    RuntimeNotAllowedError for a runtimeRef to a runtime the job's namespace may not use.
    """
    ref = job.spec.runtime_ref
    if ref is not None:
        return _referenced(ref, namespace_runtimes, cluster_runtimes, job)
    for kind, runtimes in (
        (RUNTIME_KIND, namespace_runtimes),
        (CLUSTER_RUNTIME_KIND, cluster_runtimes),
    ):
        defaults = [
            r
            for r in runtimes
            if _labels(r).get(DEFAULT_RUNTIME_LABEL) == "true" and serves(r, job.metadata.namespace)
        ]
        if len(defaults) > 1:
            names = ", ".join(sorted(_name(r) for r in defaults))
            raise RuntimeSelectionError(
                f"{len(defaults)} {kind}s are labelled {DEFAULT_RUNTIME_LABEL}=true ({names}); "
                "keep the label on one, or set spec.runtimeRef"
            )
        if defaults:
            return defaults[0]
    return None


def _referenced(
    ref: RuntimeRef,
    namespace_runtimes: Sequence[Mapping[str, Any]],
    cluster_runtimes: Sequence[Mapping[str, Any]],
    job: FineTuneJob,
) -> Mapping[str, Any]:
    candidates = namespace_runtimes if ref.kind == RUNTIME_KIND else cluster_runtimes
    found = next((r for r in candidates if _name(r) == ref.name), None)
    if found is None:
        where = (
            f" in namespace {job.metadata.namespace}"
            if ref.kind == RUNTIME_KIND and job.metadata.namespace
            else ""
        )
        known = ", ".join(sorted(_name(r) for r in candidates)) or "none"
        raise RuntimeSelectionError(
            f"spec.runtimeRef: {ref.kind} {ref.name!r} does not exist{where} (known: {known})"
        )
    if not serves(found, job.metadata.namespace):
        patterns = ", ".join(_allowed_namespaces(found) or []) or "none"
        raise RuntimeNotAllowedError(
            f"spec.runtimeRef: {ref.kind} {ref.name} may not be used in namespace "
            f"{job.metadata.namespace} (its spec.allowedNamespaces: {patterns}); ask its "
            "owners to allow the namespace, or name another runtime"
        )
    return found


def serves(runtime: Mapping[str, Any], namespace: str | None) -> bool:
    """Whether jobs of `namespace` may use the runtime: a ClusterFineTuneRuntime's
    allowedNamespaces (left out: every namespace). A FineTuneRuntime has none: it is only
    ever looked up in its own namespace. A job without a namespace (a manifest checked on a
    laptop) is not judged: the cluster does that."""
    patterns = _allowed_namespaces(runtime)
    if patterns is None or namespace is None:
        return True
    return any(fnmatchcase(namespace, p) for p in patterns)


def _allowed_namespaces(runtime: Mapping[str, Any]) -> list[str] | None:
    """The runtime's allowedNamespaces as written; a malformed value serves no namespace."""
    patterns = (runtime.get("spec") or {}).get("allowedNamespaces")
    if patterns is None:
        return None
    return [p for p in patterns if isinstance(p, str)] if isinstance(patterns, list) else []


def _name(runtime: Mapping[str, Any]) -> str:
    return str((runtime.get("metadata") or {}).get("name", ""))


def _labels(runtime: Mapping[str, Any]) -> Mapping[str, Any]:
    return (runtime.get("metadata") or {}).get("labels") or {}


# --- guardrails ------------------------------------------------------------------------

RUNTIME_OWNER = "the runtime"
POLICY_OWNER = "the cluster's default policy"
DEFAULT_POLICY_SOURCE = "Helm value defaultPolicy"
"""Where a violation of the default policy says its limits come from."""
SYSTEM_PRIORITY_PREFIX = "system-"
"""Kubernetes' own PriorityClasses (system-node-critical, system-cluster-critical): their pods
preempt nearly every other pod and are evicted last."""
SECRET_FIELDS = ("credentials.hubToken.name", "credentials.storage.name")
"""Where a spec names a Secret whose values the worker pods get in their environment."""


@dataclass(frozen=True)
class Scope:
    """What a check judges, and whose guardrails its messages name."""

    whole_job: bool
    """A job's whole effective spec; else a runtime's partial defaults, judged where set."""
    owner: str
    """Who set the guardrails, as a message names them: the runtime, the default policy."""


def check_guardrails(job: FineTuneJob, runtime: AnyRuntime | None) -> list[Violation]:
    """Every guardrail of the runtime that the job (its effective spec) breaks, in a fixed order."""
    if runtime is None:
        return []
    spec = _spec_of(job)
    rails, shown = runtime.spec.guardrails, runtime.display_name
    found = _spec_violations(spec, rails, shown, Scope(whole_job=True, owner=RUNTIME_OWNER))
    if not any(v.field == "spec.resources" for v in found):  # one message per GPU total
        found += _queue_violations(spec, runtime.spec.queue, shown)
    return found + _job_violations(job, spec, rails, shown, RUNTIME_OWNER)


def check_default_policy(job: FineTuneJob, policy: Guardrails) -> list[Violation]:
    """Every guardrail of the cluster's default policy that a job no runtime applies to breaks.

    A job that names no image runs the operator's trainer image, which the platform sets in
    the same chart as the policy: only an image the job names is judged.
    """
    spec = _spec_of(job)
    if _at(spec, "resources.image") is None:
        policy = policy.model_copy(update={"allowed_images": None})
    scope = Scope(whole_job=True, owner=POLICY_OWNER)
    found = _spec_violations(spec, policy, DEFAULT_POLICY_SOURCE, scope)
    return found + _job_violations(job, spec, policy, DEFAULT_POLICY_SOURCE, POLICY_OWNER)


def runtime_problems(runtime: AnyRuntime) -> list[Violation]:
    """Where the runtime's own defaults break its own guardrails (every job would be refused)."""
    defaults = runtime.spec.defaults.model_dump(mode="json", by_alias=True, exclude_none=True)
    scope = Scope(whole_job=False, owner=RUNTIME_OWNER)
    found = _spec_violations(defaults, runtime.spec.guardrails, runtime.display_name, scope)
    return [
        Violation(
            v.field.replace("spec.", "spec.defaults.", 1), v.value, v.limit, v.text, v.runtime
        )
        for v in found
    ]


def _spec_of(job: FineTuneJob) -> dict[str, Any]:
    return job.spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def _job_violations(
    job: FineTuneJob, spec: Mapping[str, Any], rails: Guardrails, shown: str, owner: str
) -> list[Violation]:
    """The guardrails only a whole job can keep: its bias audit and its labels."""
    return _bias_violations(spec, rails, shown, owner) + _label_violations(
        job.metadata.labels, rails, shown, owner
    )


Check = Callable[[Mapping[str, Any], Guardrails, Scope], Iterator[tuple[str, Any, Any, str]]]


def _spec_violations(
    spec: Mapping[str, Any], rails: Guardrails, runtime: str, scope: Scope
) -> list[Violation]:
    """The checks that read the spec; on a runtime's partial defaults only what is set is judged."""
    checks: list[Check] = [
        _image,
        _model_source,
        _worker_counts,
        _placement,
        _node_labels,
        _tolerations,
        _priority_class,
        _secrets,
        _deadline,
        _stall_timeout,
        _sharding,
    ]
    return [
        Violation(f"spec.{field}", value, limit, text, runtime)
        for check in checks
        for field, value, limit, text in check(spec, rails, scope)
    ]


def _at(spec: Mapping[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _image(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    patterns = rails.allowed_images
    if patterns is None:
        return
    image = _at(spec, "resources.image")
    if image is None and scope.whole_job:
        yield (
            "resources.image",
            None,
            patterns,
            f"must be set: {scope.owner} allows only images matching {', '.join(patterns)}",
        )
    elif image is not None and not any(fnmatchcase(image, p) for p in patterns):
        yield (
            "resources.image",
            image,
            patterns,
            f"{image} {_none_of(scope, 'allowedImages', patterns)}",
        )


def _model_source(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    prefixes = rails.allowed_model_sources
    source = _at(spec, "model.source")
    if prefixes is None or source is None or any(source.startswith(p) for p in prefixes):
        return
    shown = ", ".join(prefixes)
    yield (
        "model.source",
        source,
        prefixes,
        f"{source} starts with none of {scope.owner}'s allowedModelSources {shown}",
    )


def _worker_counts(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    resources = _at(spec, "resources") or {}
    workers, per_worker = resources.get("workers"), resources.get("gpusPerWorker")
    if rails.max_workers is not None and workers is not None and workers > rails.max_workers:
        yield (
            "resources.workers",
            workers,
            rails.max_workers,
            f"{workers} exceeds {scope.owner}'s maxWorkers {rails.max_workers}",
        )
    limit = rails.max_gpus_per_worker
    if limit is not None and per_worker is not None and per_worker > limit:
        yield (
            "resources.gpusPerWorker",
            per_worker,
            limit,
            f"{per_worker} exceeds {scope.owner}'s maxGpusPerWorker {limit}",
        )
    if rails.max_gpus_per_job is not None and workers is not None and per_worker is not None:
        total = workers * per_worker
        if total > rails.max_gpus_per_job:
            yield (
                "resources",
                total,
                rails.max_gpus_per_job,
                f"{workers} workers x {per_worker} GPUs = {total} GPUs exceeds "
                f"{scope.owner}'s maxGpusPerJob {rails.max_gpus_per_job}",
            )


def _placement(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    choices = rails.allowed_gpu_node_selectors
    resources = _at(spec, "resources") or {}
    selector = resources.get("nodeSelector")
    if (
        choices is None
        or not resources.get("gpusPerWorker")
        or (selector is None and not scope.whole_job)
    ):
        return
    selector = selector or {}
    allowed = [c.match_labels for c in choices]
    if any(all(selector.get(k) == v for k, v in labels.items()) for labels in allowed):
        return
    shown = " or ".join(_labels_text(labels) for labels in allowed)
    yield (
        "resources.nodeSelector",
        selector,
        allowed,
        f"{_labels_text(selector) or '{}'} does not select GPU nodes {scope.owner} allows: "
        f"include {shown}",
    )


def _node_labels(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    """Each nodeSelector entry, as key=value, must match an allowedNodeLabels pattern: a
    job cannot steer its pods to nodes the platform keeps apart (the control plane, say)."""
    patterns = rails.allowed_node_labels
    if patterns is None:
        return
    for key, value in sorted((_at(spec, "resources.nodeSelector") or {}).items()):
        label = f"{key}={value}"
        if not any(fnmatchcase(label, p) for p in patterns):
            text = f"{label} {_none_of(scope, 'allowedNodeLabels', patterns)}"
            yield ("resources.nodeSelector", {key: value}, patterns, text)


def _none_of(scope: Scope, guardrail: str, patterns: Sequence[str]) -> str:
    if not patterns:
        return f"is not allowed: {scope.owner}'s {guardrail} is empty"
    return f"matches none of {scope.owner}'s {guardrail} {', '.join(patterns)}"


def _labels_text(labels: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(labels.items())) + "}" if labels else ""


def _tolerations(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    allowed = rails.allowed_tolerations
    if allowed is None:
        return
    for index, raw in enumerate(_at(spec, "resources.tolerations") or []):
        toleration = Toleration.model_validate(raw)
        if not any(_tolerates_within(toleration, permitted) for permitted in allowed):
            yield (
                f"resources.tolerations[{index}]",
                raw,
                [t.model_dump(mode="json", exclude_none=True) for t in allowed],
                f"{_toleration_text(toleration)} is not among {scope.owner}'s allowedTolerations",
            )


def _priority_class(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    """A class among allowedPriorityClasses; a system-* class only by an entry that starts
    with system-, so a pattern such as * never lets a job preempt the cluster's own pods."""
    field, name = "resources.priorityClassName", _at(spec, "resources.priorityClassName")
    patterns = rails.allowed_priority_classes
    if name is None:
        return
    if name.startswith(SYSTEM_PRIORITY_PREFIX):
        explicit = [p for p in patterns or [] if p.startswith(SYSTEM_PRIORITY_PREFIX)]
        if not any(fnmatchcase(name, p) for p in explicit):
            text = (
                f"{name} is reserved for the cluster's own pods: only an entry of "
                f"{scope.owner}'s allowedPriorityClasses that starts with "
                f"{SYSTEM_PRIORITY_PREFIX} allows it"
            )
            yield (field, name, explicit, text)
    elif patterns is not None and not any(fnmatchcase(name, p) for p in patterns):
        yield (
            field,
            name,
            patterns,
            f"{name} {_none_of(scope, 'allowedPriorityClasses', patterns)}",
        )


def _secrets(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    """Secrets among allowedSecrets: the pods the operator creates get a named Secret's values
    in their environment, so naming a Secret is reading it."""
    patterns = rails.allowed_secrets
    if patterns is None:
        return
    for field in SECRET_FIELDS:
        name = _at(spec, field)
        if name is not None and not any(fnmatchcase(name, p) for p in patterns):
            yield (
                field,
                name,
                patterns,
                f"Secret {name} {_none_of(scope, 'allowedSecrets', patterns)}",
            )


def _tolerates_within(toleration: Toleration, permitted: Toleration) -> bool:
    same = (toleration.key, toleration.operator, toleration.value) == (
        permitted.key,
        permitted.operator,
        permitted.value,
    )
    return same and permitted.effect in (None, toleration.effect)


def _toleration_text(toleration: Toleration) -> str:
    value = f"={toleration.value}" if toleration.value is not None else ""
    effect = f":{toleration.effect}" if toleration.effect else ""
    return f"{toleration.key or '*'}{value}{effect} ({toleration.operator})"


def _stall_timeout(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    field = "runPolicy.stallTimeout"
    timeout, limit = _at(spec, field), rails.max_stall_timeout
    if limit is None or timeout is None or not isinstance(timeout, str):
        return
    if duration_seconds(timeout) > duration_seconds(limit):
        yield field, timeout, limit, f"{timeout} exceeds {scope.owner}'s maxStallTimeout {limit}"


def _sharding(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    field, rule = "training.sharding", rails.sharding
    sharding = _at(spec, field)
    if rule == "allowed" or (sharding is None and not scope.whole_job):
        return
    sharding = sharding or "none"
    if rule == "required" and sharding != "fsdp":
        yield (
            field,
            sharding,
            rule,
            f"{sharding} is not fsdp: {scope.owner} requires sharded training (sharding: required)",
        )
    if rule == "forbidden" and sharding == "fsdp":
        yield field, sharding, rule, f"fsdp is forbidden by {scope.owner} (sharding: forbidden)"


def _deadline(
    spec: Mapping[str, Any], rails: Guardrails, scope: Scope
) -> Iterator[tuple[str, Any, Any, str]]:
    field = "runPolicy.activeDeadlineSeconds"
    deadline = _at(spec, field)
    limit = rails.max_active_deadline_seconds
    if limit is not None and deadline is not None and deadline > limit:
        yield (
            field,
            deadline,
            limit,
            f"{deadline} exceeds {scope.owner}'s maxActiveDeadlineSeconds {limit}",
        )
    budget = rails.max_gpu_hours
    gpus = _gpus(_at(spec, "resources") or {})
    if budget is None or not gpus or not scope.whole_job:
        return
    own_budget = _at(spec, "runPolicy.maxGpuHours")
    if own_budget is not None and own_budget > budget:
        yield (
            "runPolicy.maxGpuHours",
            own_budget,
            budget,
            f"{own_budget:g} exceeds {scope.owner}'s maxGpuHours {budget:g}",
        )
    if deadline is None:
        yield (
            field,
            None,
            budget,
            f"must be set: {scope.owner}'s maxGpuHours {budget:g} bounds GPUs x deadline",
        )
    elif gpus * deadline / 3600 > budget:
        hours = gpus * deadline / 3600
        yield (
            field,
            deadline,
            budget,
            f"{gpus} GPUs x {deadline} s = {hours:g} GPU-hours exceeds {scope.owner}'s "
            f"maxGpuHours {budget:g}",
        )


def _queue_violations(spec: Mapping[str, Any], queue: QueueSpec, runtime: str) -> list[Violation]:
    """A job bigger than the operator queue's limit would wait forever: refuse it."""
    limit, gpus = queue.max_concurrent_gpus_per_namespace, job_gpus(spec)
    if limit is None or gpus <= limit:
        return []
    text = (
        f"{gpus} GPUs exceeds the runtime's queue.maxConcurrentGpusPerNamespace {limit}: "
        "the job could never start"
    )
    return [Violation("spec.resources", gpus, limit, text, runtime)]


def _bias_violations(
    spec: Mapping[str, Any], rails: Guardrails, runtime: str, owner: str
) -> list[Violation]:
    if not rails.require_bias_audit or spec.get("bias") is not None:
        return []
    return [
        Violation(
            "spec.bias",
            None,
            True,
            f"must be set: {owner} requires a bias audit (requireBiasAudit)",
            runtime,
        )
    ]


def _label_violations(
    labels: Mapping[str, str], rails: Guardrails, runtime: str, owner: str
) -> list[Violation]:
    return [
        Violation(
            f"metadata.labels.{key}",
            labels.get(key),
            key,
            f"is required by {owner} (requiredLabels)",
            runtime,
        )
        for key in rails.required_labels
        if not labels.get(key)
    ]
