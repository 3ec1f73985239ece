"""A FineTuneJob's children as plain Kubernetes objects: pure functions, no API calls.

The handlers create what these functions return and nothing else, so everything a job
looks like on a cluster (names, labels, the `accelerate launch` command line, volumes,
security context, RBAC) is decided here and checked by unit tests against golden
manifests and the Kubernetes schemas. Only this module knows the derived names and the
rendezvous address of DESIGN.md.

Spec values never reach a shell: the container command is an argument list, and the
values that vary per pod (machine rank, rendezvous host) are `$(VAR)` references that the
kubelet expands from the container's own environment.

The operator image has no trainer dependencies, so the paths and variable names the
trainer reads (its `sources` and `reporting` modules) are repeated here as constants; the
unit tests check that both sides agree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from kubetune_operator.api.runtime import KUEUE_QUEUE_LABEL, Guardrails
from kubetune_operator.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    LABEL_COMPONENT,
    LABEL_JOB_NAME,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    REPORT_KIND,
    REPORT_PLURAL,
    FineTuneJob,
    FineTuneJobSpec,
    ResourcesSpec,
    RunPolicySpec,
)
from kubetune_trainer.config import TrainingConfig, parse_source

RESTART_ANNOTATION: Final = "kubetune.dev/restart"
"""On the Job: which group restart it runs (0 = first run); status is recomputed from it."""
COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"

CONTAINER_NAME: Final = "trainer"
CONFIG_DIR: Final = "/etc/kubetune"
CONFIG_FILE: Final = "config.json"
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIG_FILE}"
OUTPUT_DIR: Final = "/mnt/kubetune/output"
"""The pod-lifetime output volume, used when spec.output.uri is not a pvc:// uri."""
PVC_ROOT: Final = "/mnt/kubetune/pvc"
"""Each claim is mounted at PVC_ROOT/<claim> (kubetune_trainer.data.sources.PVC_ROOT)."""
SERVICE_ACCOUNT_DIR: Final = "/var/run/kubetune/serviceaccount"
"""The projected token, CA and namespace (KUBETUNE_SERVICE_ACCOUNT_DIR for the trainer)."""
TERMINATION_LOG: Final = "/dev/termination-log"
TOKEN_EXPIRATION_SECONDS: Final = 3600
RUN_AS_ID: Final = 10001
"""The trainer image's unprivileged user and group (see the Dockerfile)."""
MAX_NAME_LENGTH: Final = 63
DISRUPTION_RULE: Final = {
    "action": "FailJob",
    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
}
"""The Job's pod failure policy: a pod evicted, preempted or drained away fails the Job with
reason PodFailurePolicy and a message naming DisruptionTarget, which outlives the pod, so
the operator restarts the group without counting it against runPolicy.backoffLimit."""

REPORT_NAME_ENV: Final = "KUBETUNE_REPORT_NAME"
"""The FineTuneJobReport the trainer writes (kubetune_trainer.report.progress.REPORT_NAME_ENV)."""
MAX_GPU_HOURS_ENV: Final = "KUBETUNE_MAX_GPU_HOURS"
PRICE_PER_GPU_HOUR_ENV: Final = "KUBETUNE_PRICE_PER_GPU_HOUR"
CURRENCY_ENV: Final = "KUBETUNE_CURRENCY"
"""runPolicy's budget and price, as the trainer reads them (kubetune_trainer.cost)."""
NCCL_ENV: Final = (
    # NCCL's own warnings (and why a collective failed) reach the pod log; INFO is too loud.
    ("NCCL_DEBUG", "WARN"),
    # A failed or timed-out collective aborts the communicator and ends the process: the
    # pod fails and the operator restarts the group from its checkpoint, rather than every
    # rank hanging until the deadline.
    ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
)
"""Set on GPU workers only (CPU workers use gloo)."""

