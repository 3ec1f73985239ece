"""FineTuneJob v1alpha1: the models that are the single source of the CRD.

A FineTuneJob spec is the trainer's `TrainingConfig` plus what only a cluster needs:
`resources`, `runPolicy` and `search`. The CRD in crds/ is generated from these models
(crdgen.py), the operator validates every object it sees with them, and `kubetune
validate` checks manifests with them, so the three can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

from kubetune_trainer.config import (
    MetricName,
    Section,
    TrainingConfig,
    cel_rules,
    metric_refusal,
    section_default,
)

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("kubetune",)

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubetune"
"""Every child the operator makes carries LABEL_MANAGED_BY: MANAGED_BY."""
LABEL_JOB_NAME = "kubetune.dev/job-name"
"""On every child: the FineTuneJob it belongs to (a trial: its search parent)."""
LABEL_COMPONENT = "kubetune.dev/component"
"""On every child: what it is (worker, config, trial...)."""

MAX_JOB_NAME_LENGTH = 40
"""Leaves room for the longest derived name: '<job>-workers-NNN' (a pod hostname) in 63."""
TRIAL_SUFFIX = "-trial-999"
"""The longest suffix of a trial's name (maxTrials is at most 1000, numbered from 0)."""

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY_PATTERN = (
    r"^\+?(0*[1-9][0-9]*(\.[0-9]*)?|0*\.0*[1-9][0-9]*)"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""A Kubernetes quantity above zero: its number has a non-zero digit and no minus sign.

Every quantity of a job (CPU, memory, /dev/shm) is an amount a worker needs, for which
zero or less means nothing; the CRD carries this pattern so the API server refuses such a
value at apply time."""
IMAGE_PATTERN = (
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
EXTENDED_RESOURCE_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+"
    r"/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
)
"""A device plugin's resource name: a domain, '/', a name. The names without a domain are
Kubernetes' own (cpu, memory, ephemeral-storage, hugepages-*), which a job must not set
through gpuResource: it would become the pods' request and limit."""
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
TERMINAL_PHASES: Final[frozenset[Phase]] = frozenset({"Succeeded", "Failed"})
"""The phases a job never leaves (the operator, its views and `kubetune status` agree)."""
ConditionType = Literal[
    "Validated",
    "DataValidated",
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
    "BiasAuditPassed",
]

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
Quantity = (
    Annotated[int, Field(ge=1)] | Annotated[str, Field(max_length=64, pattern=QUANTITY_PATTERN)]
)
LabelKey = Annotated[str, Field(max_length=317, pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63)]
ShortText = Annotated[str, Field(max_length=1024)]
Timestamp = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})]


class Toleration(Section):
    """A Kubernetes toleration, so the pods may run on tainted (e.g. GPU) nodes."""

    key: LabelKey | None = None
    """Taint key; left out with operator Exists to tolerate every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Equal matches key and value; Exists matches the key alone."""
    value: LabelValue | None = None
    """Taint value (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; left out for all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """How long a NoExecute taint is tolerated before eviction."""


class ResourcesSpec(Section):
    """How many workers, what each gets, and where they may run."""

    workers: int = Field(default=1, ge=1, le=256)
    """Worker pods (machines); training is data-parallel across all their GPUs."""
    gpus_per_worker: int = Field(default=1, ge=0, le=16)
    """GPUs each worker requests; 0 trains on CPU (gloo), as on a laptop cluster."""
    gpu_resource: Annotated[str, Field(max_length=253, pattern=EXTENDED_RESOURCE_PATTERN)] = (
        "nvidia.com/gpu"
    )
    """Extended resource name of the GPU the device plugin advertises, with its domain (nvidia.com/gpu, amd.com/gpu); cpu, memory and the other names without a domain are refused."""
    cpu: Quantity | None = None
    """CPU each worker requests (Kubernetes quantity, e.g. 8 or 7500m); left out: 4 per GPU, 2 without."""
    memory: Quantity | None = None
    """Memory each worker requests and is limited to (e.g. 32Gi); left out: 16Gi per GPU, 4Gi without."""
    shared_memory: Quantity = "2Gi"
    """Size of /dev/shm (data-loader workers and NCCL use it)."""
    image: Annotated[str, Field(max_length=512, pattern=IMAGE_PATTERN)] | None = None
    """Trainer container image; left out: the operator's default trainer image."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Kubernetes image pull policy; left out: the cluster's default for the tag."""
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=32)
    """Node labels the workers must run on (e.g. a GPU product label)."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the workers tolerate."""
    priority_class_name: DnsSubdomain | None = None
    """PriorityClass of the worker pods."""

    @property
    def processes_per_worker(self) -> int:
        """Trainer processes in each pod: one per GPU, one on a CPU worker."""
        return max(self.gpus_per_worker, 1)


