"""Runtimes: merge order, every guardrail with its exact message, hashing, selection, and
`kubetune validate --runtime`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kubetune_operator import runtimes
from kubetune_operator.api.manifests import check_document
from kubetune_operator.api.runtime import ClusterFineTuneRuntime, FineTuneRuntime
from kubetune_operator.api.v1alpha1 import FineTuneJob
from kubetune_operator.cli.app import app
from tests.conftest import REPO, load_example

A100 = "ClusterFineTuneRuntime a100"


def a100() -> dict[str, Any]:
    return copy.deepcopy(load_example("runtimes/a100.yaml"))


def user_job() -> dict[str, Any]:
    return copy.deepcopy(load_example("runtimes/job.yaml"))


def effective_job(job: dict[str, Any], runtime: dict[str, Any] | None) -> FineTuneJob:
    checked = check_document(runtimes.effective_manifest(job, runtime), "job.yaml")
    assert checked.job is not None, [str(p) for p in checked.problems]
    return checked.job


def violations(job: dict[str, Any], runtime: dict[str, Any]) -> list[str]:
    model = ClusterFineTuneRuntime.model_validate(runtime, by_name=False)
    return [v.message for v in runtimes.check_guardrails(effective_job(job, runtime), model)]


# --- merge order ----------------------------------------------------------------------


def test_runtime_defaults_fill_what_the_job_leaves_out() -> None:
    spec = runtimes.effective_spec(user_job(), a100())
    assert spec["resources"]["gpusPerWorker"] == 8
    assert spec["resources"]["image"] == "registry.example/ml/kubetune-trainer:0.1.0"
    assert spec["training"] == {"precision": "bf16"}
    assert spec["bias"]["onFailure"] == "fail"
    assert spec["model"]["source"] == "hf://distilbert/distilbert-base-uncased"
    # 8 GPUs fit 200 GPU-hours for 90000 s, but maxActiveDeadlineSeconds is shorter; the
    # GPU-hours become the budget the trainer keeps.
    assert spec["runPolicy"] == {"activeDeadlineSeconds": 86400, "maxGpuHours": 200}


def test_the_jobs_own_fields_win_field_by_field_and_lists_are_replaced() -> None:
    job = user_job()
    job["spec"]["resources"] = {
        "gpusPerWorker": 4,
        "tolerations": [{"key": "team", "operator": "Exists"}],
    }
    job["spec"]["bias"] = {"thresholds": {"accuracyDifference": 0.1}, "onFailure": None}
    spec = runtimes.effective_spec(job, a100())
    assert spec["resources"]["gpusPerWorker"] == 4
    assert spec["resources"]["workers"] == 1
    assert spec["resources"]["tolerations"] == [{"key": "team", "operator": "Exists"}]
    assert spec["bias"]["thresholds"] == {"demographicParityRatio": 0.8, "accuracyDifference": 0.1}
    assert spec["bias"]["onFailure"] == "fail"  # a null is unset, as the API server prunes it


def test_the_merge_leaves_its_inputs_alone() -> None:
    job, runtime = user_job(), a100()
    before = (copy.deepcopy(job), copy.deepcopy(runtime))
    runtimes.effective_spec(job, runtime)["resources"]["nodeSelector"]["x"] = "y"
    assert (job, runtime) == before


def test_a_gpu_job_without_deadline_gets_the_longest_one_its_gpu_hours_allow() -> None:
    runtime = a100()
    del runtime["spec"]["guardrails"]["maxActiveDeadlineSeconds"]
    job = user_job()
    job["spec"]["resources"] = {"workers": 2}
    spec = runtimes.effective_spec(job, runtime)
    assert spec["runPolicy"]["activeDeadlineSeconds"] == 45000  # 200 h * 3600 / 16 GPUs
    assert violations(job, runtime) == []


def test_a_jobs_own_smaller_budget_stays_and_a_larger_one_is_refused() -> None:
    job = user_job()
    job["spec"]["runPolicy"] = {"maxGpuHours": 50}
    assert runtimes.effective_spec(job, a100())["runPolicy"]["maxGpuHours"] == 50
    assert violations(job, a100()) == []
    job["spec"]["runPolicy"] = {"maxGpuHours": 500}
    assert violations(job, a100()) == [
        f"spec.runPolicy.maxGpuHours: 500 exceeds the runtime's maxGpuHours 200 ({A100})"
    ]


def test_a_cpu_job_gets_no_gpu_budget() -> None:
    runtime = a100()
    del runtime["spec"]["defaults"]["resources"]["gpusPerWorker"]
    job = with_resources(gpusPerWorker=0)
    assert "maxGpuHours" not in runtimes.effective_spec(job, runtime).get("runPolicy", {})


def test_no_runtime_means_the_jobs_spec_as_it_is() -> None:
    job = user_job()
    assert runtimes.effective_spec(job, None) == job["spec"]


def test_guardrails_win_over_defaults_and_job_values() -> None:
    runtime = a100()
    runtime["spec"]["defaults"]["resources"]["workers"] = 4  # a default beyond the limit
    message = (
        "spec.resources.workers: 4 exceeds the runtime's maxWorkers 2 (ClusterFineTuneRuntime a100)"
    )
    assert message in violations(user_job(), runtime)
    job = user_job()
    job["spec"]["resources"] = {"workers": 3}  # the job overrides the default, still too many
    assert violations(job, a100())[0] == message.replace(" 4 ", " 3 ")


def test_runtime_ref_is_dropped_from_the_training_config() -> None:
    job = effective_job(user_job(), a100())
    assert job.spec.runtime_ref is not None
    assert job.spec.runtime_ref.kind == "ClusterFineTuneRuntime"
    assert "runtimeRef" not in job.spec.training_config().model_dump()


# --- every guardrail, once ------------------------------------------------------------


def with_resources(**resources: Any) -> dict[str, Any]:
    job = user_job()
    job["spec"]["resources"] = resources
    return job


def with_credentials(**credentials: Any) -> dict[str, Any]:
    job = user_job()
    job["spec"]["credentials"] = credentials
    return job


CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "allowedImages",
        with_resources(image="docker.io/someone/trainer:latest"),
        "spec.resources.image: docker.io/someone/trainer:latest matches none of the runtime's "
        "allowedImages registry.example/ml/kubetune-trainer:*",
    ),
    (
        "maxWorkers",
        with_resources(workers=16, gpusPerWorker=1),
        "spec.resources.workers: 16 exceeds the runtime's maxWorkers 2",
    ),
    (
        "maxGpusPerWorker",
        with_resources(gpusPerWorker=16),
        "spec.resources.gpusPerWorker: 16 exceeds the runtime's maxGpusPerWorker 8",
    ),
    (
        "allowedGpuNodeSelectors",
        with_resources(nodeSelector={"nvidia.com/gpu.product": "Tesla-T4"}),
        "spec.resources.nodeSelector: {nvidia.com/gpu.product: Tesla-T4} does not select GPU "
        "nodes the runtime allows: include {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}",
    ),
    (
        "allowedTolerations",
        with_resources(tolerations=[{"key": "dedicated", "value": "prod", "effect": "NoExecute"}]),
        "spec.resources.tolerations[0]: dedicated=prod:NoExecute (Equal) is not among the "
        "runtime's allowedTolerations",
    ),
    (
        "allowedNodeLabels",
        with_resources(
            nodeSelector={
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "node-role.kubernetes.io/control-plane": "",
            }
        ),
        "spec.resources.nodeSelector: node-role.kubernetes.io/control-plane= matches none of "
        "the runtime's allowedNodeLabels nvidia.com/gpu.product=*",
    ),
    (
        "allowedPriorityClasses",
        with_resources(priorityClassName="urgent"),
        "spec.resources.priorityClassName: urgent matches none of the runtime's "
        "allowedPriorityClasses ml-*",
    ),
    (
        "system priority classes",
        with_resources(priorityClassName="system-node-critical"),
        "spec.resources.priorityClassName: system-node-critical is reserved for the cluster's "
        "own pods: only an entry of the runtime's allowedPriorityClasses that starts with "
        "system- allows it",
    ),
    (
        "allowedSecrets",
        with_credentials(storage={"name": "aws-admin"}),
        "spec.credentials.storage.name: Secret aws-admin matches none of the runtime's "
        "allowedSecrets hf-token",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_each_guardrail_names_field_value_and_limit(case: tuple[str, dict[str, Any], str]) -> None:
    _, job, message = case
    assert violations(job, a100()) == [f"{message} ({A100})"]


@pytest.mark.parametrize(
    ("allowed", "refused"),
    [
        (None, True),  # left out: any class but the system ones
        (["*"], True),  # a catch-all is not an explicit system- entry
        (["system-cluster-critical"], True),
        (["system-node-critical"], False),
        (["system-*"], False),
    ],
)
def test_a_system_priority_class_needs_an_entry_that_names_it(
    allowed: list[str] | None, refused: bool
) -> None:
    runtime = a100()
    runtime["spec"]["guardrails"]["allowedPriorityClasses"] = allowed
    found = violations(with_resources(priorityClassName="system-node-critical"), runtime)
    assert bool(found) is refused


def test_empty_lists_allow_no_node_label_and_no_secret() -> None:
    runtime = a100()
    del runtime["spec"]["guardrails"]["allowedGpuNodeSelectors"]
    runtime["spec"]["guardrails"].update(allowedNodeLabels=[], allowedSecrets=[])
    job = with_credentials(hubToken={"name": "hf-token", "key": "token"})
    assert violations(job, runtime) == [
        "spec.resources.nodeSelector: nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB is not "
        f"allowed: the runtime's allowedNodeLabels is empty ({A100})",
        "spec.credentials.hubToken.name: Secret hf-token is not allowed: the runtime's "
        f"allowedSecrets is empty ({A100})",
    ]


def test_max_gpus_per_job() -> None:
    runtime = a100()
    runtime["spec"]["guardrails"]["maxGpusPerJob"] = 12
    assert violations(with_resources(workers=2), runtime) == [
        "spec.resources: 2 workers x 8 GPUs = 16 GPUs exceeds the runtime's maxGpusPerJob 12 "
        f"({A100})"
    ]


def test_allowed_model_sources() -> None:
    job = user_job()
    job["spec"]["model"]["source"] = "pvc://scratch/bert"
    (found,) = runtimes.check_guardrails(
        effective_job(job, a100()), ClusterFineTuneRuntime.model_validate(a100(), by_name=False)
    )
    assert (found.field, found.value, found.limit) == (
        "spec.model.source",
        "pvc://scratch/bert",
        ["hf://", "pvc://models/"],
    )
    assert found.message == (
        "spec.model.source: pvc://scratch/bert starts with none of the runtime's "
        f"allowedModelSources hf://, pvc://models/ ({A100})"
    )


def test_max_active_deadline_seconds() -> None:
    job = user_job()
    job["spec"]["runPolicy"] = {"activeDeadlineSeconds": 90000}
    assert violations(job, a100()) == [
        "spec.runPolicy.activeDeadlineSeconds: 90000 exceeds the runtime's "
        f"maxActiveDeadlineSeconds 86400 ({A100})"
    ]


def test_max_gpu_hours() -> None:
    job = with_resources(workers=2)
    job["spec"]["runPolicy"] = {"activeDeadlineSeconds": 86400}
    assert violations(job, a100()) == [
        "spec.runPolicy.activeDeadlineSeconds: 16 GPUs x 86400 s = 384 GPU-hours exceeds the "
        f"runtime's maxGpuHours 200 ({A100})"
    ]


def test_a_gpu_job_that_gets_no_deadline_is_refused_under_a_gpu_hour_budget() -> None:
    runtime = a100()
    runtime["spec"]["guardrails"] = {"maxGpuHours": 200}
    model = ClusterFineTuneRuntime.model_validate(runtime, by_name=False)
    job = effective_job(user_job(), None)  # checked without the merge: no deadline filled in
    assert [v.message for v in runtimes.check_guardrails(job, model)] == [
        "spec.runPolicy.activeDeadlineSeconds: must be set: the runtime's maxGpuHours 200 "
        f"bounds GPUs x deadline ({A100})"
    ]


def test_require_bias_audit_and_required_labels() -> None:
    runtime = a100()
    del runtime["spec"]["defaults"]["bias"]
    job = user_job()
    del job["metadata"]["labels"]
    assert violations(job, runtime) == [
        f"spec.bias: must be set: the runtime requires a bias audit (requireBiasAudit) ({A100})",
        f"metadata.labels.cost-center: is required by the runtime (requiredLabels) ({A100})",
    ]


def test_sharding_guardrail_requires_or_forbids_fsdp() -> None:
    runtime = a100()
    job = user_job()
    assert violations(job, runtime) == []  # allowed: either
    runtime["spec"]["guardrails"]["sharding"] = "required"
    assert violations(job, runtime) == [
        "spec.training.sharding: none is not fsdp: the runtime requires sharded training "
        f"(sharding: required) ({A100})"
    ]
    job["spec"]["training"] = {"sharding": "fsdp"}
    assert violations(job, runtime) == []
    runtime["spec"]["guardrails"]["sharding"] = "forbidden"
    assert violations(job, runtime) == [
        f"spec.training.sharding: fsdp is forbidden by the runtime (sharding: forbidden) ({A100})"
    ]


def test_a_runtime_that_requires_sharding_need_not_default_it() -> None:
    runtime = a100()
    runtime["spec"]["guardrails"]["sharding"] = "required"
    assert runtimes.runtime_problems(ClusterFineTuneRuntime.model_validate(runtime)) == []
    runtime["spec"]["defaults"]["training"]["sharding"] = "none"
    model = ClusterFineTuneRuntime.model_validate(runtime, by_name=False)
    assert [v.field for v in runtimes.runtime_problems(model)] == [
        "spec.defaults.training.sharding"
    ]


def test_sharding_on_one_process_is_invalid_naming_the_field() -> None:
    job = user_job()
    job["spec"]["training"] = {"sharding": "fsdp"}
    job["spec"]["resources"] = {"workers": 1, "gpusPerWorker": 1}
    problems = [str(p) for p in check_document(job, "job.yaml").problems]
    assert problems == [
        "spec: training.sharding: fsdp needs two or more trainer processes, and "
        "resources.workers x gpusPerWorker gives 1; raise resources.workers or "
        "resources.gpusPerWorker, or set training.sharding: none"
    ]
    for resources in ({"workers": 2, "gpusPerWorker": 0}, {"workers": 1, "gpusPerWorker": 2}):
        job["spec"]["resources"] = resources
        assert check_document(job, "job.yaml").problems == []


def test_a_job_without_an_image_is_refused_when_images_are_restricted() -> None:
    runtime = a100()
    del runtime["spec"]["defaults"]["resources"]["image"]
    assert violations(user_job(), runtime) == [
        "spec.resources.image: must be set: the runtime allows only images matching "
        f"registry.example/ml/kubetune-trainer:* ({A100})"
    ]


def test_a_runtime_whose_defaults_break_its_own_guardrails() -> None:
    runtime = a100()
    runtime["spec"]["defaults"]["resources"].update(workers=3, image="quay.io/x/y:1")
    model = ClusterFineTuneRuntime.model_validate(runtime, by_name=False)
    assert [v.message for v in runtimes.runtime_problems(model)] == [
        "spec.defaults.resources.image: quay.io/x/y:1 matches none of the runtime's "
        f"allowedImages registry.example/ml/kubetune-trainer:* ({A100})",
        f"spec.defaults.resources.workers: 3 exceeds the runtime's maxWorkers 2 ({A100})",
        "spec.defaults.resources: 3 workers x 8 GPUs = 24 GPUs exceeds the runtime's "
        f"maxGpusPerJob 16 ({A100})",
    ]
    assert runtimes.runtime_problems(ClusterFineTuneRuntime.model_validate(a100())) == []


# --- hashing and selection ------------------------------------------------------------


def test_spec_hash_is_stable_and_ignores_key_order() -> None:
    spec = runtimes.effective_spec(user_job(), a100())
    reordered = dict(reversed(list(spec.items())))
    reordered["resources"] = dict(reversed(list(spec["resources"].items())))
    assert runtimes.spec_hash(spec) == runtimes.spec_hash(reordered)
    assert runtimes.spec_hash({"a": 1}) == (
        "sha256:015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
    )
    spec["resources"]["workers"] = 2
    assert runtimes.spec_hash(spec) != runtimes.spec_hash(reordered)


def runtime_doc(kind: str, name: str, default: bool = False) -> dict[str, Any]:
    labels = {"kubetune.dev/default-runtime": "true"} if default else {}
    return {"kind": kind, "metadata": {"name": name, "labels": labels}}


def job_with_ref(ref: dict[str, str] | None) -> FineTuneJob:
    job = user_job()
    job["spec"].pop("runtimeRef")
    if ref is not None:
        job["spec"]["runtimeRef"] = ref
    return FineTuneJob.model_validate(job, by_name=False)


NAMESPACED = [
    runtime_doc("FineTuneRuntime", "team"),
    runtime_doc("FineTuneRuntime", "ns-default", True),
]
CLUSTER = [
    runtime_doc("ClusterFineTuneRuntime", "a100"),
    runtime_doc("ClusterFineTuneRuntime", "small-cpu", True),
]


def picked(job: FineTuneJob, namespaced: list[Any], cluster: list[Any]) -> str | None:
    runtime = runtimes.pick_runtime(job, namespaced, cluster)
    return None if runtime is None else runtime["metadata"]["name"]


def test_pick_runtime_follows_ref_then_namespace_default_then_cluster_default() -> None:
    assert picked(job_with_ref({"name": "a100"}), NAMESPACED, CLUSTER) == "a100"
    assert (
        picked(job_with_ref({"kind": "FineTuneRuntime", "name": "team"}), NAMESPACED, CLUSTER)
        == "team"
    )
    assert picked(job_with_ref(None), NAMESPACED, CLUSTER) == "ns-default"
    assert picked(job_with_ref(None), NAMESPACED[:1], CLUSTER) == "small-cpu"
    assert picked(job_with_ref(None), NAMESPACED[:1], CLUSTER[:1]) is None


def test_pick_runtime_errors() -> None:
    with pytest.raises(
        runtimes.RuntimeSelectionError,
        match=r"spec.runtimeRef: FineTuneRuntime 'a100' does not exist \(known: ns-default, team\)",
    ):
        runtimes.pick_runtime(
            job_with_ref({"kind": "FineTuneRuntime", "name": "a100"}), NAMESPACED, CLUSTER
        )
    two = [*CLUSTER, runtime_doc("ClusterFineTuneRuntime", "other", True)]
    with pytest.raises(
        runtimes.RuntimeSelectionError,
        match=r"2 ClusterFineTuneRuntimes are labelled kubetune.dev/default-runtime=true "
        r"\(other, small-cpu\)",
    ):
        runtimes.pick_runtime(job_with_ref(None), [], two)


# --- the runtime documents themselves ---------------------------------------------------


def test_only_a_cluster_runtime_limits_its_namespaces() -> None:
    namespaced = a100()
    namespaced.update(kind="FineTuneRuntime", metadata={"name": "team", "namespace": "ml"})
    assert [str(p) for p in check_document(namespaced, "team.yaml").problems] == [
        "spec.allowedNamespaces: unknown field; allowed here: defaults, guardrails, queue"
    ]


def test_runtime_documents_are_checked() -> None:
    bad = a100()
    bad["spec"]["guardrails"].update(maxWorkers=0, maxGpusPerWorker=8, maxGpusPerJob=4)
    bad["spec"]["defaults"]["training"]["precison"] = "bf16"
    bad["metadata"]["namespace"] = "team"
    problems = [str(p) for p in check_document(bad, "a100.yaml").problems]
    assert problems == [
        "spec.defaults.training.precison: unknown field; did you mean precision?",
        "spec.guardrails.maxWorkers: must be >= 1 (got 0)",
    ]
    bad["spec"]["guardrails"]["maxWorkers"] = 1
    del bad["spec"]["defaults"]["training"]["precison"]
    assert [str(p) for p in check_document(bad, "a100.yaml").problems] == [
        "spec.guardrails: maxGpusPerWorker (8) exceeds maxGpusPerJob (4): no worker could use it"
    ]
    del bad["spec"]["guardrails"]["maxGpusPerJob"]
    assert [str(p) for p in check_document(bad, "a100.yaml").problems] == [
        "metadata.namespace: a ClusterFineTuneRuntime is cluster-scoped; remove it"
    ]
    assert [str(p) for p in check_document({**a100(), "kind": []}, "x.yaml").problems] == [
        "kind: must be FineTuneJob"
    ]
    namespaced = {**a100(), "kind": "FineTuneRuntime"}
    del namespaced["spec"]["allowedNamespaces"]  # a FineTuneRuntime serves its own namespace
    assert isinstance(check_document(namespaced, "x.yaml").runtime, FineTuneRuntime)


# --- kubetune validate --runtime --------------------------------------------------------

runner = CliRunner()
RUNTIMES = REPO / "examples/runtimes"


def write(tmp_path: Path, name: str, document: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return str(path)


def test_validate_the_runtime_examples() -> None:
    result = runner.invoke(
        app, ["validate", str(RUNTIMES / "small-cpu.yaml"), str(RUNTIMES / "a100.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "ClusterFineTuneRuntime small-cpu is valid" in result.output
    result = runner.invoke(
        app, ["validate", str(RUNTIMES / "job.yaml"), "--runtime", str(RUNTIMES / "a100.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "FineTuneJob support-intent is valid with ClusterFineTuneRuntime a100" in result.output


def test_validate_prints_each_violation_and_exits_1(tmp_path: Path) -> None:
    job = with_resources(workers=16, gpusPerWorker=16)
    del job["metadata"]["labels"]
    result = runner.invoke(
        app,
        ["validate", write(tmp_path, "job.yaml", job), "--runtime", str(RUNTIMES / "a100.yaml")],
    )
    assert result.exit_code == 1
    assert "4 guardrail violations" in result.output
    for line in (
        f"spec.resources.workers: 16 exceeds the runtime's maxWorkers 2 ({A100})",
        f"spec.resources.gpusPerWorker: 16 exceeds the runtime's maxGpusPerWorker 8 ({A100})",
        "spec.resources: 16 workers x 16 GPUs = 256 GPUs exceeds the runtime's maxGpusPerJob 16 "
        f"({A100})",
        f"metadata.labels.cost-center: is required by the runtime (requiredLabels) ({A100})",
    ):
        assert line in result.output
    assert "Traceback" not in result.output


def test_validate_with_a_runtime_the_job_does_not_name(tmp_path: Path) -> None:
    job = user_job()
    job["spec"]["runtimeRef"]["name"] = "h100"
    result = runner.invoke(
        app,
        ["validate", write(tmp_path, "job.yaml", job), "--runtime", str(RUNTIMES / "a100.yaml")],
    )
    assert result.exit_code == 1
    assert (
        "spec.runtimeRef: ClusterFineTuneRuntime 'h100' does not exist (known: a100)"
        in result.output
    )


def test_validate_reports_a_broken_effective_spec_and_a_broken_runtime(tmp_path: Path) -> None:
    runtime = a100()
    runtime["spec"]["defaults"]["training"]["warmupRatio"] = 0.1
    job = user_job()
    job["spec"]["training"] = {"warmupSteps": 10}
    result = runner.invoke(
        app,
        [
            "validate",
            write(tmp_path, "job.yaml", job),
            "--runtime",
            write(tmp_path, "rt.yaml", runtime),
        ],
    )
    assert result.exit_code == 1
    assert (
        "spec.training.warmupSteps: set warmupRatio or warmupSteps, not both (with a100's defaults)"
        in result.output
    )
    runtime["spec"]["defaults"]["resources"]["workers"] = 5
    result = runner.invoke(
        app,
        ["validate", str(RUNTIMES / "job.yaml"), "--runtime", write(tmp_path, "rt.yaml", runtime)],
    )
    assert result.exit_code == 1
    assert (
        f"spec.defaults.resources.workers: 5 exceeds the runtime's maxWorkers 2 ({A100})"
        in result.output
    )
    result = runner.invoke(
        app,
        [
            "validate",
            str(RUNTIMES / "job.yaml"),
            "--runtime",
            str(REPO / "examples/sentiment/job.yaml"),
        ],
    )
    assert result.exit_code == 1
    assert "holds no runtime" in result.output
