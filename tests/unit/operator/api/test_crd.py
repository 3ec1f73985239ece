"""The generated CRD: current, structural, a valid CRD object, and in agreement with the models.

jsonschema checks the examples against the OpenAPI schema and cel-python evaluates the
CEL rules the way the API server would (with defaults applied), so a rule that is wrong
or that disagrees with the pydantic validators fails here rather than on a cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import kubernetes_validate
import pytest
from pydantic import BaseModel

from kubetune_operator.api import crdgen
from kubetune_operator.api.manifests import check_document
from kubetune_operator.api.v1alpha1 import FineTuneJob
from tests.conftest import EXAMPLE_MANIFESTS, REPO, load_example
from tests.kube.admission import apply_defaults
from tests.kube.admission import failed_rules as rules_failing

Schema = dict[str, Any]
SCHEMA: Schema = crdgen.finetunejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_match_the_models() -> None:
    assert crdgen.stale_crds(REPO) == [], "run `kubetune crd` and commit the result"
    names = [
        "finetunejobs.kubetune.dev.yaml",
        "finetuneruntimes.kubetune.dev.yaml",
        "clusterfinetuneruntimes.kubetune.dev.yaml",
        "finetunejobreports.kubetune.dev.yaml",
    ]
    assert {p.relative_to(REPO).as_posix() for p in crdgen.crd_paths(REPO)} == {
        f"{folder}/{name}" for folder in ("crds", "charts/kubetune/crds") for name in names
    }


def test_crd_is_a_valid_apiextensions_v1_object() -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(crdgen.finetunejob_crd(), version, strict=True)
    kubernetes_validate.validate(crdgen.report_crd(), version, strict=True)


def walk(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    for path, node in walk(SCHEMA):
        assert not {"$ref", "allOf", "oneOf", "not", "nullable", "title"} & node.keys(), path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") in (
                "object",
                "array",
                "string",
                "integer",
                "number",
                "boolean",
            ), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, path


def test_every_spec_field_has_a_description() -> None:
    missing = [
        path
        for path, node in walk(SCHEMA["properties"]["spec"])
        if path and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert missing == []


def test_printer_columns_and_names() -> None:
    crd = crdgen.finetunejob_crd()
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "finetunejobs.kubetune.dev"
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Progress"] == ".status.progress.percent"
    assert columns["Metric"] == ".status.metricSummary"
    assert columns["Bias"] == ".status.biasAudit.verdict"
    assert columns["Age"] == ".metadata.creationTimestamp"
    for column in version["additionalPrinterColumns"]:
        assert_json_path_exists(column["jsonPath"])


def assert_json_path_exists(json_path: str) -> None:
    node = SCHEMA
    for part in json_path.strip(".").split("."):
        if part in ("metadata",):
            return
        node = node["properties"][part]


@pytest.mark.parametrize("path", EXAMPLE_MANIFESTS, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_schema(path: Any) -> None:
    document = load_example(path.relative_to(REPO / "examples").as_posix())
    jsonschema.Draft4Validator(SCHEMA).validate(document)


def test_crd_schema_rejects_what_the_models_reject(sentiment: dict[str, Any]) -> None:
    sentiment["spec"]["training"]["scheduler"] = "cosin"
    with pytest.raises(jsonschema.ValidationError, match="'cosin' is not one of"):
        jsonschema.Draft4Validator(SCHEMA).validate(sentiment)
    sentiment["spec"]["training"]["scheduler"] = "cosine"
    sentiment["spec"]["training"]["learningRate"] = 0
    with pytest.raises(jsonschema.ValidationError, match="less than or equal to the minimum"):
        jsonschema.Draft4Validator(SCHEMA).validate(sentiment)


@pytest.mark.parametrize("name", ["memory", "cpu", "hugepages-2Mi", "gpu"])
def test_crd_schema_refuses_a_gpu_resource_without_a_domain(
    sentiment: dict[str, Any], name: str
) -> None:
    sentiment["spec"]["resources"]["gpuResource"] = name
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.Draft4Validator(SCHEMA).validate(sentiment)
    sentiment["spec"]["resources"]["gpuResource"] = "amd.com/gpu"
    jsonschema.Draft4Validator(SCHEMA).validate(sentiment)


# --- CEL rules, evaluated as the API server does (tests/kube/admission.py) ---------------


def failed_rules(new: Any, old: Any = None, schema: Schema = SCHEMA) -> list[str]:
    """Messages of the FineTuneJob CRD's rules that fail for `new` (an update from `old`)."""
    return rules_failing(new, old, schema)