LAUNCH_COMMAND: Final = ("python", "-m", "kubetune_trainer.launch")
"""`accelerate launch` that passes the pod's SIGTERM on to the trainer (see that module)."""
SHUTDOWN_TIMEOUT_ENV: Final = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
"""How long torch's elastic agent lets its workers stop after SIGTERM before killing them."""
TRAINER_MODULE: Final = "kubetune_trainer"


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator's deployment decides for every job (not the job's own spec)."""

    trainer_image: str = "ghcr.io/kubetune/kubetune-trainer:0.1.0"
    image_pull_secrets: tuple[str, ...] = ()
    metrics_port: int = 9400
    rendezvous_port: int = 29500
    default_policy: Guardrails = field(default_factory=Guardrails)
    """What a job that no runtime applies to may ask for (the chart's defaultPolicy)."""


# Names: deterministic, so a restarted operator finds what it created before.


def config_map_name(job: str) -> str:
    """The ConfigMap holding the job's TrainingConfig JSON."""
    return f"{job}-config"


def trainer_account_name(job: str) -> str:
    """The ServiceAccount, Role and RoleBinding that let the trainer patch the job's report."""
    return f"{job}-trainer"


def report_name(job: str) -> str:
    """The FineTuneJobReport the trainer writes: the job's own name, in a kind of its own."""
    return job


def workers_name(job: str) -> str:
    """The headless Service and the Indexed batch Job of the workers."""
    return f"{job}-workers"


def rendezvous_host(job: str, namespace: str) -> str:
    """Rank 0's DNS name: the Indexed Job's pod 0 under the headless Service."""
    return f"{workers_name(job)}-0.{workers_name(job)}.{namespace}.svc"


def child_labels(job: str, component: str) -> dict[str, str]:
    """Labels on every child, so `kubectl get -l kubetune.dev/job-name=JOB` finds them all."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB_NAME: job, LABEL_COMPONENT: component}


def claim_volume_name(claim: str) -> str:
    """A pod volume name for a claim: a DNS label, unique per claim even for long claims.

    Claims that fit keep their name after 'pvc-'; longer ones are cut and get a hash under
    the prefix 'pvcx-', which no name of the first kind can have.
    """
    name = f"pvc-{claim}"
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(claim.encode()).hexdigest()[:8]
    return f"pvcx-{claim[:49]}-{digest}"


def owned_by(child: Mapping[str, Any], ftj: Mapping[str, Any]) -> bool:
    """Whether the job controls `child` (an ownerReference with the job's UID): an object
    that merely has a child's name is someone else's, never adopted, read or deleted."""
    uid = ftj.get("metadata", {}).get("uid")
    references = child.get("metadata", {}).get("ownerReferences") or []
    return uid is not None and any(
        ref.get("uid") == uid and ref.get("controller") is True for ref in references
    )


# The children, in creation order.


def build_children(
    job: FineTuneJob,
    namespace: str,
    settings: OperatorSettings,
    *,
    restart: int = 0,
    deadline_seconds: int | None = None,
    kueue_queue: str | None = None,
) -> list[dict[str, Any]]:
    """ConfigMap, FineTuneJobReport, ServiceAccount, Role, RoleBinding, Service and Job,
    in creation order.

    No ownerReferences: the handler adopts each child (kopf.adopt).
    """
    name = job.metadata.name
    return [
        build_config_map(job, namespace),
        build_report(name, namespace),
        build_service_account(name, namespace),
        build_role(name, namespace),
        build_role_binding(name, namespace),
        build_service(name, namespace, settings),
        build_job(
            job,
            namespace,
            settings,
            restart=restart,
            deadline_seconds=deadline_seconds,
            kueue_queue=kueue_queue,
        ),
    ]


def child_references(job: str, namespace: str) -> list[dict[str, Any]]:
    """Kind, name and namespace of every child, for deleting them (the Job last)."""
    kinds = [
        ("v1", "ConfigMap", config_map_name(job)),
        (API_VERSION, REPORT_KIND, report_name(job)),
        ("v1", "ServiceAccount", trainer_account_name(job)),
        ("rbac.authorization.k8s.io/v1", "Role", trainer_account_name(job)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", trainer_account_name(job)),
        ("v1", "Service", workers_name(job)),
        ("batch/v1", "Job", workers_name(job)),
    ]
    return [
        {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace}}
        for api, kind, name in kinds
    ]


def build_config_map(job: FineTuneJob, namespace: str) -> dict[str, Any]:
    """The trainer's part of the spec as JSON, mounted read-only into every worker.

    Immutable: the training fields of a FineTuneJob cannot change after creation (the CRD
    enforces it), and kubelets need not watch immutable ConfigMaps.
    """
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(name), namespace, child_labels(name, "config")),
        "immutable": True,
        "data": {CONFIG_FILE: training_config_json(job.spec.training_config())},
    }


def training_config_json(config: TrainingConfig) -> str:
    """The JSON the trainer reads with `--config` (camelCase, unset fields left out)."""
    return config.model_dump_json(exclude_none=True)


def build_report(job: str, namespace: str) -> dict[str, Any]:
    """The object the trainer reports through, empty until it does (the operator copies what
    it reports into the job's status)."""
    return {
        "apiVersion": API_VERSION,
        "kind": REPORT_KIND,
        "metadata": _metadata(report_name(job), namespace, child_labels(job, "report")),
    }


def build_service_account(job: str, namespace: str) -> dict[str, Any]:
    """The workers' identity; its token is mounted by a projected volume, not automatically."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(trainer_account_name(job), namespace, child_labels(job, "worker")),
        "automountServiceAccountToken": False,
    }


def build_role(job: str, namespace: str) -> dict[str, Any]:
    """Reading and patching this one job's report: all the trainer may do. Not the job's
    status: the operator rebuilds the workers from it."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(trainer_account_name(job), namespace, child_labels(job, "worker")),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [REPORT_PLURAL],
                "resourceNames": [report_name(job)],
                "verbs": ["get", "patch"],
            }
        ],
    }