CURRENCY_PATTERN = r"^[A-Z]{3}$"
DURATION_PATTERN = (
    r"^([0-9]{1,4}h([0-9]{1,6}m)?([0-9]{1,7}s)?|[0-9]{1,6}m([0-9]{1,7}s)?|[0-9]{1,7}s)$"
)
"""A duration as Kubernetes writes them in its own fields: 90s, 30m, 1h30m."""
MIN_STALL_TIMEOUT_SECONDS = 10
MAX_STALL_TIMEOUT_SECONDS = 7 * 24 * 3600
DEFAULT_STALL_TIMEOUT = "30m"
Duration = Annotated[str, Field(max_length=20, pattern=DURATION_PATTERN)]


def duration_seconds(text: str) -> int:
    """Seconds in a duration that matches DURATION_PATTERN, e.g. 1h30m: 5400."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0, ""
    for character in text:
        if character.isdigit():
            number += character
        else:
            total, number = total + int(number) * units[character], ""
    return total


class RunPolicySpec(Section):
    """Restarts, deadlines, budget, cleanup and suspension."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Times the whole worker group is restarted from its last checkpoint after a retryable failure."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=2**31 - 1)
    """Fail the job once it has run this long; may be changed on a running job."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """Delete the pods, Job and Service this long after the job finished; the FineTuneJob and its status stay."""
    suspend: bool = False
    """Stop the workers (they resume from the last checkpoint when set back to false); Kueue may drive it."""
    max_gpu_hours: float | None = Field(default=None, gt=0, le=1_000_000)
    """GPU-hours the run may use, restarts included (GPUs x hours since each start); past it the trainer saves a checkpoint, writes its report and the job fails with reason BudgetExceeded. Left out: no budget."""
    price_per_gpu_hour: float | None = Field(default=None, gt=0, le=1_000_000)
    """Price of one GPU-hour, for status.cost.amount; left out: the cost is shown in GPU-hours only."""
    currency: Annotated[str, Field(pattern=CURRENCY_PATTERN)] = "USD"
    """ISO 4217 code of pricePerGpuHour's currency (e.g. USD, EUR)."""
    termination_grace_period_seconds: int = Field(default=300, ge=30, le=86_400)
    """Seconds a worker being stopped (suspend, Kueue preemption, eviction, node drain) has before it is killed: the trainer stops at its next logged step and saves a checkpoint there, so one logging interval plus one checkpoint save must fit."""
    stall_timeout: Duration = DEFAULT_STALL_TIMEOUT
    """How long the workers may go without a sign of progress (an optimizer step, or a heartbeat from loading, data preparation, evaluation or a checkpoint save) before the group is restarted from its last checkpoint with reason Stalled, counted against backoffLimit; `kubetune run` stops a stalled run. A duration such as 90s, 30m or 1h30m, from 10s to 168h."""

    @model_validator(mode="after")
    def _stall_timeout_in_range(self) -> Self:
        seconds = duration_seconds(self.stall_timeout)
        if not MIN_STALL_TIMEOUT_SECONDS <= seconds <= MAX_STALL_TIMEOUT_SECONDS:
            raise ValueError(f"stallTimeout must be from 10s to 168h (got {self.stall_timeout!r})")
        return self


SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


class SecretKeyRef(Section):
    """One key of a Secret in the job's namespace; the value itself never appears in the spec."""

    name: DnsSubdomain
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]
    """Key in the Secret that holds the value."""


class SecretRef(Section):
    """A whole Secret in the job's namespace, by name."""

    name: DnsSubdomain
    """Name of the Secret."""


class CredentialsSpec(Section):
    """Secrets the workers read, only ever by reference (the values stay in the Secrets)."""

    hub_token: SecretKeyRef | None = None
    """A Hugging Face token for private or gated hf:// sources, given to the trainer as HF_TOKEN."""
    storage: SecretRef | None = None
    """A Secret whose keys become the workers' environment variables (e.g. AWS_ACCESS_KEY_ID for object storage); kubetune's own variables take precedence."""


