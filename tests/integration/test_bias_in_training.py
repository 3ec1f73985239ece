"""The bias audit at the end of real runs: the status section, report.json, counterfactual
predictions, and what onFailure does with a failed audit."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from kubetune_operator.api.v1alpha1 import BiasAuditStatus
from kubetune_trainer.__main__ import main
from kubetune_trainer.config import EXIT_INVALID_INPUT, EXIT_TRAINING_FAILED, TrainingConfig
from tests.integration.test_data_in_training import sections
from tests.integration.test_trainer import make_config, train

PAIRS = [
    {"term": "proper", "counterpart": "really"},
    {"term": "I reckon", "counterpart": "I think"},
]


def audited(model: Path, data: tuple[Path, Path], **bias: Any) -> TrainingConfig:
    return make_config(
        model,
        data,
        training={"epochs": 4},
        bias={"minGroupSize": 10, "counterfactuals": PAIRS, **bias},
    )


def test_a_run_audits_its_model_and_reports_the_verdict(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    result = train(audited(tiny_model_dir, small_data, onFailure="warn"), tmp_path / "run")
    assert result.succeeded
    (status,) = sections(tmp_path / "run", "biasAudit")
    parsed = BiasAuditStatus.model_validate(status)
    assert parsed.verdict in ("Passed", "Failed")
    names = {metric.name for metric in parsed.metrics}
    assert {"demographicParityRatio", "counterfactualFlipRate"} <= names
    groups = {group.group: group.count for group in parsed.groups}
    validation_rows = result.report["data"]["classes"]["validation"]["out"]
    assert sum(groups.values()) == sum(validation_rows.values())
    report = result.report["biasAudit"]
    assert report["verdict"] == parsed.verdict
    counterfactual = report["counterfactual"]
    texts = small_data[1].read_text(encoding="utf-8").lower()
    assert counterfactual is not None
    assert 0 <= counterfactual["flipRate"] <= 1
    assert (counterfactual["changed"] > 0) == ("proper" in texts or "i reckon" in texts)


def test_the_report_holds_the_confusion_matrix_of_the_final_model(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    result = train(make_config(tiny_model_dir, small_data), tmp_path / "run")
    evaluation = result.report["evaluation"]
    matrix = evaluation["confusionMatrix"]
    assert evaluation["labels"] == ["negative", "positive"]
    assert sum(map(sum, matrix)) == 80
    accuracy = (matrix[0][0] + matrix[1][1]) / 80
    assert accuracy == pytest.approx(result.report["bestMetrics"]["accuracy"])
    supports = [row["support"] for row in evaluation["perClass"]]
    assert supports == [sum(row) for row in matrix]
    recall = evaluation["perClass"][1]["recall"]
    assert recall == pytest.approx(matrix[1][1] / sum(matrix[1]))


def test_a_failed_audit_fails_the_job_when_asked(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    strict = {"demographicParityRatio": None, "accuracyDifference": 0.0}
    config = audited(tiny_model_dir, small_data, onFailure="fail", thresholds=strict)
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json(by_alias=True))
    code = main(["--config", str(config_file), "--output", str(tmp_path / "run")], env={})
    (status,) = sections(tmp_path / "run", "biasAudit")
    assert status["verdict"] == "Failed"
    assert code == EXIT_TRAINING_FAILED
    assert (tmp_path / "run" / "report.json").exists()


def test_multi_class_audits_need_positive_labels() -> None:
    with pytest.raises(ValueError, match="positiveLabels is required"):
        TrainingConfig.model_validate(
            {
                "model": {"source": "m", "labels": ["a", "b", "c"]},
                "data": {"train": {"source": "t.csv"}, "sensitiveColumns": ["g"]},
                "bias": {},
            }
        )


@pytest.mark.parametrize(
    ("pairs", "problem"),
    [
        ([{"term": "He", "counterpart": "he"}], "swaps a term for itself"),
        (
            [{"term": "he", "counterpart": "she"}, {"term": "she", "counterpart": "they"}],
            "more than one pair",
        ),
    ],
)
def test_counterfactual_pairs_must_swap_both_ways(
    pairs: list[dict[str, str]], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        TrainingConfig.model_validate(
            {
                "model": {"source": "m"},
                "data": {"train": {"source": "t.csv"}, "sensitiveColumns": ["g"]},
                "bias": {"counterfactuals": pairs},
            }
        )


def test_attributions_explain_the_final_model_in_the_report(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        training={"epochs": 1},
        freezing={"freezeEmbeddings": True},
        evaluation={"attributions": {"sampleSize": 12, "steps": 4, "topTokens": 3}},
    )
    result = train(config, tmp_path / "run")
    attributions = result.report["attributions"]
    assert len(attributions["examples"]) == 12
    assert set(attributions["classes"]) <= {"negative", "positive"}
    assert all(len(tokens) <= 3 for tokens in attributions["classes"].values())
    changes = {row["group"]: row["relativeChange"] for row in attributions["weightChange"]}
    assert changes["embeddings"] == 0.0
    assert changes["head"] > 0
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert 'id="attributions"' in html


def test_audit_data_is_audited_instead_of_the_validation_rows(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    """Template sentences that differ only in the dialect words: the classic bias probe. The
    validation file has no dialect column: with auditData set, its rows are not audited."""
    templates = [
        ("I reckon the {} is proper good.", "I think the {} is really good.", "positive"),
        ("I reckon the {} is proper bad.", "I think the {} is really bad.", "negative"),
    ]
    products = ["kettle", "tent", "lamp", "toaster", "jacket", "monitor", "novel", "vacuum"]
    rows = ["text,label,dialect"]
    for regional, standard, label in templates:
        for product in products:
            rows.append(f"{regional.format(product)},{label},regional")
            rows.append(f"{standard.format(product)},{label},standard")
    audit_file = tmp_path / "audit.csv"
    audit_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    validation = tmp_path / "validation.csv"
    with small_data[1].open(encoding="utf-8") as source, validation.open("w") as target:
        writer = csv.writer(target)
        for row in csv.DictReader(source):
            writer.writerow([row["text"], row["label"]])
    validation.write_text("text,label\n" + validation.read_text(), encoding="utf-8")
    data = (small_data[0], validation)
    config = audited(tiny_model_dir, data, auditData={"source": str(audit_file)})
    result = train(config, tmp_path / "run")
    assert result.report["data"]["rows"]["validation_in"] == 80
    groups = {
        group["group"]: group["count"]
        for attribute in result.report["biasAudit"]["attributes"]
        for group in attribute["groups"]
    }
    assert groups == {"regional": 16, "standard": 16}
    assert result.report["biasAudit"]["counterfactual"]["texts"] == 32


def test_a_missing_audit_file_fails_before_training(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = audited(tiny_model_dir, small_data, auditData={"source": str(tmp_path / "no.csv")})
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json(by_alias=True))
    code = main(["--config", str(config_file), "--output", str(tmp_path / "run")], env={})
    assert code == EXIT_INVALID_INPUT
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_stereotype_pairs_table_fails_a_causal_lm_before_training(
    tmp_path: Path, small_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.tiny import make_tiny_causal_lm

    model = make_tiny_causal_lm(tmp_path / "gpt", ["the man cooks the woman"])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sent_more,sent_less,bias_type\nthe woman,the man,gender\nthe man,the man,x\n")
    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "task": "causal-lm"},
            "data": {"train": {"source": str(small_data[0])}, "maxLength": 32},
            "bias": {"stereotypePairs": {"pairs": {"source": str(pairs)}}},
        },
        by_name=False,
    )
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json(by_alias=True))
    code = main(["--config", str(config_file), "--output", str(tmp_path / "run")], env={})
    assert code == EXIT_INVALID_INPUT
    printed = capsys.readouterr()
    assert f"bias.stereotypePairs.pairs: {pairs} row 2: both sides are 'the man'" in (
        printed.out + printed.err
    )
    assert "Traceback" not in printed.out + printed.err
    assert not (tmp_path / "run" / "checkpoints").exists()
