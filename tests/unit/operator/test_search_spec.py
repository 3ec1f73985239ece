"""The search section: its space must be well formed and name real, compatible fields."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_operator.api.manifests import check_document
from kubetune_operator.api.v1alpha1 import SearchParameter, spec_field


def problems_with_search(manifest: dict[str, Any], search: dict[str, Any]) -> list[str]:
    manifest["spec"]["search"] = search
    return [str(p) for p in check_document(manifest, "job.yaml").problems]


def test_grid_points_of_each_kind() -> None:
    cases: list[tuple[dict[str, Any], list[Any] | None]] = [
        (
            {"path": "training.scheduler", "type": "categorical", "choices": ["linear", "cosine"]},
            ["linear", "cosine"],
        ),
        (
            {"path": "training.batchSize", "type": "int", "min": 8, "max": 32, "step": 8},
            [8, 16, 24, 32],
        ),
        ({"path": "freezing.freezeLayers", "type": "int", "min": 0, "max": 3}, [0, 1, 2, 3]),
        (
            {
                "path": "regularization.dropout",
                "type": "float",
                "min": 0.0,
                "max": 0.3,
                "step": 0.1,
            },
            [0.0, 0.1, 0.2, 0.30000000000000004],
        ),
        ({"path": "training.learningRate", "type": "float", "values": [1e-5, 1e-4]}, [1e-5, 1e-4]),
        (
            {
                "path": "training.learningRate",
                "type": "float",
                "min": 1e-5,
                "max": 1e-3,
                "log": True,
            },
            None,
        ),
    ]
    for raw, points in cases:
        assert SearchParameter.model_validate(raw, by_name=False).grid_points() == points


def test_grid_covers_the_product_within_max_trials(sentiment: dict[str, Any]) -> None:
    search = {
        "algorithm": "grid",
        "maxTrials": 5,
        "parameters": [
            {"path": "training.scheduler", "type": "categorical", "choices": ["linear", "cosine"]},
            {"path": "freezing.freezeLayers", "type": "int", "min": 0, "max": 2},
        ],
    }
    assert problems_with_search(sentiment, search) == [
        "spec.search: the grid has 6 points but maxTrials is 5"
    ]
    search["maxTrials"] = 6
    assert problems_with_search(sentiment, search) == []


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        (
            {"path": "training.learningRat", "type": "float", "min": 1e-5, "max": 1e-3},
            "spec.search.parameters[0]: training.learningRat: unknown parameter path "
            "('learningRat' is not one of",
        ),
        (
            {"path": "model.source", "type": "categorical", "choices": ["a"]},
            "spec.search.parameters[0]: model.source: unknown parameter path; searchable sections",
        ),
        (
            {"path": "training.learningRate", "type": "float", "min": 1e-3, "max": 1e-5},
            "spec.search.parameters[0]: training.learningRate: min (0.001) is greater than max",
        ),
        (
            {
                "path": "training.learningRate",
                "type": "float",
                "min": 0.0,
                "max": 1e-3,
                "log": True,
            },
            "spec.search.parameters[0]: training.learningRate: a log scale needs min > 0 (got 0.0)",
        ),
        (
            {"path": "training.scheduler", "type": "categorical", "choices": []},
            "spec.search.parameters[0]: training.scheduler: a categorical parameter needs choices",
        ),
        (
            {"path": "training.scheduler", "type": "categorical", "choices": ["cosine", "warp"]},
            "spec.search.parameters[0]: training.scheduler: 'warp' does not fit the field",
        ),
        (
            {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 20.0},
            "spec.search.parameters[0]: training.learningRate: 20.0 does not fit the field: "
            "Input should be less than or equal to 10",
        ),
        (
            {"path": "training.batchSize", "type": "float", "min": 0.5, "max": 8.0},
            "spec.search.parameters[0]: training.batchSize: 0.5 does not fit the field",
        ),
        (
            {"path": "training", "type": "float", "min": 0.0, "max": 1.0},
            "spec.search.parameters[0].path: must be text matching",
        ),
        (
            {"path": "training.batchSize", "type": "int", "min": 8, "max": 32, "step": 0.5},
            "training.batchSize: an int parameter takes a whole-number step (got 0.5)",
        ),
        (
            {"path": "freezing.gradualUnfreezing", "type": "float", "min": 0.0, "max": 1.0},
            "names a whole section",
        ),
    ],
)
def test_bad_parameters_name_the_field(
    sentiment: dict[str, Any], parameter: dict[str, Any], expected: str
) -> None:
    problems = problems_with_search(sentiment, {"parameters": [parameter]})
    assert len(problems) == 1
    assert expected in problems[0]


def test_max_trials_zero_and_parallelism_above_it(sentiment: dict[str, Any]) -> None:
    parameter = {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-3}
    assert problems_with_search(sentiment, {"parameters": [parameter], "maxTrials": 0}) == [
        "spec.search.maxTrials: must be >= 1 (got 0)"
    ]
    search = {"parameters": [parameter], "maxTrials": 2, "parallelism": 3}
    assert problems_with_search(sentiment, search) == [
        "spec.search: parallelism (3) exceeds maxTrials (2)"
    ]


def test_objective_must_fit_the_task(sentiment: dict[str, Any]) -> None:
    parameter = {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-3}
    problems = problems_with_search(
        sentiment, {"parameters": [parameter], "objective": {"metric": "perplexity"}}
    )
    assert problems == [
        "spec: search.objective.metric 'perplexity' does not apply to sequence-classification; "
        "use one of accuracy, f1Macro, f1Micro, loss, precisionMacro, recallMacro, rocAuc"
    ]


def test_a_dpo_search_aims_at_a_preference_metric() -> None:
    manifest: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "prefs"},
        "spec": {
            "model": {"source": "hf://gpt2", "task": "causal-lm"},
            "data": {"train": {"source": "pvc://data/prefs.jsonl"}, "textColumn": "prompt"},
            "training": {"objective": "dpo"},
            "output": {"uri": "pvc://out/prefs"},
        },
    }
    parameter = {"path": "training.preference.beta", "type": "float", "values": [0.1, 0.3]}
    search = {"parameters": [parameter], "objective": {"metric": "rewardMargin"}}
    assert problems_with_search(manifest, search) == []
    search["objective"] = {"metric": "perplexity"}
    assert problems_with_search(manifest, search) == [
        "spec: search.objective.metric 'perplexity' does not apply to training.objective dpo; "
        "use one of chosenReward, loss, rejectedReward, rewardAccuracy, rewardMargin"
    ]


def test_spec_field_walks_nested_sections() -> None:
    assert spec_field("freezing.gradualUnfreezing.every").annotation is int
    assert spec_field("training.learningRate").annotation is float


def test_a_search_parent_name_leaves_room_for_its_trials(sentiment: dict[str, Any]) -> None:
    search = {"parameters": [{"path": "training.epochs", "type": "int", "values": [1, 2]}]}
    sentiment["metadata"]["name"] = "a" * 31
    (problem,) = problems_with_search(sentiment, search)
    assert "a job with spec.search may have at most 30 characters" in problem
    assert "got 31" in problem
    sentiment["metadata"]["name"] = "a" * 30
    assert problems_with_search(sentiment, search) == []


def test_a_generation_metric_is_a_search_objective_only_with_generation() -> None:
    spec: dict[str, Any] = {
        "model": {"source": "hf://gpt2", "task": "causal-lm"},
        "data": {"train": {"source": "pvc://data/qa.jsonl"}, "textPairColumn": "answer"},
        "output": {"uri": "pvc://out/qa"},
    }
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "qa"},
        "spec": spec,
    }
    parameter = {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-3}
    search = {"parameters": [parameter], "objective": {"metric": "rougeL"}}
    assert problems_with_search(manifest, search) == [
        "spec: search.objective.metric 'rougeL' is measured on generated completions: set "
        "evaluation.generation, or use one of loss, perplexity"
    ]
    spec["evaluation"] = {"generation": {"samples": 16}}
    assert problems_with_search(manifest, search) == []