class SearchParameter(Section):
    """One dimension of the search space: a numeric or categorical field of the spec."""

    model_config = cel_rules(
        (
            "!has(self.min) || !has(self.max) || self.min <= self.max",
            "min must not exceed max",
        ),
        (
            "!self.log || (has(self.min) && self.min > 0.0)",
            "a log scale needs min > 0",
        ),
    )

    path: Annotated[
        str,
        Field(min_length=3, max_length=256, pattern=r"^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)+$"),
    ]
    """Field path in the spec, as in a manifest, e.g. training.learningRate."""
    type: Literal["float", "int", "categorical"]
    """float or int for a numeric range (or listed values), categorical for listed choices."""
    min: float | None = None
    """Lower bound of a numeric range (inclusive)."""
    max: float | None = None
    """Upper bound of a numeric range (inclusive)."""
    log: bool = False
    """Sample the range on a log scale (needs min > 0)."""
    step: float | None = Field(default=None, gt=0)
    """Spacing of a discrete numeric range; int ranges default to 1."""
    values: list[float] = Field(default_factory=list, max_length=100)
    """Numeric values to try instead of a range (float or int)."""
    choices: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=100
    )
    """Values of a categorical parameter, written as text (e.g. cosine, true, 32)."""

    @model_validator(mode="after")
    def _space_is_well_formed(self) -> Self:
        if self.type == "categorical":
            _check_categorical(self)
        else:
            _check_numeric(self)
        _check_fits_field(self)
        return self

    def grid_points(self) -> list[float | int | str] | None:
        """The values a grid search tries, or None when the space is continuous."""
        if self.choices:
            return list(self.choices)
        if self.values:
            return [int(v) if self.type == "int" else v for v in self.values]
        step = self.step if self.step is not None else (1 if self.type == "int" else None)
        if step is None or self.min is None or self.max is None:
            return None
        count = math.floor((self.max - self.min) / step + 1e-9) + 1
        points = [self.min + i * step for i in range(count)]
        return [round(p) if self.type == "int" else p for p in points]


def _check_categorical(parameter: SearchParameter) -> None:
    if not parameter.choices:
        raise ValueError(f"{parameter.path}: a categorical parameter needs choices")
    if parameter.values or parameter.min is not None or parameter.max is not None:
        raise ValueError(f"{parameter.path}: a categorical parameter takes choices only")
    if len(set(parameter.choices)) != len(parameter.choices):
        raise ValueError(f"{parameter.path}: choices must be distinct")


def _check_numeric(parameter: SearchParameter) -> None:
    if parameter.choices:
        raise ValueError(f"{parameter.path}: choices apply to categorical parameters only")
    has_range = parameter.min is not None or parameter.max is not None
    if parameter.values and has_range:
        raise ValueError(f"{parameter.path}: give either values or min/max, not both")
    if parameter.values:
        _check_numeric_values(parameter)
        return
    if parameter.min is None or parameter.max is None:
        raise ValueError(f"{parameter.path}: a numeric parameter needs min and max, or values")
    if parameter.min > parameter.max:
        raise ValueError(
            f"{parameter.path}: min ({parameter.min}) is greater than max ({parameter.max})"
        )
    if parameter.log and parameter.min <= 0:
        raise ValueError(f"{parameter.path}: a log scale needs min > 0 (got {parameter.min})")
    if parameter.log and parameter.step is not None:
        raise ValueError(f"{parameter.path}: step and log cannot be combined")
    if (
        parameter.type == "int"
        and parameter.step is not None
        and parameter.step != int(parameter.step)
    ):
        raise ValueError(
            f"{parameter.path}: an int parameter takes a whole-number step (got {parameter.step})"
        )


def _check_numeric_values(parameter: SearchParameter) -> None:
    if len(set(parameter.values)) != len(parameter.values):
        raise ValueError(f"{parameter.path}: values must be distinct")
    if parameter.type == "int" and any(v != int(v) for v in parameter.values):
        raise ValueError(f"{parameter.path}: an int parameter takes whole-number values")
    if parameter.log or parameter.step is not None:
        raise ValueError(f"{parameter.path}: log and step apply to min/max ranges only")


def _check_fits_field(parameter: SearchParameter) -> None:
    field = spec_field(parameter.path)
    samples: list[Any] = list(parameter.choices)
    if parameter.type != "categorical":
        bounds = [b for b in (parameter.min, parameter.max) if b is not None]
        numbers = parameter.values or bounds
        samples = [int(v) if parameter.type == "int" else v for v in numbers]
    field_type: Any = (
        Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    )
    adapter: TypeAdapter[Any] = TypeAdapter(field_type)
    for sample in samples:
        try:
            adapter.validate_python(sample, strict=parameter.type != "categorical")
        except ValidationError as error:
            reason = error.errors()[0]["msg"]
            raise ValueError(
                f"{parameter.path}: {sample!r} does not fit the field: {reason}"
            ) from None


