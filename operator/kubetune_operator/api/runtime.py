"""FineTuneRuntime and ClusterFineTuneRuntime v1alpha1: what a platform team decides once.

A runtime holds `defaults` (any part of a FineTuneJob spec, merged under the job's own
fields) and `guardrails` (what a job may ask for). The defaults are a generated
all-optional twin of the FineTuneJob spec: every field keeps its type, bounds and
description (so the CRD stays structural and `kubectl explain` documents it) but loses
its default value and its cross-field rules, which only make sense for a whole spec; the
merged spec is validated as a FineTuneJob. The runtime CRDs are generated from these
models, like the FineTuneJob CRD.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo

from kubetune_operator.api.v1alpha1 import (
    CLUSTER_RUNTIME_KIND,
    DNS_SUBDOMAIN_PATTERN,
    OBJECT_CONFIG,
    RUNTIME_KIND,
    Condition,
    DnsLabel,
    Duration,
    FineTuneJobSpec,
    LabelKey,
    LabelValue,
    Toleration,
)
from kubetune_trainer.config import Section, section_default

RUNTIME_PLURAL = "finetuneruntimes"
CLUSTER_RUNTIME_PLURAL = "clusterfinetuneruntimes"
RUNTIME_SHORT_NAMES = ("ftr",)
CLUSTER_RUNTIME_SHORT_NAMES = ("cftr",)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""The label that hands a batch Job to Kueue's LocalQueue of that name."""
DEFAULT_RUNTIME_LABEL = "kubetune.dev/default-runtime"
"""Set to "true" on one runtime per namespace (or one cluster runtime) to make it the default."""
NOT_DEFAULTABLE = frozenset({"runtime_ref", "search"})
"""Spec fields a runtime cannot default: a job names its own runtime and its own search."""

MAX_PATTERNS = 64


def _section_in(annotation: Any) -> type[Section] | None:
    """The section of an `X` or `X | None` annotation; None for scalars and lists."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    arguments = getattr(annotation, "__args__", ())
    if len(arguments) == 2 and type(None) in arguments:
        inner = next(a for a in arguments if a is not type(None))
        return _section_in(inner)
    return None


def _partial_field(field: FieldInfo) -> tuple[Any, Any]:
    """A field's optional twin: a section becomes a partial section, anything else (lists
    included: a job's list replaces the default's whole) keeps its full type and bounds."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    kept = {k: v for k, v in extra.items() if k != "default"}
    original: Any = field.annotation
    section = _section_in(original)
    annotation: Any
    if section is not None:
        annotation = partial_model(section) | None
    elif field.metadata:
        annotation = Annotated[original, *field.metadata] | None
    else:
        annotation = original | None
    info = Field(default=None, description=field.description, json_schema_extra=kept or None)
    return annotation, info


@cache
def partial_model(model: type[Section]) -> type[Section]:
    """An all-optional copy of a section: same fields, types, bounds and descriptions; no defaults, no cross-field rules."""
    fields = {
        name: _partial_field(field)
        for name, field in model.model_fields.items()
        if not (model is FineTuneJobSpec and name in NOT_DEFAULTABLE)
    }
    partial: type[Section] = create_model(  # type: ignore[call-overload]
        f"Partial{model.__name__}", __base__=Section, __doc__=model.__doc__, **fields
    )
    return partial


if TYPE_CHECKING:
    SpecDefaults = Section
else:
    SpecDefaults = partial_model(FineTuneJobSpec)


class NodeSelectorChoice(Section):
    """One allowed set of node labels."""

    match_labels: dict[LabelKey, LabelValue] = Field(min_length=1, max_length=32)
    """Labels a GPU job's resources.nodeSelector must all carry (it may carry more)."""


GlobPattern = Annotated[str, Field(min_length=1, max_length=512)]
UriPrefix = Annotated[str, Field(min_length=1, max_length=2048)]


