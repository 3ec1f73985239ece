"""The bias audit: hand-computed gaps, the gates, small and missing groups, one-vs-rest
classes, agreement with fairlearn, the status limits, and the counterfactual swaps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import sklearn.metrics as skm
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)

from kubetune_operator.api.v1alpha1 import BiasAuditStatus
from kubetune_trainer.config import BiasSpec, BiasThresholds, CounterfactualPair
from kubetune_trainer.examine.audit import (
    MAX_STATUS_GROUPS,
    MAX_STATUS_METRICS,
    MISSING_GROUP,
    AuditMetric,
    BiasAudit,
    CounterfactualResult,
    audit,
    combined_counterfactuals,
    counterfactual_result,
    counterfactual_sets,
    swap_terms,
)

BINARY = ["negative", "positive"]
Rows = tuple[list[int], list[int], list[str | None]]


def cells(group: str | None, *, tp: int = 0, fn: int = 0, fp: int = 0, tn: int = 0) -> Rows:
    """Rows of one group from its confusion table (positive class id 1, negative 0)."""
    truth = [1] * (tp + fn) + [0] * (fp + tn)
    predicted = [1] * tp + [0] * fn + [1] * fp + [0] * tn
    return truth, predicted, [group] * len(truth)


def run(
    *parts: Rows,
    attribute: str = "dialect",
    labels: Sequence[str] = BINARY,
    counterfactual: CounterfactualResult | None = None,
    **spec: Any,
) -> BiasAudit:
    truth = np.array([y for part in parts for y in part[0]], dtype=np.int64)
    predicted = np.array([y for part in parts for y in part[1]], dtype=np.int64)
    values = [value for part in parts for value in part[2]]
    return audit(
        labels=labels,
        y_true=truth,
        y_pred=predicted,
        groups={attribute: values},
        spec=BiasSpec(**{"min_group_size": 5, **spec}),
        counterfactual=counterfactual,
    )


def metric(result: BiasAudit, name: str, attribute: str = "dialect") -> AuditMetric:
    found = [m for m in result.metrics if m.name == name and m.attribute == attribute]
    assert len(found) == 1, found
    return found[0]


def by_name(result: BiasAudit) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in result.to_status()["metrics"]}


def plain_json(value: Any) -> bool:
    """Only the types json writes back as they were: no numpy scalars anywhere."""
    if isinstance(value, dict):
        return all(type(k) is str and plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_json(item) for item in value)
    return value is None or type(value) in (str, int, float, bool)


# Group A: 6 positives (5 found), 4 negatives (1 false alarm): 6 of 10 selected.
# Group B: 5 positives (2 found), 5 negatives (none flagged): 2 of 10 selected.
GROUP_A = cells("A", tp=5, fn=1, fp=1, tn=3)
GROUP_B = cells("B", tp=2, fn=3, fp=0, tn=5)


# --- the numbers -------------------------------------------------------------------------


def test_hand_computed_binary_gaps() -> None:
    result = run(GROUP_A, GROUP_B)
    # Selection rates 0.6 and 0.2; TPR 5/6 and 2/5; FPR 1/4 and 0; accuracy 0.8 and 0.7.
    assert metric(result, "demographicParityDifference").value == pytest.approx(0.4)
    assert metric(result, "demographicParityRatio").value == pytest.approx(1 / 3)
    assert metric(result, "equalOpportunityDifference").value == pytest.approx(5 / 6 - 2 / 5)
    eo = metric(result, "equalizedOddsDifference")
    assert eo.value == pytest.approx(max(5 / 6 - 2 / 5, 1 / 4 - 0))
    assert eo.rate == "tpr"
    assert metric(result, "accuracyDifference").value == pytest.approx(0.1)
    [a, b] = result.attributes[0].classes["positive"]
    assert (a.group, a.count, a.positives, a.negatives) == ("A", 10, 6, 4)
    assert (a.selection_rate, a.tpr, a.fpr, a.accuracy) == pytest.approx((0.6, 5 / 6, 0.25, 0.8))
    assert (b.selection_rate, b.tpr, b.fpr, b.accuracy) == pytest.approx((0.2, 0.4, 0.0, 0.7))


def test_equalized_odds_takes_the_wider_false_positive_gap() -> None:
    # TPR 2/4 vs 2/5 (gap 0.1); FPR 3/6 vs 0/5 (gap 0.5).
    result = run(cells("A", tp=2, fn=2, fp=3, tn=3), cells("B", tp=2, fn=3, fp=0, tn=5))
    eo = metric(result, "equalizedOddsDifference")
    assert eo.value == pytest.approx(0.5)
    assert eo.rate == "fpr"
    assert eo.low is not None
    assert (eo.low.group, eo.low.value) == ("B", 0.0)
    assert metric(result, "equalOpportunityDifference").value == pytest.approx(0.1)


def test_hand_computed_case_fails_the_default_four_fifths_rule() -> None:
    result = run(GROUP_A, GROUP_B)
    assert result.verdict == "Failed"
    assert not result.passed()
    assert result.worst_group == "dialect=B"
    assert result.message == (
        "Failed: demographicParityRatio 0.333 < 0.8 for dialect (selection rate B 0.200 vs A 0.600)"
    )


# --- the gates ---------------------------------------------------------------------------


def four_fifths(selected_b: int) -> BiasAudit:
    """Group A selects 20 of 40, group B `selected_b` of 40."""
    return run(
        cells("A", tp=20, tn=20),
        cells("B", tp=selected_b, fn=20 - selected_b, tn=20),
        min_group_size=30,
    )


def test_a_ratio_of_0_85_passes_the_four_fifths_rule() -> None:
    result = four_fifths(17)
    ratio = metric(result, "demographicParityRatio")
    assert ratio.value == pytest.approx(0.85)
    assert (ratio.threshold, ratio.passed) == (0.8, True)
    assert result.verdict == "Passed"
    assert result.passed()
    assert result.worst_group == "dialect=B"
    assert result.message.startswith(
        "Passed: 1 gated metric within thresholds; tightest demographicParityRatio 0.850 >= 0.8"
    )


def test_a_ratio_of_0_75_fails_the_four_fifths_rule() -> None:
    result = four_fifths(15)
    ratio = metric(result, "demographicParityRatio")
    assert ratio.value == pytest.approx(0.75)
    assert ratio.passed is False
    assert result.verdict == "Failed"


def test_a_ratio_exactly_at_its_threshold_passes() -> None:
    result = four_fifths(16)
    assert metric(result, "demographicParityRatio").passed is True


def test_difference_metrics_pass_at_or_below_their_threshold() -> None:
    thresholds = BiasThresholds(demographic_parity_difference=0.1, demographic_parity_ratio=None)
    within = run(cells("A", tp=20, tn=20), cells("B", tp=17, fn=3, tn=20), thresholds=thresholds)
    beyond = run(cells("A", tp=20, tn=20), cells("B", tp=15, fn=5, tn=20), thresholds=thresholds)
    assert metric(within, "demographicParityDifference").value == pytest.approx(0.075)
    assert metric(within, "demographicParityDifference").passed is True
    assert metric(beyond, "demographicParityDifference").value == pytest.approx(0.125)
    assert metric(beyond, "demographicParityDifference").passed is False
    assert beyond.message.startswith("Failed: demographicParityDifference 0.125 > 0.1")


def test_a_metric_without_threshold_is_reported_not_gated() -> None:
    thresholds = BiasThresholds(demographic_parity_ratio=None)
    result = run(GROUP_A, GROUP_B, thresholds=thresholds)
    row = by_name(result)["demographicParityRatio"]
    assert row["value"] == pytest.approx(1 / 3)
    assert (row["threshold"], row["passed"]) == (None, None)
    assert result.verdict == "Passed"
    assert result.message.startswith("Passed: no metric is gated (bias.thresholds)")


def test_every_gate_reports_its_threshold() -> None:
    thresholds = BiasThresholds(
        demographic_parity_ratio=0.3,
        demographic_parity_difference=0.5,
        equalized_odds_difference=0.5,
        equal_opportunity_difference=0.4,
        accuracy_difference=0.05,
    )
    result = run(GROUP_A, GROUP_B, thresholds=thresholds)
    rows = by_name(result)
    assert {name: (row["threshold"], row["passed"]) for name, row in rows.items()} == {
        "demographicParityRatio": (0.3, True),
        "demographicParityDifference": (0.5, True),
        "equalizedOddsDifference": (0.5, True),
        "equalOpportunityDifference": (0.4, False),
        "accuracyDifference": (0.05, False),
    }
    # The worse failure (0.433 - 0.4 vs 0.1 - 0.05) is the headline.
    assert result.message.startswith("Failed: accuracyDifference 0.100 > 0.05 for dialect")
    assert result.message.endswith("; 1 more gated metric failed")


# --- small and missing groups ------------------------------------------------------------


def test_a_small_group_is_reported_but_left_out_of_the_gaps() -> None:
    # C would set the lowest selection rate (0), but has 5 rows, fewer than 10.
    result = run(
        cells("A", tp=10, tn=10),
        cells("B", tp=9, fn=1, tn=10),
        cells("C", fn=5),
        min_group_size=10,
    )
    groups = {g.group: g for g in result.attributes[0].groups}
    assert (groups["C"].count, groups["C"].sufficient, groups["C"].judged) == (5, False, False)
    assert groups["C"].selection_rate == 0.0
    assert metric(result, "demographicParityRatio").value == pytest.approx(0.45 / 0.5)
    assert result.verdict == "Passed"


def test_one_sufficient_group_is_insufficient_data() -> None:
    result = run(cells("A", tp=10, tn=10), cells("B", fn=5), min_group_size=10)
    assert result.verdict == "InsufficientData"
    assert not result.passed()
    assert not result.attributes[0].judged
    assert all(m.value is None and m.passed is None for m in result.metrics)
    assert result.message == (
        "InsufficientData: dialect: 1 group with at least 10 rows (A 20); too small: B 5; "
        "a gap needs 2 groups"
    )
    assert BiasAuditStatus.model_validate(result.to_status()).verdict == "InsufficientData"


def test_the_missing_group_is_reported_and_never_judged() -> None:
    # 40 rows without a value, none selected: judged, they would fail the four-fifths rule.
    result = run(
        cells("A", tp=10, tn=10),
        cells("B", tp=9, fn=1, tn=10),
        cells(None, fn=20),
        cells("", fn=20),
        min_group_size=10,
    )
    groups = {g.group: g for g in result.attributes[0].groups}
    missing = groups[MISSING_GROUP]
    assert (missing.count, missing.sufficient, missing.judged) == (40, True, False)
    assert result.attributes[0].groups[0].group == MISSING_GROUP  # the largest first
    assert metric(result, "demographicParityRatio").value == pytest.approx(0.9)
    assert result.verdict == "Passed"


def test_the_missing_group_alone_cannot_make_a_pair() -> None:
    result = run(cells("A", tp=10, tn=10), cells(None, fn=20), min_group_size=10)
    assert result.verdict == "InsufficientData"
    assert "20 rows without a value, never judged" in result.message


def test_a_failure_elsewhere_wins_over_insufficient_data() -> None:
    result = audit(
        labels=BINARY,
        y_true=np.array(GROUP_A[0] + GROUP_B[0], dtype=np.int64),
        y_pred=np.array(GROUP_A[1] + GROUP_B[1], dtype=np.int64),
        groups={"dialect": GROUP_A[2] + GROUP_B[2], "region": ["north"] * 20},
        spec=BiasSpec(min_group_size=5),
    )
    assert result.verdict == "Failed"
    assert any(line.startswith("region: 1 group") for line in result.evidence)


def test_an_undefined_rate_is_none_with_its_reason_never_nan() -> None:
    # B has no positive rows (TPR 0/0); nobody is selected (ratio 0/0).
    result = run(
        cells("A", fn=5, tn=5),
        cells("B", tn=10),
        thresholds=BiasThresholds(equal_opportunity_difference=0.1),
    )
    [a, b] = result.attributes[0].classes["positive"]
    assert (a.tpr, b.tpr, b.fpr) == (0.0, None, 0.0)
    opportunity = metric(result, "equalOpportunityDifference")
    assert opportunity.value is None
    assert "TPR is undefined for a group without positive rows (B)" in opportunity.reason
    assert metric(result, "equalizedOddsDifference").value is None
    ratio = metric(result, "demographicParityRatio")
    assert (ratio.value, ratio.reason) == (None, ratio.reason)
    assert "0/0" in ratio.reason
    assert metric(result, "demographicParityDifference").value == 0.0
    # Gated metrics that could not be measured make the verdict InsufficientData.
    assert result.verdict == "InsufficientData"
    assert any(
        line.startswith("equalOpportunityDifference for dialect not measured")
        for line in result.evidence
    )
    report = result.to_report()
    json.dumps(report, allow_nan=False)
    assert plain_json(report)
    json.dumps(result.to_status(), allow_nan=False)
    BiasAuditStatus.model_validate(result.to_status())


def test_fairlearn_reports_an_undefined_tpr_as_zero() -> None:
    """Why the audit counts its own rates: fairlearn would fail this model on a made-up gap."""
    truth = np.array([0, 0, 1, 1])
    predicted = np.array([1, 0, 1, 1])
    groups = np.array(["A", "A", "B", "B"])
    assert equal_opportunity_difference(truth, predicted, sensitive_features=groups) == 1.0
    result = audit(
        labels=BINARY,
        y_true=truth,
        y_pred=predicted,
        groups={"g": list(groups)},
        spec=BiasSpec(min_group_size=1),
    )
    assert metric(result, "equalOpportunityDifference", "g").value is None


# --- one-vs-rest classes -----------------------------------------------------------------

EMOTIONS = ["neutral", "joy", "anger"]


def test_multi_class_metrics_are_named_per_positive_class() -> None:
    #            true:     n  n  n  j  j  j  a  a  a  a
    standard = ([0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 1, 0, 1, 1, 0, 2, 2, 2, 0])
    regional = ([0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 0, 0, 1, 0, 0, 2, 2, 0, 0])
    result = audit(
        labels=EMOTIONS,
        y_true=np.array(standard[0] + regional[0], dtype=np.int64),
        y_pred=np.array(standard[1] + regional[1], dtype=np.int64),
        groups={"dialect": ["standard"] * 10 + ["regional"] * 10},
        spec=BiasSpec(positive_labels=["joy", "anger"], min_group_size=5),
    )
    assert result.positive_labels == ["joy", "anger"]
    rows = by_name(result)
    assert list(rows) == [
        "demographicParityDifference[joy]",
        "demographicParityRatio[joy]",
        "equalizedOddsDifference[joy]",
        "equalOpportunityDifference[joy]",
        "demographicParityDifference[anger]",
        "demographicParityRatio[anger]",
        "equalizedOddsDifference[anger]",
        "equalOpportunityDifference[anger]",
        "accuracyDifference",
    ]
    # joy: standard selects 3/10 (TPR 2/3), regional 1/10 (TPR 1/3).
    assert rows["demographicParityRatio[joy]"]["value"] == pytest.approx(1 / 3, abs=1e-6)
    assert rows["equalOpportunityDifference[joy]"]["value"] == pytest.approx(1 / 3, abs=1e-6)
    # anger: standard selects 3/10 (TPR 3/4), regional 2/10 (TPR 2/4).
    assert rows["demographicParityRatio[anger]"]["value"] == pytest.approx(2 / 3, abs=1e-6)
    assert rows["equalOpportunityDifference[anger]"]["value"] == pytest.approx(0.25)
    # Accuracy over all classes: standard 7/10, regional 6/10.
    assert rows["accuracyDifference"]["value"] == pytest.approx(0.1)
    # A status group's selection rate counts any positive class: 6/10 and 3/10.
    status_groups = {g["group"]: g for g in result.to_status()["groups"]}
    assert status_groups["standard"]["selectionRate"] == pytest.approx(0.6)
    assert status_groups["regional"]["selectionRate"] == pytest.approx(0.3)
    assert result.message.startswith(
        "Failed: demographicParityRatio[joy] 0.333 < 0.8 for dialect "
        "(selection rate regional 0.100 vs standard 0.300)"
    )
    BiasAuditStatus.model_validate(result.to_status())


def test_multi_class_needs_positive_labels() -> None:
    with pytest.raises(ValueError, match=r"bias\.positiveLabels is required .* 3 classes"):
        run(GROUP_A, labels=EMOTIONS)


def test_positive_labels_must_be_classes() -> None:
    with pytest.raises(ValueError, match=r"bias\.positiveLabels names 'happy'"):
        run(GROUP_A, positive_labels=["happy"])


def test_one_positive_label_of_a_binary_task_keeps_plain_names() -> None:
    result = run(GROUP_A, GROUP_B, positive_labels=["negative"])
    assert result.positive_labels == ["negative"]
    # Negative is "selected" 4 of 10 in A and 8 of 10 in B.
    assert by_name(result)["demographicParityRatio"]["value"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("truth", "predicted", "groups", "message"),
    [
        ([0, 1], [0], ["A", "B"], "aligned"),
        ([0, 2], [0, 1], ["A", "B"], r"y_true holds class ids outside 0\.\.1"),
        ([0, 1], [0, 1], ["A"], "'dialect' has 1 values for 2 rows"),
    ],
)
def test_inputs_that_do_not_fit_are_refused(
    truth: list[int], predicted: list[int], groups: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        audit(
            labels=BINARY,
            y_true=np.array(truth, dtype=np.int64),
            y_pred=np.array(predicted, dtype=np.int64),
            groups={"dialect": groups},
            spec=BiasSpec(),
        )


def test_no_rows_is_insufficient_data() -> None:
    result = run(([], [], []))
    assert result.verdict == "InsufficientData"
    assert result.attributes[0].groups == []
    assert (
        result.message
        == "InsufficientData: dialect: 0 groups with at least 5 rows; a gap needs 2 groups"
    )
    BiasAuditStatus.model_validate(result.to_status())


def test_no_sensitive_column_is_refused() -> None:
    with pytest.raises(ValueError, match=r"data\.sensitiveColumns"):
        audit(
            labels=BINARY,
            y_true=np.zeros(2, dtype=np.int64),
            y_pred=np.zeros(2, dtype=np.int64),
            groups={},
            spec=BiasSpec(),
        )


# --- agreement with fairlearn ------------------------------------------------------------


def random_rows(
    seed: int, rows: int, classes: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, rows)
    # Right 60% of the time, with a group-dependent tilt so that the gaps are not zero.
    groups = {
        "dialect": list(rng.choice(["standard", "regional", "creole"], rows, p=[0.5, 0.3, 0.2])),
        "gender": list(rng.choice(["f", "m"], rows)),
    }
    tilt = np.array([value == "regional" for value in groups["dialect"]])
    right = rng.random(rows) < np.where(tilt, 0.5, 0.7)
    predicted = np.where(right, truth, rng.integers(0, classes, rows))
    return truth.astype(np.int64), predicted.astype(np.int64), groups


@pytest.mark.parametrize(("seed", "classes"), [(0, 2), (1, 2), (2, 4)])
def test_agrees_with_fairlearn(seed: int, classes: int) -> None:
    truth, predicted, groups = random_rows(seed, 3000, classes)
    labels = [f"c{i}" for i in range(classes)]
    positive = ["c1"] if classes == 2 else ["c1", "c3"]
    result = audit(
        labels=labels,
        y_true=truth,
        y_pred=predicted,
        groups=groups,
        spec=BiasSpec(positive_labels=positive, min_group_size=30),
    )
    gaps = {
        "demographicParityDifference": demographic_parity_difference,
        "demographicParityRatio": demographic_parity_ratio,
        "equalizedOddsDifference": equalized_odds_difference,
        "equalOpportunityDifference": equal_opportunity_difference,
    }
    checked = 0
    for attribute, values in groups.items():
        features = np.array(values)
        for label in positive:
            class_id = labels.index(label)
            y_true, y_pred = (truth == class_id).astype(int), (predicted == class_id).astype(int)
            for name, reference in gaps.items():
                ours = next(
                    m
                    for m in result.metrics
                    if (m.name, m.attribute, m.positive_label) == (name, attribute, label)
                )
                expected = reference(y_true, y_pred, sensitive_features=features)
                assert ours.value == pytest.approx(expected, abs=1e-12, rel=0)
                checked += 1
            frame = MetricFrame(
                metrics={
                    "selection_rate": selection_rate,
                    "tpr": true_positive_rate,
                    "fpr": false_positive_rate,
                },
                y_true=y_true,
                y_pred=y_pred,
                sensitive_features=features,
            )
            for row in result.attributes[list(groups).index(attribute)].classes[label]:
                expected_row = frame.by_group.loc[row.group]
                assert row.selection_rate == pytest.approx(
                    expected_row["selection_rate"], abs=1e-12
                )
                assert row.tpr == pytest.approx(expected_row["tpr"], abs=1e-12)
                assert row.fpr == pytest.approx(expected_row["fpr"], abs=1e-12)
        accuracy = MetricFrame(
            metrics=skm.accuracy_score, y_true=truth, y_pred=predicted, sensitive_features=features
        )
        spread = metric(result, "accuracyDifference", attribute).value
        assert spread == pytest.approx(accuracy.difference(), abs=1e-12, rel=0)
    assert checked == 4 * 2 * len(positive)


# --- status and report -------------------------------------------------------------------


def test_status_validates_and_report_is_plain_json() -> None:
    result = run(GROUP_A, GROUP_B, cells("C", tp=1), cells(None, tn=3))
    status = result.to_status()
    model = BiasAuditStatus.model_validate(status)
    assert model.worst_group == "dialect=B"
    assert [g["group"] for g in status["groups"]] == ["A", "B", MISSING_GROUP, "C"]
    assert status["groups"][0] == {
        "attribute": "dialect",
        "group": "A",
        "count": 10,
        "accuracy": 0.8,
        "selectionRate": 0.6,
    }
    report = result.to_report()
    assert plain_json(report)
    json.dumps(report, allow_nan=False)
    groups = report["attributes"][0]["classes"][0]["groups"]
    assert groups[-1] == {
        "group": "C",
        "count": 1,
        "positives": 1,
        "negatives": 0,
        "accuracy": 1.0,
        "selectionRate": 1.0,
        "tpr": 1.0,
        "fpr": None,
        "sufficient": False,
    }


def test_status_keeps_within_the_api_limits_and_keeps_failures() -> None:
    rng = np.random.default_rng(3)
    rows = 2000
    truth = rng.integers(0, 2, rows).astype(np.int64)
    predicted = truth.copy()
    # 15 fair columns, then one that fails; 100 small groups in a 17th.
    groups = {f"fair{i}": list(rng.choice(["x", "y"], rows)) for i in range(15)}
    groups["skewed"] = ["low"] * 1000 + ["high"] * 1000
    predicted[:1000] = 0
    groups["postcode"] = [f"p{i % 100:03d}" for i in range(rows)]
    result = audit(
        labels=BINARY,
        y_true=truth,
        y_pred=predicted,
        groups=groups,
        spec=BiasSpec(min_group_size=30),
    )
    status = result.to_status()
    model = BiasAuditStatus.model_validate(status)
    assert len(result.metrics) == 17 * 5
    assert len(model.metrics) == MAX_STATUS_METRICS
    assert len(model.groups) == MAX_STATUS_GROUPS
    assert result.verdict == "Failed"
    assert {"attribute": "skewed", "name": "demographicParityRatio"}.items() <= next(
        row for row in status["metrics"] if row["passed"] is False
    ).items()
    assert result.worst_group == "skewed=low"
    assert any(g["group"] == "low" for g in status["groups"])


def test_long_names_are_clipped_for_the_status() -> None:
    long_class = "x" * 250
    result = run(
        GROUP_A,
        GROUP_B,
        attribute="a" * 300,
        labels=["neutral", "y", long_class],
        positive_labels=["y", long_class],
    )
    status = BiasAuditStatus.model_validate(result.to_status())
    assert all(len(m.name) <= 128 and len(m.attribute) <= 256 for m in status.metrics)


# --- counterfactual swaps ----------------------------------------------------------------

HE_SHE = CounterfactualPair(term="he", counterpart="she")
RECKON = CounterfactualPair(term="I reckon", counterpart="I think")
THE = CounterfactualPair(term="the", counterpart="a")


def test_swaps_both_ways_in_one_pass_keeping_the_first_letters_case() -> None:
    swapped = swap_terms(["He said she would", "she knew HE was"], [HE_SHE])
    assert swapped.texts == ["She said he would", "he knew SHE was"]
    assert swapped.changed.tolist() == [True, True]
    assert swapped.term_to_counterpart.tolist() == [[True], [True]]
    assert swapped.counterpart_to_term.tolist() == [[True], [True]]


def test_swaps_phrases_longest_first() -> None:
    pairs = [CounterfactualPair(term="reckon", counterpart="suppose"), RECKON]
    swapped = swap_terms(["I reckon so", "I  think so", "we reckon", "I suppose"], pairs)
    assert swapped.texts == ["I think so", "I reckon so", "we suppose", "I reckon"]
    assert [swapped.pairs_fired(i) for i in range(4)] == [[1], [1], [0], [0]]


def test_swaps_whole_words_only() -> None:
    texts = ["there is the other one", "Theme: she-wolf (he)", "nothing here", "shed"]
    swapped = swap_terms(texts, [HE_SHE, THE])
    assert swapped.texts == [
        "there is a other one",
        "Theme: he-wolf (she)",
        "nothing here",
        "shed",
    ]
    assert swapped.changed.tolist() == [True, True, False, False]
    assert swapped.fired.tolist() == [[False, True], [True, False], [False, False], [False, False]]


def test_swaps_without_pairs_change_nothing() -> None:
    swapped = swap_terms(["he"], [])
    assert swapped.texts == ["he"]
    assert swapped.changed.tolist() == [False]
    assert swapped.fired.shape == (1, 0)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([HE_SHE, CounterfactualPair(term="She", counterpart="they")], r"'She' is already in"),
        ([CounterfactualPair(term="he", counterpart="HE")], "swaps 'he' for itself"),
    ],
)
def test_pairs_that_cannot_swap_back_are_refused(
    pairs: list[CounterfactualPair], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        swap_terms(["he"], pairs)


COUNTERFACTUAL_TEXTS = [
    "he is calm",  # he -> she: flips to positive, P(positive) 0.40 -> 0.70
    "she is calm",  # she -> he: stays positive, 0.80 -> 0.60
    "nobody is calm",  # unchanged: its (different) swapped scores are ignored
    "he told her",  # he -> she only ("her" is no pair): 0.30 -> 0.35
    "I reckon he said she",  # both pairs, he/she both ways: flips, 0.45 -> 0.55
]
ORIGINAL = np.array([[0.6, 0.4], [0.2, 0.8], [0.9, 0.1], [0.7, 0.3], [0.55, 0.45]])
SWAPPED = np.array([[0.3, 0.7], [0.4, 0.6], [0.1, 0.9], [0.65, 0.35], [0.45, 0.55]])


def test_counterfactual_flip_rate_and_mean_shift() -> None:
    swapped = swap_terms(COUNTERFACTUAL_TEXTS, [HE_SHE, RECKON])
    assert swapped.changed.tolist() == [True, True, False, True, True]
    result = counterfactual_result(ORIGINAL, SWAPPED, swapped, [HE_SHE, RECKON], [1])
    assert (result.texts, result.changed, result.flips) == (5, 4, 2)
    assert result.flip_rate == pytest.approx(0.5)
    he_she, reckon = result.pairs
    assert (he_she.texts, he_she.flips, he_she.term_to_counterpart) == (4, 2, 2)
    assert he_she.counterpart_to_term == 1
    assert he_she.flip_rate == pytest.approx(0.5)
    # P(positive | she version) - P(positive | he version) over the one-way texts:
    # +0.30 (he -> she), +0.20 (she -> he: 0.80 with she vs 0.60 with he), +0.05.
    assert he_she.mean_shift == pytest.approx((0.30 + 0.20 + 0.05) / 3)
    assert he_she.mean_absolute_shift == pytest.approx((0.30 + 0.20 + 0.05) / 3)
    assert (reckon.texts, reckon.flips, reckon.flip_rate) == (1, 1, 1.0)
    assert reckon.mean_shift == pytest.approx(0.10)
    report = result.to_report()
    assert plain_json(report)
    json.dumps(report, allow_nan=False)


def test_counterfactual_sums_several_positive_classes() -> None:
    swapped = swap_terms(["he", "she"], [HE_SHE])
    original = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    counter = np.array([[0.2, 0.4, 0.4], [0.6, 0.2, 0.2]])
    result = counterfactual_result(original, counter, swapped, [HE_SHE], [1, 2])
    # he -> she: 0.5 -> 0.8 (+0.3); she -> he: 0.8 with she vs 0.4 with he (+0.4).
    assert result.pairs[0].mean_shift == pytest.approx(0.35)
    assert result.flips == 2


def test_counterfactual_with_nothing_changed_has_no_rates() -> None:
    swapped = swap_terms(["nobody"], [HE_SHE])
    scores = np.array([[0.5, 0.5]])
    result = counterfactual_result(scores, scores, swapped, [HE_SHE], [1])
    assert (result.changed, result.flip_rate) == (0, None)
    assert (result.pairs[0].flip_rate, result.pairs[0].mean_shift) == (None, None)
    json.dumps(result.to_report(), allow_nan=False)


@pytest.mark.parametrize(
    ("original", "counter", "positive", "message"),
    [
        (np.array([[2.0, -1.0]]), np.array([[0.5, 0.5]]), [1], "probabilities"),
        (np.array([[0.5, 0.5]]), np.array([[0.5, np.nan]]), [1], "probabilities"),
        (np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]), [2], r"classes 0\.\.1"),
        (np.array([[0.5, 0.5]]), np.array([0.5, 0.5]), [1], "arrays for the 1 texts"),
    ],
)
def test_counterfactual_scores_must_be_aligned_probabilities(
    original: npt.NDArray[np.float64],
    counter: npt.NDArray[np.float64],
    positive: list[int],
    message: str,
) -> None:
    swapped = swap_terms(["he"], [HE_SHE])
    with pytest.raises(ValueError, match=message):
        counterfactual_result(original, counter, swapped, [HE_SHE], positive)


def test_the_audit_reports_the_counterfactual_result() -> None:
    swapped = swap_terms(COUNTERFACTUAL_TEXTS, [HE_SHE, RECKON])
    counterfactual = counterfactual_result(ORIGINAL, SWAPPED, swapped, [HE_SHE, RECKON], [1])
    result = run(GROUP_A, GROUP_B, counterfactual=counterfactual)
    assert result.message.endswith("; counterfactual swaps flipped 2 of 4 predictions (0.500)")
    flip = by_name(result)["counterfactualFlipRate"]
    assert flip == {
        "name": "counterfactualFlipRate",
        "attribute": "counterfactuals",
        "value": 0.5,
        "threshold": None,
        "passed": None,
    }
    assert result.to_report()["counterfactual"]["pairs"][1]["term"] == "I reckon"
    BiasAuditStatus.model_validate(result.to_status())


GENDER = [
    CounterfactualPair(term="John", counterpart="Mary", attribute="gender"),
    CounterfactualPair(term="himself", counterpart="herself", attribute="gender"),
]
NAME = [CounterfactualPair(term="John", counterpart="Adam", attribute="name")]


def swapped_by_attribute(texts: list[str]) -> dict[str | None, list[str]]:
    return {
        attribute: swap_terms(texts, pairs).texts
        for attribute, pairs in counterfactual_sets([*GENDER, *NAME])
    }


def test_pairs_of_different_attributes_are_never_swapped_in_one_sentence() -> None:
    texts = ["John found himself", "Mary found herself alone", "nobody"]
    assert swapped_by_attribute(texts) == {
        "gender": ["Mary found herself", "John found himself alone", "nobody"],
        "name": ["Adam found himself", "Mary found herself alone", "nobody"],
    }
    every_copy = [text for copies in swapped_by_attribute(texts).values() for text in copies]
    assert "Adam found herself" not in every_copy
    with pytest.raises(ValueError, match="vary 2 attributes; swap each attribute's pairs apart"):
        swap_terms(texts, [*GENDER, *NAME])


def test_pairs_without_an_attribute_are_one_set_as_before() -> None:
    sets = counterfactual_sets([HE_SHE, GENDER[1], RECKON])
    assert sets == [(None, [HE_SHE, RECKON]), ("gender", [GENDER[1]])]


def test_each_attribute_is_measured_and_reported_apart() -> None:
    texts = ["John found himself", "John is calm", "he left"]
    original = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    # gender copies: "Mary found herself" flips, "Mary is calm" stays; name: only "Adam is
    # calm" ("Adam found himself" stays), it flips.
    by_gender = np.array([[0.2, 0.8], [0.4, 0.6], [0.5, 0.5]])
    by_name = np.array([[0.7, 0.3], [0.9, 0.1], [0.5, 0.5]])
    results = [
        counterfactual_result(original, scores, swap_terms(texts, pairs), pairs, [1])
        for (_, pairs), scores in zip(
            counterfactual_sets([*GENDER, *NAME]), [by_gender, by_name], strict=True
        )
    ]
    combined = combined_counterfactuals(results)
    assert (combined.texts, combined.changed, combined.flips) == (3, 4, 2)
    assert [(a.attribute, a.changed, a.flips, a.flip_rate) for a in combined.attributes] == [
        ("gender", 2, 1, 0.5),
        ("name", 2, 1, 0.5),
    ]
    assert [(p.attribute, p.term, p.counterpart) for p in combined.pairs] == [
        ("gender", "John", "Mary"),
        ("gender", "himself", "herself"),
        ("name", "John", "Adam"),
    ]
    result = run(GROUP_A, GROUP_B, counterfactual=combined)
    assert result.message.endswith(
        "; counterfactual swaps flipped 2 of 4 predictions (0.500, gender 0.500, name 0.500)"
    )
    status = result.to_status()
    flips = [m for m in status["metrics"] if m["name"] == "counterfactualFlipRate"]
    assert [(m["attribute"], m["value"]) for m in flips] == [("gender", 0.5), ("name", 0.5)]
    BiasAuditStatus.model_validate(status)
    json.dumps(result.to_report(), allow_nan=False)


def test_missing_group_name_matches_the_data_stage() -> None:
    from kubetune_trainer.data import MISSING_GROUP as DATA_MISSING_GROUP

    assert MISSING_GROUP == DATA_MISSING_GROUP