SEARCHABLE_SECTIONS = ("data", "training", "freezing", "regularization", "evaluation")


def spec_field(path: str) -> FieldInfo:
    """The training-config field that a search parameter's camelCase path names."""
    head, *rest = path.split(".")
    if head not in SEARCHABLE_SECTIONS:
        raise ValueError(
            f"{path}: unknown parameter path; searchable sections are "
            f"{', '.join(SEARCHABLE_SECTIONS)}"
        )
    model: type[BaseModel] = TrainingConfig
    field = _field_by_alias(model, head, path)
    for name in rest:
        nested = nested_model(field.annotation)
        if nested is None:
            raise ValueError(f"{path}: unknown parameter path ({name!r} is below a plain field)")
        field = _field_by_alias(nested, name, path)
    if nested_model(field.annotation) is not None:
        raise ValueError(f"{path}: names a whole section; name one of its fields")
    return field


def _field_by_alias(model: type[BaseModel], alias: str, path: str) -> FieldInfo:
    for name, field in model.model_fields.items():
        if (field.alias or name) == alias:
            return field
    known = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))
    raise ValueError(f"{path}: unknown parameter path ({alias!r} is not one of {known})")


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation such as `X`, `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = nested_model(argument)
        if found is not None:
            return found
    return None


class SearchObjective(Section):
    """What the search optimises."""

    metric: MetricName | None = None
    """The validation metric each trial reports; left out: the job's evaluation metric."""
    direction: Literal["maximize", "minimize"] | None = None
    """Left out: minimize for loss and perplexity, maximize for the rest."""


class SearchEarlyStopping(Section):
    """Median pruning: stop a trial whose intermediate metric is worse than the median of earlier trials at the same step."""

    min_completed_trials: int = Field(default=3, ge=1, le=1000)
    """Completed trials needed before any trial is pruned."""
    warmup_evaluations: int = Field(default=1, ge=0, le=10_000)
    """Evaluations a trial always gets before it may be pruned."""


class SearchSpec(Section):
    """Hyperparameter search: this job becomes a parent that runs child trial jobs."""

    algorithm: Literal["grid", "random", "bayesian"] = "bayesian"
    """grid: every combination; random: independent samples; bayesian: Optuna's model-based sampler."""
    bayesian_sampler: Literal["tpe", "gp"] = "tpe"
    """The bayesian sampler: tpe (tree-structured Parzen estimator) or gp (Gaussian process)."""
    parameters: list[SearchParameter] = Field(min_length=1, max_length=32)
    """The search space."""
    objective: SearchObjective = section_default(SearchObjective)
    """The metric to optimise."""
    max_trials: int = Field(default=20, ge=1, le=1000)
    """Trials to run at most (a grid stops here too)."""
    parallelism: int = Field(default=1, ge=1, le=100)
    """Trials running at the same time."""
    max_failed_trials: int = Field(default=3, ge=0, le=1000)
    """Failed trials tolerated before the search fails."""
    early_stopping: SearchEarlyStopping | None = None
    """Prune unpromising trials; left out to run every trial to the end."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seed of the sampler: the same seed proposes the same trials."""

    @model_validator(mode="after")
    def _space_is_searchable(self) -> Self:
        paths = [p.path for p in self.parameters]
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        if repeated:
            raise ValueError(f"parameter {repeated[0]} is listed twice")
        if self.parallelism > self.max_trials:
            raise ValueError(
                f"parallelism ({self.parallelism}) exceeds maxTrials ({self.max_trials})"
            )
        if self.algorithm == "grid":
            self._check_grid()
        return self

    def _check_grid(self) -> None:
        size = 1
        for parameter in self.parameters:
            points = parameter.grid_points()
            if points is None:
                raise ValueError(
                    f"grid search needs discrete values: give {parameter.path} "
                    "values, choices or a step"
                )
            size *= len(points)
        if size > self.max_trials:
            raise ValueError(f"the grid has {size} points but maxTrials is {self.max_trials}")


RUNTIME_KIND = "FineTuneRuntime"
CLUSTER_RUNTIME_KIND = "ClusterFineTuneRuntime"


class RuntimeRef(Section):
    """The FineTuneRuntime or ClusterFineTuneRuntime whose defaults and guardrails apply to this job."""

    kind: Literal["FineTuneRuntime", "ClusterFineTuneRuntime"] = "ClusterFineTuneRuntime"
    """FineTuneRuntime (in the job's namespace) or ClusterFineTuneRuntime."""
    name: DnsSubdomain
    """Name of the runtime."""


class FineTuneJobSpec(TrainingConfig):
    """The desired fine-tune: the training recipe plus the cluster resources that run it."""

    runtime_ref: RuntimeRef | None = None
    """The runtime to use; left out: the namespace's default FineTuneRuntime, else the default ClusterFineTuneRuntime, else none."""

    resources: ResourcesSpec = section_default(ResourcesSpec)
    """Workers, GPUs, CPU, memory, image and placement."""
    run_policy: RunPolicySpec = section_default(RunPolicySpec)
    """Restarts, deadlines, GPU budget, cleanup and suspension."""
    credentials: CredentialsSpec = section_default(CredentialsSpec)
    """Secrets for the workers (hub token, storage credentials), by reference only."""
    search: SearchSpec | None = None
    """Hyperparameter search; this job then runs child trial jobs instead of training itself."""

    @model_validator(mode="after")
    def _sharding_has_processes(self) -> Self:
        processes = self.resources.workers * self.resources.processes_per_worker
        if self.training.sharding == "fsdp" and processes < 2:
            raise ValueError(
                "training.sharding: fsdp needs two or more trainer processes, and "
                f"resources.workers x gpusPerWorker gives {processes}; raise "
                "resources.workers or resources.gpusPerWorker, or set training.sharding: none"
            )
        return self

    @model_validator(mode="after")
    def _8bit_runs_on_gpus(self) -> Self:
        lora = self.training.lora
        if lora is not None and lora.quantization == "8bit" and not self.resources.gpus_per_worker:
            raise ValueError(
                "training.lora.quantization 8bit needs GPUs (bitsandbytes' CPU backend cannot "
                "load its 8bit checkpoints back): set resources.gpusPerWorker, or use 4bit"
            )
        return self

    @model_validator(mode="after")
    def _objective_fits_task(self) -> Self:
        if self.search is None:
            return self
        metric = self.search.objective.metric
        if metric is None:
            return self
        refusal = metric_refusal(
            "search.objective.metric",
            metric,
            self.model.task,
            self.training.objective,
            self.evaluation.generation is not None,
        )
        if refusal is not None:
            raise ValueError(refusal)
        return self


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata that kubetune checks; the rest passes through."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: Annotated[
        str, Field(min_length=1, max_length=MAX_JOB_NAME_LENGTH, pattern=DNS_LABEL_PATTERN)
    ]
    namespace: DnsLabel | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[LabelKey, Annotated[str, Field(max_length=262_144)]] = Field(
        default_factory=dict
    )


class Condition(Section):
    """A Kubernetes-style condition (the shape kubectl wait reads)."""

    type: ConditionType
    """Validated, DataValidated, Running, Succeeded, Failed, Suspended or BiasAuditPassed."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    """A CamelCase word for machines and the troubleshooting guide."""
    message: Annotated[str, Field(max_length=32_768)] = ""
    """What happened, for people."""
    last_transition_time: Timestamp
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was computed for."""


class WorkerCounts(Section):
    """Worker pods by phase."""

    pending: int = Field(default=0, ge=0)
    """Pods created but not running (scheduling, pulling images)."""
    running: int = Field(default=0, ge=0)
    """Pods running."""
    succeeded: int = Field(default=0, ge=0)
    """Pods that exited 0."""
    failed: int = Field(default=0, ge=0)
    """Pods that failed."""


HeartbeatPhase = Literal[
    "Starting", "LoadingModel", "PreparingData", "Training", "Evaluating", "Examining", "Saving"
]


class Heartbeat(Section):
    """The trainer's last sign of progress, in phases that make no optimizer steps too: what
    tells a slow run from a stuck one (runPolicy.stallTimeout)."""

    time: Timestamp
    """When rank 0 last made progress (RFC 3339)."""
    phase: HeartbeatPhase
    """What it was doing then: Starting, LoadingModel, PreparingData, Training, Evaluating, Examining (the final evaluation and audits) or Saving (a checkpoint or the model)."""


class Progress(Section):
    """How far training has come."""

    epoch: int = Field(default=0, ge=0)
    """Current epoch (1-based once training started)."""
    epochs: int = Field(default=0, ge=0)
    """Epochs planned."""
    step: int = Field(default=0, ge=0)
    """Optimizer steps done."""
    total_steps: int = Field(default=0, ge=0)
    """Optimizer steps planned."""
    percent: int = Field(default=0, ge=0, le=100)
    """step / totalSteps as a whole percentage."""
    eta_seconds: int | None = Field(default=None, ge=0)
    """Estimated seconds left."""


class Diagnosis(Section):
    """The verdict on the training and validation curves."""

    verdict: Literal["Healthy", "Overfitting", "Underfitting", "Diverged", "Inconclusive"]
    """What the curves show."""
    evidence: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=32
    )
    """The observations behind the verdict, with numbers."""
    suggestion: Annotated[str, Field(max_length=2048)] = ""
    """What to try next."""


class DataValidationStatus(Section):
    """What the data checks found and did (the full report is in report.json)."""

    rows_in: int | None = Field(default=None, ge=0)
    """Rows that reached the quality rules; absent when the data failed before them."""
    rows_out: int | None = Field(default=None, ge=0)
    """Rows the quality rules kept for training and validation."""
    dropped: dict[Annotated[str, Field(max_length=128)], int] = Field(default_factory=dict)
    """Rows dropped per rule."""
    flagged: dict[Annotated[str, Field(max_length=128)], int] = Field(default_factory=dict)
    """Rows flagged (warn mode) per rule."""
    class_counts: dict[Annotated[str, Field(max_length=256)], int] = Field(default_factory=dict)
    """Training rows per class after validation and balancing."""
    added: dict[Annotated[str, Field(max_length=128)], int] = Field(default_factory=dict)
    """Training rows added, per origin: augmented, synthetic, oversampled."""
    imbalance_ratio: float | None = Field(default=None, ge=1)
    """Rows of the largest class over rows of the smallest, in the training rows as they came in."""
    recommendation: Annotated[str, Field(max_length=1024)] = ""
    """What to do about class imbalance, when the data needs it and data.balance sets nothing."""
    passed: bool = True
    """False when the data failed the job (a rule in fail mode, too many rows dropped, a missing column); the message says why."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """A one-line summary."""


class BiasMetric(Section):
    """One audited fairness metric against its threshold."""

    name: Annotated[str, Field(max_length=128)]
    """Metric name, e.g. demographicParityRatio."""
    attribute: Annotated[str, Field(max_length=256)]
    """The sensitive column it was computed over."""
    value: float | None = None
    """The measured value; absent when it could not be computed."""
    threshold: float | None = None
    """The limit from bias.thresholds; absent when the metric is only reported."""
    passed: bool | None = None
    """Whether the value is within the threshold; absent when not gated."""


class GroupResult(Section):
    """A sensitive group's headline numbers."""

    attribute: Annotated[str, Field(max_length=256)]
    """The sensitive column."""
    group: Annotated[str, Field(max_length=256)]
    """The group's value in that column."""
    count: int = Field(ge=0)
    """Audit rows in the group."""
    accuracy: float | None = None
    """Accuracy on the group's rows."""
    selection_rate: float | None = None
    """Share of the group's rows predicted as a positive label."""


class BiasAuditStatus(Section):
    """The fairness audit's verdict."""

    verdict: Literal["Passed", "Failed", "InsufficientData"]
    """Passed, Failed, or InsufficientData when groups were too small to judge."""
    worst_group: Annotated[str, Field(max_length=512)] = ""
    """The most disadvantaged group, as attribute=value."""
    metrics: list[BiasMetric] = Field(default_factory=list, max_length=64)
    """Each metric with its threshold."""
    groups: list[GroupResult] = Field(default_factory=list, max_length=64)
    """Per-group numbers (the largest groups when there are many)."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """A one-line summary."""


class Artifacts(Section):
    """Where the run's outputs are."""

    output_uri: Annotated[str, Field(max_length=2048)] = ""
    """The output directory."""
    model: Annotated[str, Field(max_length=2048)] = ""
    """The fine-tuned model (from_pretrained loads it); with training.lora, its adapter (PeftModel.from_pretrained loads it)."""
    merged_model: Annotated[str, Field(max_length=2048)] = ""
    """With output.mergeAdapter: the base model with the adapter merged in (from_pretrained loads it)."""
    report: Annotated[str, Field(max_length=2048)] = ""
    """report.json."""
    report_html: Annotated[str, Field(max_length=2048)] = ""
    """report.html."""
    last_checkpoint: Annotated[str, Field(max_length=2048)] = ""
    """The newest checkpoint (restarts resume from it)."""


class CostStatus(Section):
    """What the run has cost so far (from the trainer)."""

    gpu_hours: float = Field(ge=0)
    """GPUs held times hours, every start of the run included (0 on the CPU)."""
    amount: float | None = Field(default=None, ge=0)
    """gpuHours times runPolicy.pricePerGpuHour; absent without a price."""
    currency: Annotated[str, Field(pattern=CURRENCY_PATTERN)] | None = None
    """The currency of amount (runPolicy.currency)."""


class TrialStatus(Section):
    """One trial of a hyperparameter search."""

    number: int = Field(ge=0)
    """Trial number in the study."""
    name: DnsLabel
    """The child FineTuneJob."""
    state: Literal["Pending", "Running", "Complete", "Pruned", "Failed", "Stopped"]
    """Where the trial stands; Stopped: deleted unfinished because the search failed."""
    params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """The sampled values by field path."""
    objective: float | None = None
    """The trial's final objective value."""
    intermediate: dict[Annotated[str, Field(max_length=16)], float] = Field(default_factory=dict)
    """Objective values at each evaluation, keyed by step."""
    model: Annotated[str, Field(max_length=2048)] | None = None
    """The trial's fine-tuned model (its status.artifacts.model), once it has one."""


class BestTrial(Section):
    """The best trial so far."""

    number: int = Field(ge=0)
    """Trial number."""
    name: DnsLabel
    """The child FineTuneJob."""
    objective: float
    """Its objective value."""
    params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Its parameters."""


class WorkerFailure(Section):
    """The last worker failure the operator acted on: what tells a repeated failure from a new one."""

    reason: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9]*$")]
    """The cause, a condition reason such as OOMKilled or WorkerFailed."""
    restart: int = Field(ge=0)
    """The restart number of the worker group that failed (0: the first)."""
    step: int | None = Field(default=None, ge=0)
    """The last optimizer step the trainer reported before the failure."""
    exit_code: int | None = None
    """The trainer container's exit code, when it exited."""


class AppliedRuntime(Section):
    """The runtime a job was validated with, as it was then."""

    kind: Literal["FineTuneRuntime", "ClusterFineTuneRuntime"]
    """FineTuneRuntime (in the job's namespace) or ClusterFineTuneRuntime."""
    name: DnsSubdomain
    """Name of the runtime."""
    generation: int = Field(ge=0)
    """The runtime's .metadata.generation when the job was validated; a later edit of the runtime does not change this job."""
    kueue_local_queue: DnsLabel | None = None
    """The Kueue LocalQueue the worker Jobs are submitted to (the runtime's spec.queue.kueueLocalQueue then)."""


class TrainerReport(Section):
    """What the trainer's rank 0 reports: the status fields that come from training.

    The trainer writes them into its FineTuneJobReport, never into the FineTuneJob: the
    operator checks them against this model and copies them into the job's status."""

    progress: Progress | None = None
    """Training progress (from the trainer)."""
    heartbeat: Heartbeat | None = None
    """The trainer's last sign of progress and its phase."""
    metrics: dict[Annotated[str, Field(max_length=128)], float] = Field(default_factory=dict)
    """Latest validation metrics (from the trainer)."""
    metric_summary: Annotated[str, Field(max_length=128)] = ""
    """The primary metric as 'name=value', for kubectl get."""
    diagnosis: Diagnosis | None = None
    """Over/underfitting and divergence verdict (from the trainer)."""
    data_validation: DataValidationStatus | None = None
    """Data checks (from the trainer)."""
    bias_audit: BiasAuditStatus | None = None
    """Fairness audit (from the trainer)."""
    artifacts: Artifacts | None = None
    """Where the outputs are (from the trainer)."""
    cost: CostStatus | None = None
    """GPU-hours and their price so far (from the trainer)."""


class FineTuneJobStatus(TrainerReport):
    """The observed state; the operator writes it all (the trainer's fields it copies from
    the job's FineTuneJobReport)."""

    phase: Phase | None = None
    """Pending, Queued, Running, Succeeded, Failed or Suspended."""
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Validated, DataValidated, Running, Succeeded, Failed, Suspended, BiasAuditPassed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation this status describes."""
    workers: WorkerCounts | None = None
    """Worker pods by phase."""
    restarts: int = Field(default=0, ge=0)
    """Times the worker group was restarted from a checkpoint."""
    disruptions: int = Field(default=0, ge=0)
    """Of the restarts, those after a worker was evicted, preempted or drained away; they do not count against runPolicy.backoffLimit."""
    start_time: Timestamp | None = None
    """When the first worker Job started; runPolicy.activeDeadlineSeconds counts from it."""
    completion_time: Timestamp | None = None
    """When the job succeeded or failed."""
    last_failure: WorkerFailure | None = None
    """The last worker failure, kept across restarts (an OOM twice at the same step fails the job)."""
    runtime: AppliedRuntime | None = None
    """The runtime whose defaults and guardrails made the effective spec; absent when none applies."""
    effective_spec_hash: (
        Annotated[str, Field(max_length=71, pattern=r"^sha256:[0-9a-f]{64}$")] | None
    ) = None
    """sha256 of effectiveSpec's canonical JSON (sorted keys), as `kubetune validate --runtime` prints it."""
    effective_spec: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """The spec the job runs with: the runtime's defaults under the job's fields, every default filled in. Recorded once at validation; worker restarts are built from it, so a runtime edited later does not change a running job."""
    queue_position: int | None = Field(default=None, ge=1)
    """While Queued, the place in the queue (1 is next to start): the operator's queue (the runtime's maxConcurrentGpusPerNamespace), or the Kueue LocalQueue's (from Kueue's visibility API; absent where it is not served)."""
    trials: list[TrialStatus] = Field(default_factory=list, max_length=1000)
    """Search trials (parent jobs only)."""
    best_trial: BestTrial | None = None
    """The best trial (parent jobs only)."""


def readable_status(stored: object) -> tuple[FineTuneJobStatus, list[str]]:
    """A stored status as the model reads it, and the fields of it left unread.

    The status is the operator's own record, yet it may hold what this version does not
    know (an older operator's field, someone's `kubectl patch --subresource status`): a
    field the model does not know is left out wherever it is, and a field whose value does
    not validate is left out whole, so one bad field never hides the rest of the status."""
    data = dict(stored) if isinstance(stored, Mapping) else {}
    unread: list[str] = []
    while True:
        try:
            status = FineTuneJobStatus.model_validate(data, by_alias=True, by_name=False)
            return status, list(dict.fromkeys(unread))
        except ValidationError as error:
            paths = [_unread_path(found) for found in error.errors()]
        unread += [".".join(map(str, path)) for path in paths]
        trimmed = data
        for path in paths:
            trimmed = _without(trimmed, path)
        data = trimmed if trimmed != data else {}  # nothing found to leave out: read nothing


def _unread_path(error: Any) -> tuple[int | str, ...]:
    """An unknown field alone; a field with a bad value where it sits in the status."""
    location: tuple[int | str, ...] = tuple(error["loc"])
    return location if error["type"] == "extra_forbidden" else location[:1]


def _without(data: Mapping[str, Any], path: tuple[int | str, ...]) -> dict[str, Any]:
    """`data` without the field at `path` (keys, and positions in lists of objects)."""
    head, rest = str(path[0]), path[1:]
    inner = data.get(head)
    if rest and isinstance(inner, Mapping):
        return {**data, head: _without(inner, rest)}
    if rest[1:] and isinstance(inner, list) and _object_at(inner, rest[0]):
        items = list(inner)
        items[int(rest[0])] = _without(items[int(rest[0])], rest[1:])
        return {**data, head: items}
    return {key: value for key, value in data.items() if key != head}


def _object_at(items: list[Any], position: int | str) -> bool:
    return (
        isinstance(position, int)
        and 0 <= position < len(items)
        and isinstance(items[position], Mapping)
    )


OBJECT_CONFIG = ConfigDict(
    strict=True,
    extra="forbid",
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
)
"""The configuration of a whole API object (apiVersion, kind, metadata, spec, status)."""


class FineTuneJob(BaseModel):
    """A fine-tuning run: model, data, recipe, gates and resources, and what became of them."""

    model_config = OBJECT_CONFIG

    api_version: Literal["kubetune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    @model_validator(mode="after")
    def _trial_names_fit(self) -> Self:
        """A search names its trials NAME-trial-NNN, which must fit the name limit too."""
        longest = MAX_JOB_NAME_LENGTH - len(TRIAL_SUFFIX)
        if self.spec.search is not None and len(self.metadata.name) > longest:
            raise ValueError(
                f"metadata.name: a job with spec.search may have at most {longest} characters "
                f"(its trials are named NAME{TRIAL_SUFFIX}); got {len(self.metadata.name)}"
            )
        return self


REPORT_KIND = "FineTuneJobReport"
REPORT_PLURAL = "finetunejobreports"
REPORT_SHORT_NAMES = ("ftjreport",)


class FineTuneJobReport(BaseModel):
    """The trainer's half of a FineTuneJob's status, in an object of its own.

    A worker pod's ServiceAccount may patch only this object (of its own job): it cannot
    write the job's status, from which the operator rebuilds the workers, nor its spec.
    The operator creates it with the job's name, owned by the job, and copies what it
    reports into the job's status after checking it."""

    model_config = OBJECT_CONFIG

    api_version: Literal["kubetune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJobReport"]
    metadata: ObjectMeta
    report: TrainerReport | None = None
    """What the trainer reported last, field by field as in the job's status."""