class Guardrails(Section):
    """What a job that uses this runtime may ask for; a job that breaks one is refused with reason GuardrailViolated."""

    allowed_images: list[GlobPattern] | None = Field(
        default=None, min_length=1, max_length=MAX_PATTERNS
    )
    """Shell-style patterns (* and ?) a trainer image must match, e.g. registry.example/ml/*; left out: any image. A job that names no image must get one from the defaults."""
    allowed_model_sources: list[UriPrefix] | None = Field(
        default=None, min_length=1, max_length=MAX_PATTERNS
    )
    """URI prefixes the model source must start with, e.g. hf://our-org/ or pvc://models/; left out: any source."""
    max_workers: int | None = Field(default=None, ge=1, le=256)
    """Worker pods a job may run at most."""
    max_gpus_per_worker: int | None = Field(default=None, ge=0, le=16)
    """GPUs a worker may request at most (0: CPU only)."""
    max_gpus_per_job: int | None = Field(default=None, ge=0, le=4096)
    """GPUs a job may request at most (workers times gpusPerWorker)."""
    allowed_gpu_node_selectors: list[NodeSelectorChoice] | None = Field(
        default=None, min_length=1, max_length=32
    )
    """For jobs with GPUs: the nodeSelector must carry all labels of at least one entry; left out: any placement."""
    allowed_tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    """Tolerations a job may use (an entry without effect allows every effect); left out: any; empty: none."""
    allowed_node_labels: list[GlobPattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    """Shell-style patterns of key=value that every resources.nodeSelector entry must match, e.g. nvidia.com/gpu.product=*; left out: any; empty: no nodeSelector."""
    allowed_priority_classes: list[GlobPattern] | None = Field(
        default=None, max_length=MAX_PATTERNS
    )
    """Shell-style patterns resources.priorityClassName must match; left out: any class but system-*; empty: none. A system-* class (system-node-critical, system-cluster-critical) needs an entry that starts with system-."""
    allowed_secrets: list[GlobPattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    """Shell-style patterns the Secrets named in spec.credentials (hubToken, storage) must match: the worker pods get their values, so naming a Secret is reading it; left out: any Secret of the job's namespace; empty: none."""
    max_active_deadline_seconds: int | None = Field(default=None, ge=1, le=2**31 - 1)
    """Longest runPolicy.activeDeadlineSeconds; a job without a deadline gets this one."""
    max_stall_timeout: Duration | None = None
    """Longest runPolicy.stallTimeout (a duration such as 30m): a stuck job may hold its GPUs this long at most; a job that sets none gets the shorter of this and the default."""
    max_gpu_hours: float | None = Field(default=None, gt=0, le=1_000_000)
    """GPU-hours a job may reserve: workers times gpusPerWorker times activeDeadlineSeconds / 3600. A GPU job without a deadline gets the longest one that fits."""
    require_bias_audit: bool = False
    """Jobs must run the fairness audit (spec.bias must be set, by the job or the defaults)."""
    sharding: Literal["allowed", "required", "forbidden"] = "allowed"
    """training.sharding a job may use: allowed (either), required (fsdp: models this runtime's GPUs hold only when sharded) or forbidden (none)."""
    required_labels: list[LabelKey] = Field(default_factory=list, max_length=32)
    """Label keys every job must carry with a non-empty value, e.g. cost-center."""

    @model_validator(mode="after")
    def _gpu_limits_agree(self) -> Self:
        per_worker, per_job = self.max_gpus_per_worker, self.max_gpus_per_job
        if per_worker is not None and per_job is not None and per_worker > per_job:
            raise ValueError(
                f"maxGpusPerWorker ({per_worker}) exceeds maxGpusPerJob ({per_job}): "
                "no worker could use it"
            )
        return self


class QueueSpec(Section):
    """How the jobs of this runtime wait for GPUs: in a Kueue LocalQueue, or in the operator's own queue."""

    kueue_local_queue: DnsLabel | None = None
    """Kueue LocalQueue (in each job's namespace) that admits the worker Jobs: they are created suspended with the kueue.x-k8s.io/queue-name label, and start when Kueue admits them."""
    max_concurrent_gpus_per_namespace: int | None = Field(default=None, ge=1, le=100_000)
    """Without Kueue: GPUs the started jobs of this runtime may hold at once in one namespace; further jobs wait in phase Queued, first created first started."""

    @model_validator(mode="after")
    def _one_queue(self) -> Self:
        if (
            self.kueue_local_queue is not None
            and self.max_concurrent_gpus_per_namespace is not None
        ):
            raise ValueError(
                "kueueLocalQueue and maxConcurrentGpusPerNamespace exclude each other: "
                "with Kueue, its ClusterQueue's quota limits the GPUs"
            )
        return self


class FineTuneRuntimeSpec(Section):
    """Defaults merged under each job's own fields, and guardrails the merged spec must keep."""

    defaults: SpecDefaults = section_default(SpecDefaults)
    """Any part of a FineTuneJob spec; a job's own fields win, field by field (lists are replaced whole)."""
    guardrails: Guardrails = section_default(Guardrails)
    """Limits on what a job may ask for."""
    queue: QueueSpec = section_default(QueueSpec)
    """Where jobs wait for GPUs; left out: they start at once."""


class ClusterFineTuneRuntimeSpec(FineTuneRuntimeSpec):
    """A runtime's spec, plus the namespaces whose jobs may use it."""

    allowed_namespaces: list[GlobPattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    """Shell-style patterns of the namespaces whose FineTuneJobs may use this runtime, e.g. ml-*; left out: every namespace; empty: none. A job of another namespace that names it is refused (reason RuntimeNotAllowed); as the default runtime it serves only these namespaces."""


class RuntimeStatus(Section):
    """The operator's verdict on the runtime itself."""

    conditions: list[Condition] = Field(default_factory=list, max_length=8)
    """Validated: whether the runtime is well-formed and its defaults keep its own guardrails."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation this status describes."""


class RuntimeMeta(BaseModel):
    """The parts of a runtime's metadata that kubetune checks; the rest passes through."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    namespace: DnsLabel | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)


class _RuntimeObject(BaseModel):
    model_config = OBJECT_CONFIG

    api_version: Literal["kubetune.dev/v1alpha1"] = Field(alias="apiVersion")
    metadata: RuntimeMeta
    spec: FineTuneRuntimeSpec = section_default(FineTuneRuntimeSpec)
    status: RuntimeStatus | None = None

    @property
    def is_default(self) -> bool:
        """Labelled as the default runtime of its namespace (or of the cluster)."""
        return self.metadata.labels.get(DEFAULT_RUNTIME_LABEL) == "true"

    @property
    def display_name(self) -> str:
        """Kind and name, as messages show it: ClusterFineTuneRuntime a100."""
        return f"{self.kind} {self.metadata.name}"  # type: ignore[attr-defined]


class FineTuneRuntime(_RuntimeObject):
    """Defaults and guardrails for the FineTuneJobs of one namespace."""

    kind: Literal["FineTuneRuntime"]


class ClusterFineTuneRuntime(_RuntimeObject):
    """Defaults and guardrails for FineTuneJobs in any namespace."""

    kind: Literal["ClusterFineTuneRuntime"]
    spec: ClusterFineTuneRuntimeSpec = section_default(ClusterFineTuneRuntimeSpec)

    @model_validator(mode="after")
    def _has_no_namespace(self) -> Self:
        if self.metadata.namespace is not None:
            raise ValueError(
                "metadata.namespace: a ClusterFineTuneRuntime is cluster-scoped; remove it"
            )
        return self


AnyRuntime = FineTuneRuntime | ClusterFineTuneRuntime
RUNTIME_MODELS: dict[str, type[FineTuneRuntime] | type[ClusterFineTuneRuntime]] = {
    RUNTIME_KIND: FineTuneRuntime,
    CLUSTER_RUNTIME_KIND: ClusterFineTuneRuntime,
}