def defaulted(manifest: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server stores it."""
    stored: dict[str, Any] = apply_defaults(copy.deepcopy(manifest), SCHEMA)
    return stored


@pytest.mark.parametrize("path", EXAMPLE_MANIFESTS, ids=lambda p: p.name)
def test_crd_defaults_equal_the_model_defaults(path: Any) -> None:
    manifest = load_example(path.relative_to(REPO / "examples").as_posix())
    from_models = FineTuneJob.model_validate(manifest, by_name=False)
    from_server = FineTuneJob.model_validate(defaulted(manifest), by_name=False)
    assert from_server == from_models
    assert defaulted(manifest)["spec"]["training"]["epochs"] == from_models.spec.training.epochs


@pytest.mark.parametrize("path", EXAMPLE_MANIFESTS, ids=lambda p: p.name)
def test_examples_pass_every_rule(path: Any) -> None:
    stored = defaulted(load_example(path.relative_to(REPO / "examples").as_posix()))
    assert failed_rules(stored) == []
    assert failed_rules(stored, old=copy.deepcopy(stored)) == []


def update(stored: dict[str, Any], section: str, field: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(stored)
    changed["spec"].setdefault(section, {})[field] = value
    return changed


def test_spec_is_immutable_except_suspend_and_deadline(every_section: dict[str, Any]) -> None:
    stored = defaulted(every_section)
    allowed = [("runPolicy", "suspend", True), ("runPolicy", "activeDeadlineSeconds", 60)]
    for section, field, value in allowed:
        assert failed_rules(update(stored, section, field, value), stored) == []
    refused = [
        ("model", "source", "hf://org/other", "spec.model is immutable"),
        ("training", "epochs", 9, "spec.training is immutable"),
        ("runPolicy", "backoffLimit", 9, "spec.runPolicy.backoffLimit is immutable"),
        ("resources", "workers", 9, "spec.resources is immutable"),
        ("search", "maxTrials", 13, "spec.search is immutable"),
    ]
    for section, field, value, message in refused:
        assert failed_rules(update(stored, section, field, value), stored) == [message]


def test_optional_sections_cannot_appear_or_vanish(
    sentiment: dict[str, Any], every_section: dict[str, Any]
) -> None:
    without = defaulted(sentiment)
    with_search = copy.deepcopy(without)
    with_search["spec"]["search"] = defaulted(every_section)["spec"]["search"]
    message = "spec.search cannot be added or removed after creation"
    assert failed_rules(with_search, without) == [message]
    assert failed_rules(without, with_search) == [message]
    no_deadline = copy.deepcopy(without)
    with_deadline = update(without, "runPolicy", "activeDeadlineSeconds", 600)
    assert failed_rules(with_deadline, no_deadline) == []


def rejection(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What the CEL rules say, and what the operator's validation says, of one manifest."""
    rules = failed_rules(defaulted(manifest))
    models = [str(p) for p in check_document(manifest, "job.yaml").problems]
    return rules, models


Case = tuple[str, str, Any, str, str]
CASES: list[Case] = [
    (
        "training",
        "warmupSteps",
        10,
        "set warmupRatio or warmupSteps, not both",
        "spec.training.warmupSteps: set warmupRatio or warmupSteps, not both",
    ),
    (
        "model",
        "numLabels",
        3,
        "numLabels must equal the number of labels",
        "spec.model.numLabels: is 3 but labels names 2 classes",
    ),
    (
        "evaluation",
        "strategy",
        "steps",
        "everySteps is required with strategy steps and applies only then",
        "spec.evaluation: everySteps is required when strategy is steps",
    ),
    (
        "data",
        "sensitiveColumns",
        [],
        "bias needs data.sensitiveColumns to name at least one column",
        "spec.bias: the audit needs data.sensitiveColumns to name at least one column",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}.{c[1]}")
def test_cel_rules_agree_with_the_models(sentiment: dict[str, Any], case: Case) -> None:
    section, field, value, rule_message, model_message = case
    sentiment["spec"][section][field] = value
    assert rejection(sentiment) == ([rule_message], [model_message])


def test_merge_adapter_needs_lora_in_the_rules_and_the_models(
    sentiment: dict[str, Any],
) -> None:
    sentiment["spec"]["output"] = {"mergeAdapter": True}
    rules, models = rejection(sentiment)
    assert rules == ["output.mergeAdapter needs training.lora"]
    assert models[0].startswith("spec: output.mergeAdapter needs training.lora")
    sentiment["spec"]["training"]["lora"] = {"rank": 4}
    assert rejection(sentiment) == ([], [])


@pytest.mark.parametrize(("bits", "gpus", "refused"), [("8bit", 0, True), ("4bit", 0, False)])
def test_8bit_quantization_needs_gpus_per_worker(
    sentiment: dict[str, Any], bits: str, gpus: int, refused: bool
) -> None:
    sentiment["spec"]["training"]["lora"] = {"quantization": bits}
    sentiment["spec"]["resources"]["gpusPerWorker"] = gpus
    problems = [str(p) for p in check_document(sentiment, "job.yaml").problems]
    assert problems == (
        [
            "spec: training.lora.quantization 8bit needs GPUs (bitsandbytes' CPU backend cannot "
            "load its 8bit checkpoints back): set resources.gpusPerWorker, or use 4bit"
        ]
        if refused
        else []
    )


def test_search_rules_agree_with_the_models(every_section: dict[str, Any]) -> None:
    parameters = every_section["spec"]["search"]["parameters"]
    parameters[0].update(min=1e-3, max=1e-5)
    rules, models = rejection(every_section)
    assert rules == ["min must not exceed max"]
    assert models == [
        "spec.search.parameters[0]: training.learningRate: min (0.001) is greater than max (1e-05)"
    ]
    parameters[0].update(min=0, max=1e-3)
    rules, models = rejection(every_section)
    assert rules == ["a log scale needs min > 0"]
    assert models == [
        "spec.search.parameters[0]: training.learningRate: a log scale needs min > 0 (got 0.0)"
    ]


def test_name_length_rule(sentiment: dict[str, Any]) -> None:
    sentiment["metadata"]["name"] = "n" * 41
    rules, models = rejection(sentiment)
    assert rules == [
        "metadata.name must be at most 40 characters, so that the names derived from it fit "
        "Kubernetes' 63"
    ]
    assert models == ["metadata.name: must have at most 40 characters (got 41)"]


def test_a_union_without_structural_form_is_refused() -> None:
    class Loose(BaseModel):
        value: int | list[str]

    with pytest.raises(crdgen.CRDGenerationError, match=r"Loose.value: a union of"):
        crdgen.structural_schema(Loose)


def test_int_or_string_quantities() -> None:
    cpu = SCHEMA["properties"]["spec"]["properties"]["resources"]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True
    validator = jsonschema.Draft4Validator(cpu)
    assert validator.is_valid(8)
    assert validator.is_valid("7500m")
    assert not validator.is_valid(1.5)


NOT_ABOVE_ZERO = (-2, 0, "-2", "-4Gi", "-1", "0", "0.0", "0Gi", "+0", "-0.5")


@pytest.mark.parametrize("field", ["cpu", "memory", "sharedMemory"])
def test_the_api_server_refuses_quantities_not_above_zero(field: str) -> None:
    runtime = RUNTIME_CRDS["Namespaced"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = {
        "job": SCHEMA["properties"]["spec"]["properties"]["resources"]["properties"][field],
        "runtime defaults": runtime["properties"]["spec"]["properties"]["defaults"]["properties"][
            "resources"
        ]["properties"][field],
    }
    for where, node in nodes.items():
        validator = jsonschema.Draft4Validator(node)
        assert [v for v in (8, "7500m", "0.5", "16Gi", "1e3") if not validator.is_valid(v)] == []
        assert [v for v in NOT_ABOVE_ZERO if validator.is_valid(v)] == [], where


def test_status_accepts_what_the_trainer_and_operator_write() -> None:
    status: dict[str, Literal["x"] | Any] = {
        "phase": "Running",
        "conditions": [
            {
                "type": "Validated",
                "status": "True",
                "reason": "SpecValid",
                "message": "",
                "lastTransitionTime": "2026-11-22T04:00:00Z",
            }
        ],
        "progress": {"epoch": 1, "epochs": 2, "step": 10, "totalSteps": 40, "percent": 25},
        "metrics": {"accuracy": 0.91, "loss": 0.3},
        "metricSummary": "accuracy=0.910",
        "trials": [
            {
                "number": 0,
                "name": "x-trial-0",
                "state": "Complete",
                "params": {"training.learningRate": 1e-4, "training.scheduler": "cosine"},
                "objective": 0.9,
                "intermediate": {"10": 0.8},
            }
        ],
    }
    jsonschema.Draft4Validator(SCHEMA["properties"]["status"]).validate(status)


# --- FineTuneRuntime and ClusterFineTuneRuntime ------------------------------------------


RUNTIME_CRDS = {
    scope: crdgen.runtime_crd(cluster_scoped=scope == "Cluster")
    for scope in ("Namespaced", "Cluster")
}


@pytest.mark.parametrize("scope", RUNTIME_CRDS)
def test_runtime_crds_are_valid_structural_and_described(scope: str) -> None:
    crd = RUNTIME_CRDS[scope]
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)
    assert crd["spec"]["scope"] == scope
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert not {"$ref", "allOf", "oneOf", "not", "nullable", "title"} & node.keys(), path
        assert "anyOf" not in node or node.get("x-kubernetes-int-or-string"), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
    undescribed = [
        path
        for path, node in walk(schema["properties"]["spec"])
        if path and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert undescribed == []


def test_runtime_defaults_mirror_the_job_spec_without_defaults_or_rules() -> None:
    spec = RUNTIME_CRDS["Cluster"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    defaults = spec["properties"]["spec"]["properties"]["defaults"]
    job_spec = SCHEMA["properties"]["spec"]
    assert set(defaults["properties"]) == set(job_spec["properties"]) - {"runtimeRef", "search"}
    workers = defaults["properties"]["resources"]["properties"]["workers"]
    assert (workers["minimum"], workers["maximum"], "default" in workers) == (1, 256, False)
    for path, node in walk(defaults):
        assert "required" not in node or path.endswith("[]") or "[]" in path, path
        assert "x-kubernetes-validations" not in node or "[]" in path, path
    # A partial spec passes the runtime schema; the same value fails where the job's does.
    validator = jsonschema.Draft4Validator(defaults)
    assert validator.is_valid(
        {"resources": {"gpusPerWorker": 8}, "training": {"precision": "bf16"}}
    )
    assert not validator.is_valid({"training": {"precision": "fp8"}})


def test_runtime_printer_columns_exist_in_the_schema() -> None:
    version = RUNTIME_CRDS["Cluster"]["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Max-GPUs"] == ".spec.guardrails.maxGpusPerJob"
    for path in (p for p in columns.values() if p.startswith(".spec.")):
        node = schema
        for part in path.strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] in ("integer", "number", "boolean")


@pytest.mark.parametrize("name", ["small-cpu.yaml", "a100.yaml"])
def test_runtime_examples_validate_against_their_crd(name: str) -> None:
    document = load_example(f"runtimes/{name}")
    schema = RUNTIME_CRDS["Cluster"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft4Validator(schema).validate(document)
    document["spec"]["guardrails"]["maxWorkers"] = 0
    assert not jsonschema.Draft4Validator(schema).is_valid(document)