def build_role_binding(job: str, namespace: str) -> dict[str, Any]:
    """Grants the Role to the workers' ServiceAccount."""
    account = trainer_account_name(job)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(account, namespace, child_labels(job, "worker")),
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
    }


def build_service(job: str, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Headless, so each worker pod gets a DNS name; rank 0's is the rendezvous host.

    Not-ready addresses are published: the pods have no readiness probe, and rank 0 must
    be resolvable as soon as it has an address, before the others time out.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(workers_name(job), namespace, child_labels(job, "worker")),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB_NAME: job, LABEL_COMPONENT: "worker"},
            "ports": _ports(settings),
        },
    }


def build_job(
    job: FineTuneJob,
    namespace: str,
    settings: OperatorSettings,
    *,
    restart: int = 0,
    deadline_seconds: int | None = None,
    kueue_queue: str | None = None,
) -> dict[str, Any]:
    """The Indexed batch Job of the workers, one pod per machine.

    backoffLimit is 0: distributed training is all-or-nothing, so the operator restarts
    the whole group itself (a new Job with the next `restart`). `deadline_seconds` is what
    is left of runPolicy.activeDeadlineSeconds. No ttlSecondsAfterFinished: the operator
    cleans up, since the Job's end is not the FineTuneJob's end. With `kueue_queue` (a
    LocalQueue) the Job is created suspended with Kueue's queue-name label: Kueue admits
    it by setting suspend to false.
    """
    if restart < 0:
        raise ValueError(f"restart must be 0 or more (got {restart})")
    if deadline_seconds is not None and deadline_seconds < 1:
        raise ValueError(f"deadline_seconds must be at least 1 (got {deadline_seconds})")
    name = job.metadata.name
    workers = job.spec.resources.workers
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": workers,
        "parallelism": workers,
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [DISRUPTION_RULE]},
        "suspend": job.spec.run_policy.suspend or kueue_queue is not None,
        "template": {
            "metadata": {
                "labels": child_labels(name, "worker"),
                "annotations": {RESTART_ANNOTATION: str(restart)},
            },
            "spec": _pod_spec(job, namespace, settings),
        },
    }
    if deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = deadline_seconds
    labels = child_labels(name, "worker")
    if kueue_queue is not None:
        labels[KUEUE_QUEUE_LABEL] = kueue_queue
    metadata = _metadata(workers_name(name), namespace, labels)
    metadata["annotations"] = {RESTART_ANNOTATION: str(restart)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def _metadata(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


def _ports(settings: OperatorSettings) -> list[dict[str, Any]]:
    return [
        {"name": "rendezvous", "port": settings.rendezvous_port, "protocol": "TCP"},
        {"name": "metrics", "port": settings.metrics_port, "protocol": "TCP"},
    ]


# The worker pod.


def _pod_spec(job: FineTuneJob, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    name = job.metadata.name
    resources = job.spec.resources
    pod: dict[str, Any] = {
        # With the Indexed Job, pod i gets the hostname <job>-workers-<i> in this subdomain.
        "subdomain": workers_name(name),
        "restartPolicy": "Never",
        # A stopped trainer saves a checkpoint at its next logged step before it exits.
        "terminationGracePeriodSeconds": job.spec.run_policy.termination_grace_period_seconds,
        "serviceAccountName": trainer_account_name(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_ID,
            "runAsGroup": RUN_AS_ID,
            "fsGroup": RUN_AS_ID,
            # Claims with many files are not re-chowned on every start.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_trainer_container(job, namespace, settings)],
        "volumes": _volumes(name, job.spec),
    }
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": secret} for secret in settings.image_pull_secrets]
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = [
            toleration.model_dump(exclude_none=True) for toleration in resources.tolerations
        ]
    if resources.priority_class_name is not None:
        pod["priorityClassName"] = resources.priority_class_name
    return pod


def _trainer_container(
    job: FineTuneJob, namespace: str, settings: OperatorSettings
) -> dict[str, Any]:
    resources = job.spec.resources
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": resources.image or settings.trainer_image,
        "command": list(LAUNCH_COMMAND),
        "args": launch_args(job.spec, job.metadata.name),
        "env": container_env(job, namespace, settings),
        "ports": [
            {"name": "metrics", "containerPort": settings.metrics_port, "protocol": "TCP"},
            {"name": "rendezvous", "containerPort": settings.rendezvous_port, "protocol": "TCP"},
        ],
        "resources": worker_resources(resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": _volume_mounts(job.spec),
        # accelerate launch turns every failed child into exit code 1; the trainer's own
        # exit code and reason reach the operator through the termination message.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources.image_pull_policy is not None:
        container["imagePullPolicy"] = resources.image_pull_policy
    credentials = job.spec.credentials
    if credentials.storage is not None:
        # Variables set in `env` win over these, so a Secret cannot redirect the trainer.
        container["envFrom"] = [{"secretRef": {"name": credentials.storage.name}}]
    return container


def processes_per_worker(resources: ResourcesSpec) -> int:
    """Trainer processes in each pod: one per GPU, one on a CPU worker."""
    return resources.processes_per_worker


def launch_args(spec: FineTuneJobSpec, job: str) -> list[str]:
    """`accelerate launch`'s arguments, then the trainer's; `$(VAR)`s come from the env."""
    workers = spec.resources.workers
    processes = workers * processes_per_worker(spec.resources)
    args = ["--num_machines", str(workers), "--num_processes", str(processes)]
    if processes > 1:
        # The torchrun launcher; on CPU workers ACCELERATE_USE_CPU makes it use gloo.
        args.append("--multi_gpu")
    if workers > 1:
        args += [
            "--machine_rank",
            "$(KUBETUNE_MACHINE_RANK)",
            "--main_process_ip",
            "$(KUBETUNE_RENDEZVOUS_HOST)",
            "--main_process_port",
            "$(KUBETUNE_RENDEZVOUS_PORT)",
        ]
    # The trainer sets precision and compilation itself, from the spec.
    args += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    args += ["-m", TRAINER_MODULE, "--config", CONFIG_PATH, "--job-name", job]
    if output_claim(spec) is None:
        args += ["--output", OUTPUT_DIR]
    return args


def container_env(
    job: FineTuneJob, namespace: str, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """The trainer's environment: the contract of DESIGN.md plus writable caches."""
    name = job.metadata.name
    resources = job.spec.resources
    env = [
        _value("KUBETUNE_CONFIG", CONFIG_PATH),
        _value("KUBETUNE_JOB_NAME", name),
        _value(REPORT_NAME_ENV, report_name(name)),
        _field("KUBETUNE_JOB_NAMESPACE", "metadata.namespace"),
        _field("KUBETUNE_MACHINE_RANK", f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
        _value("KUBETUNE_RENDEZVOUS_HOST", rendezvous_host(name, namespace)),
        _value("KUBETUNE_RENDEZVOUS_PORT", str(settings.rendezvous_port)),
        _value("KUBETUNE_METRICS_PORT", str(settings.metrics_port)),
        _value("KUBETUNE_PVC_ROOT", PVC_ROOT),
        _value("KUBETUNE_SERVICE_ACCOUNT_DIR", SERVICE_ACCOUNT_DIR),
        _value("KUBETUNE_TERMINATION_LOG", TERMINATION_LOG),
        # The root filesystem is read-only: every cache goes to the /tmp volume.
        _value("HOME", "/tmp"),
        _value("HF_HOME", "/tmp/huggingface"),
        _value("MPLCONFIGDIR", "/tmp/matplotlib"),
    ]
    if resources.gpus_per_worker == 0:
        env.append(_value("ACCELERATE_USE_CPU", "true"))
    else:
        env += [_value(variable, value) for variable, value in NCCL_ENV]
    env.append(_value("OMP_NUM_THREADS", str(threads_per_process(resources))))
    if resources.workers * processes_per_worker(resources) > 1:  # the elastic agent launches
        grace = job.spec.run_policy.termination_grace_period_seconds
        env.append(_value(SHUTDOWN_TIMEOUT_ENV, str(grace)))
    env += budget_env(job.spec.run_policy)
    hub_token = job.spec.credentials.hub_token
    if hub_token is not None:
        secret = {"name": hub_token.name, "key": hub_token.key}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": secret}})
    return env


def budget_env(run_policy: RunPolicySpec) -> list[dict[str, Any]]:
    """runPolicy.maxGpuHours and the price per GPU-hour for the trainer, those that are set."""
    env = []
    if run_policy.max_gpu_hours is not None:
        env.append(_value(MAX_GPU_HOURS_ENV, repr(run_policy.max_gpu_hours)))
    if run_policy.price_per_gpu_hour is not None:
        env.append(_value(PRICE_PER_GPU_HOUR_ENV, repr(run_policy.price_per_gpu_hour)))
        env.append(_value(CURRENCY_ENV, run_policy.currency))
    return env


def _value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def threads_per_process(resources: ResourcesSpec) -> int:
    """OMP_NUM_THREADS: the worker's whole CPUs shared by its processes, at least 1.

    Left unset, every process would start a thread per host core and they would fight
    over the few cores the pod was given.
    """
    share = quantity_value(cpu_request(resources)) / processes_per_worker(resources)
    return max(1, int(share))


def cpu_request(resources: ResourcesSpec) -> int | str:
    """resources.cpu, else 4 per GPU, 2 on a CPU worker."""
    if resources.cpu is not None:
        return resources.cpu
    return 4 * resources.gpus_per_worker if resources.gpus_per_worker else 2


def memory_request(resources: ResourcesSpec) -> int | str:
    """resources.memory, else 16Gi per GPU, 4Gi on a CPU worker."""
    if resources.memory is not None:
        return resources.memory
    return f"{16 * resources.gpus_per_worker}Gi" if resources.gpus_per_worker else "4Gi"


def worker_resources(resources: ResourcesSpec) -> dict[str, Any]:
    """Requests and limits. Memory is limited to its request (no overcommit of a node's
    memory); CPU is requested only, since a CPU limit throttles the data loaders."""
    memory = str(memory_request(resources))
    requests = {"cpu": str(cpu_request(resources)), "memory": memory}
    limits = {"memory": memory}
    if resources.gpus_per_worker:
        gpus = str(resources.gpus_per_worker)
        requests[resources.gpu_resource] = gpus
        limits[resources.gpu_resource] = gpus
    return {"requests": requests, "limits": limits}


_QUANTITY_NUMBER = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")
_QUANTITY_SUFFIXES: Final = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def quantity_value(quantity: int | str) -> Decimal:
    """The number a Kubernetes quantity stands for: 7500m is 7.5, 2Ki is 2048, 1e3 is 1000."""
    if isinstance(quantity, int):
        return Decimal(quantity)
    match = _QUANTITY_NUMBER.match(quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    number, suffix = match.groups()
    if suffix in _QUANTITY_SUFFIXES:
        return Decimal(number) * _QUANTITY_SUFFIXES[suffix]
    if re.fullmatch(r"[eE][+-]?[0-9]+", suffix):
        return Decimal(number + suffix)
    raise ValueError(f"{quantity!r} is not a Kubernetes quantity")


# Volumes: where the config, the caches, the output and the claims go.


def output_claim(spec: FineTuneJobSpec) -> str | None:
    """The claim that spec.output.uri names, or None when the output is not on a claim."""
    if spec.output.uri is None:
        return None
    source = parse_source(spec.output.uri)
    return source.authority if source.scheme == "pvc" else None


def input_uris(spec: FineTuneJobSpec) -> list[str]:
    """Every source the trainer reads: the model, the data, the tables, the audit data and
    the stereotype pairs."""
    data = spec.data
    sources = [data.train, data.validation]
    if data.augmentation is not None:
        sources += [data.augmentation.synonyms, *data.augmentation.synthetic_sources]
    if spec.bias is not None:
        sources.append(spec.bias.audit_data)
        pairs = spec.bias.stereotype_pairs
        if pairs is not None:
            sources += [pairs.pairs, pairs.templates, pairs.terms]
    return [spec.model.source, *(source.source for source in sources if source is not None)]


def mounted_claims(spec: FineTuneJobSpec) -> dict[str, bool]:
    """Each claim the pods mount, sorted, with whether it is writable (the output's is)."""
    claims = {
        source.authority for source in map(parse_source, input_uris(spec)) if source.scheme == "pvc"
    }
    output = output_claim(spec)
    if output is not None:
        claims.add(output)
    return {claim: claim == output for claim in sorted(claims)}


def _volumes(job: str, spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {
                "name": config_map_name(job),
                "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}],
            },
        },
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.resources.shared_memory)},
        },
    ]
    if output_claim(spec) is None:
        volumes.append({"name": "output", "emptyDir": {}})
    for claim, writable in mounted_claims(spec).items():
        claim_source: dict[str, Any] = {"claimName": claim}
        if not writable:
            claim_source["readOnly"] = True
        volumes.append({"name": claim_volume_name(claim), "persistentVolumeClaim": claim_source})
    volumes.append(_service_account_volume())
    return volumes


def _service_account_volume() -> dict[str, Any]:
    """What the automatic token mount would give, with a bounded token lifetime."""
    namespace_item = {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
    return {
        "name": "service-account",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "path": "token",
                        "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                    }
                },
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {"downwardAPI": {"items": [namespace_item]}},
            ]
        },
    }


def _volume_mounts(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if output_claim(spec) is None:
        mounts.append({"name": "output", "mountPath": OUTPUT_DIR})
    for claim, writable in mounted_claims(spec).items():
        mount: dict[str, Any] = {
            "name": claim_volume_name(claim),
            "mountPath": f"{PVC_ROOT}/{claim}",
        }
        if not writable:
            mount["readOnly"] = True
        mounts.append(mount)
    mounts.append({"name": "service-account", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True})
    return mounts
