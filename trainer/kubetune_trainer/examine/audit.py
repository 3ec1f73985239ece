"""The bias audit: do the fine-tuned model's predictions treat the sensitive groups alike?

A model can score well overall and still select one dialect or gender for the favourable
class far less often than another. After training, this module compares the groups of
each sensitive column (`data.sensitiveColumns`) on the audit rows: per group the count,
accuracy, selection rate, true- and false-positive rate; across groups the gaps that
fairlearn names (demographic parity difference and ratio, equalized odds difference,
equal opportunity difference) and the accuracy difference. The gaps with a threshold in
`bias.thresholds` are gated; the rest are reported. `audit` returns a verdict the
trainer writes to `status.biasAudit` (the operator turns it into the BiasAuditPassed
condition) and everything behind it for report.json.

Positive classes are the favourable outcomes (`bias.positiveLabels`, else the second
label of a binary task); a multi-class task is audited one-vs-rest for each of them.
Gaps compare only the groups that can be judged: a group with fewer than
`bias.minGroupSize` rows is reported with its numbers but left out, because a rate over
a handful of rows is noise that would fail (or clear) a model by chance. The "(missing)"
group, the rows without a value, is reported and never judged: it is not a group of
people but a mix of unknown members of every group, so a gap against it says nothing
about how any group is treated (a large missing share is a data problem the data report
shows). Where a rate is undefined (the true-positive rate of a group without positive
rows) it is None, never NaN, and the evidence says why.

Metric names are those of bias.thresholds in camelCase. With several positive classes the
class follows in brackets (`demographicParityRatio[joy]`), so that each status metric is
still told apart by its name and attribute; accuracyDifference is over all classes and
keeps its plain name. The worst group is the disadvantaged end of the gap the verdict is
about (the worst failure, else the tightest pass): positive classes being the favourable
outcomes, it is the group with the lowest selection rate, TPR, FPR or accuracy.

The per-group numbers are the definitions of fairlearn's `selection_rate`,
`true_positive_rate`, `false_positive_rate` and gaps (max minus min, min over max),
computed here from per-group confusion counts with one `np.bincount` per class and
column (the unit tests check them against fairlearn to 1e-12). Two reasons not to call
`MetricFrame` itself: it reports the true-positive rate of a group without positive rows
as 0.0 (sklearn's normalised confusion matrix turns 0/0 into 0), which would fail a fair
model on a made-up equal-opportunity gap of up to 1; and it costs about a second per
column and class on 100k rows, where the counts take milliseconds.

The counterfactual audit swaps terms in the audit texts ("he" <-> "she", `swap_terms`)
and measures how often the model's prediction flips and how far the favourable class's
probability moves (`counterfactual_result`); the recipe runs the model on the swapped
texts. Pairs of different attributes (a gender swap, a name swap) are swapped in separate
copies of a text (`counterfactual_sets`): swapping both at once would make sentences that
no benchmark holds ("John found himself" -> "Adam found herself"), and mix two effects in
one flip rate. Like diagnosis.py this module is pure: no torch, numpy arrays in, plain data out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from kubetune_trainer.config import MISSING_GROUP, BiasSpec, CounterfactualPair, TrainingConfig
from kubetune_trainer.data.rows import DataError

COUNTERFACTUAL_ATTRIBUTE = "counterfactuals"
"""The attribute of the counterfactual flip rate in status.biasAudit.metrics."""
# The limits of the status model (kubetune_operator.api.v1alpha1.BiasAuditStatus).
MAX_STATUS_METRICS = 64
MAX_STATUS_GROUPS = 64
MAX_NAME_CHARS = 128
MAX_ATTRIBUTE_CHARS = 256
MAX_WORST_GROUP_CHARS = 512
MAX_MESSAGE_CHARS = 4096
STATUS_DECIMALS = 6
"""Decimals of the numbers in status (the passed flags are decided on the exact values)."""
GATE_TOLERANCE = 1e-12
"""Rates are ratios of counts: rounding must not fail a value exactly at its threshold."""
PROBABILITY_TOLERANCE = 1e-6
"""How far outside [0, 1] a score may stray (float32 softmax) before it is taken for a logit."""

AuditVerdict = Literal["Passed", "Failed", "InsufficientData"]
MetricName = Literal[
    "demographicParityDifference",
    "demographicParityRatio",
    "equalizedOddsDifference",
    "equalOpportunityDifference",
    "accuracyDifference",
]
Rate = Literal["selectionRate", "tpr", "fpr", "accuracy"]

THRESHOLD_FIELDS: dict[MetricName, str] = {
    "demographicParityDifference": "demographic_parity_difference",
    "demographicParityRatio": "demographic_parity_ratio",
    "equalizedOddsDifference": "equalized_odds_difference",
    "equalOpportunityDifference": "equal_opportunity_difference",
    "accuracyDifference": "accuracy_difference",
}
"""Each metric's field in bias.thresholds."""
RATIO_METRICS: frozenset[str] = frozenset({"demographicParityRatio"})
"""Metrics that pass at or above their threshold; the others pass at or below it."""
_RATE_NAMES: dict[Rate, str] = {
    "selectionRate": "selection rate",
    "tpr": "TPR",
    "fpr": "FPR",
    "accuracy": "accuracy",
}


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupStats:
    """One group of a sensitive column, over all classes."""

    group: str
    count: int
    accuracy: float
    """Share of the group's rows whose predicted class is the true class."""
    selection_rate: float
    """Share of the group's rows predicted as any positive class."""
    sufficient: bool
    """At least bias.minGroupSize rows."""
    judged: bool
    """Takes part in the gaps: sufficient, and not the (missing) group."""

    def to_report(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "count": self.count,
            "accuracy": self.accuracy,
            "selectionRate": self.selection_rate,
            "sufficient": self.sufficient,
            "judged": self.judged,
        }


@dataclass(frozen=True)
class ClassGroupStats:
    """One group's one-vs-rest numbers for one positive class."""

    group: str
    count: int
    positives: int
    """Rows whose true class is the positive class."""
    negatives: int
    accuracy: float
    """The group's accuracy (all classes; the same for every positive class)."""
    selection_rate: float
    tpr: float | None
    """None when the group has no positive rows."""
    fpr: float | None
    """None when the group has no negative rows."""
    sufficient: bool

    def rate(self, rate: Rate) -> float | None:
        values = {
            "selectionRate": self.selection_rate,
            "tpr": self.tpr,
            "fpr": self.fpr,
            "accuracy": self.accuracy,
        }
        return values[rate]

    def to_report(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "count": self.count,
            "positives": self.positives,
            "negatives": self.negatives,
            "accuracy": self.accuracy,
            "selectionRate": self.selection_rate,
            "tpr": self.tpr,
            "fpr": self.fpr,
            "sufficient": self.sufficient,
        }


@dataclass(frozen=True)
class AttributeAudit:
    """A sensitive column: its groups, overall and per positive class."""

    attribute: str
    groups: list[GroupStats]
    """Largest first (ties by name)."""
    classes: dict[str, list[ClassGroupStats]]
    """Positive class -> its groups, in the order of `groups`."""
    judged: bool
    """At least two groups could be judged."""
    reason: str = ""
    """Why the column could not be judged."""

    def to_report(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "judged": self.judged,
            "reason": self.reason,
            "groups": [group.to_report() for group in self.groups],
            "classes": [
                {"positiveLabel": label, "groups": [group.to_report() for group in groups]}
                for label, groups in self.classes.items()
            ],
        }


@dataclass(frozen=True)
class Extreme:
    """A group at one end of a gap, with the rate that puts it there."""

    group: str
    value: float


@dataclass(frozen=True)
class AuditMetric:
    """One gap across the judged groups of a column, against its threshold."""

    name: MetricName
    attribute: str
    positive_label: str | None
    """The positive class (one-vs-rest); None for accuracyDifference (all classes)."""
    value: float | None
    threshold: float | None
    passed: bool | None
    """None when not gated (no threshold) or not measured (value None)."""
    reason: str = ""
    """Why the value is None."""
    rate: Rate = "selectionRate"
    """The per-group rate behind the gap (equalized odds: the wider of TPR and FPR)."""
    low: Extreme | None = None
    """The judged group with the lowest rate: the disadvantaged end."""
    high: Extreme | None = None

    @property
    def gated(self) -> bool:
        return self.threshold is not None

    def margin(self) -> float | None:
        """How far inside the threshold the value is (negative: how far outside)."""
        if self.value is None or self.threshold is None:
            return None
        if self.name in RATIO_METRICS:
            return self.value - self.threshold
        return self.threshold - self.value

    def status_name(self, several_classes: bool) -> str:
        """The name in status: the class in brackets when several classes are audited."""
        if not several_classes or self.positive_label is None:
            return self.name
        room = MAX_NAME_CHARS - len(self.name) - 2
        return f"{self.name}[{_clip(self.positive_label, room)}]"

    def to_report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "attribute": self.attribute,
            "positiveLabel": self.positive_label,
            "value": self.value,
            "threshold": self.threshold,
            "passed": self.passed,
            "reason": self.reason,
            "rate": self.rate,
            "low": None if self.low is None else vars(self.low).copy(),
            "high": None if self.high is None else vars(self.high).copy(),
        }


@dataclass(frozen=True)
class CounterfactualTexts:
    """Texts with each counterfactual pair swapped, and which pairs fired where."""

    texts: list[str]
    """The swapped texts, aligned with the input (unchanged texts as they were)."""
    changed: npt.NDArray[np.bool_]
    """(texts,) True where a swap changed the text."""
    term_to_counterpart: npt.NDArray[np.bool_]
    """(texts, pairs) True where the text had the pair's term (now its counterpart)."""
    counterpart_to_term: npt.NDArray[np.bool_]
    """(texts, pairs) True where the text had the pair's counterpart (now its term)."""

    @property
    def fired(self) -> npt.NDArray[np.bool_]:
        """(texts, pairs) True where the pair swapped anything, in either direction."""
        return self.term_to_counterpart | self.counterpart_to_term

    def pairs_fired(self, index: int) -> list[int]:
        """The pairs (indices into the pairs given to swap_terms) that fired in one text."""
        return [int(pair) for pair in np.flatnonzero(self.fired[index])]


@dataclass(frozen=True)
class PairResult:
    """What swapping one pair did to the predictions of the texts it fired in."""

    term: str
    counterpart: str
    texts: int
    """Texts the pair fired in (either direction)."""
    flips: int
    """Of those, texts whose predicted class changed."""
    flip_rate: float | None
    term_to_counterpart: int
    """Texts that had only the term (one direction)."""
    counterpart_to_term: int
    """Texts that had only the counterpart."""
    mean_shift: float | None
    """Mean of P(positive | counterpart version) - P(positive | term version) over the
    one-direction texts: positive means the counterpart raises the favourable outcome."""
    mean_absolute_shift: float | None
    attribute: str | None = None
    """What the pair varies (bias.counterfactuals[].attribute), if named."""

    def to_report(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "term": self.term,
            "counterpart": self.counterpart,
            "texts": self.texts,
            "flips": self.flips,
            "flipRate": self.flip_rate,
            "termToCounterpart": self.term_to_counterpart,
            "counterpartToTerm": self.counterpart_to_term,
            "meanShift": self.mean_shift,
            "meanAbsoluteShift": self.mean_absolute_shift,
        }


@dataclass(frozen=True)
class AttributeFlips:
    """The flips of one attribute's set of pairs, swapped in copies of their own."""

    attribute: str | None
    changed: int
    """Texts this set's swaps changed."""
    flips: int
    flip_rate: float | None

    def to_report(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "changed": self.changed,
            "flips": self.flips,
            "flipRate": self.flip_rate,
        }


@dataclass(frozen=True)
class CounterfactualResult:
    """How the predictions moved when the counterfactual pairs were swapped."""

    texts: int
    """Audit texts."""
    changed: int
    """Swapped copies that differ from their text (one per text and attribute set): the
    only ones measured."""
    flips: int
    flip_rate: float | None
    """Share of the changed copies whose predicted class (argmax) changed."""
    pairs: list[PairResult]
    attributes: list[AttributeFlips] = field(default_factory=list)
    """Each attribute set's own flips, in the order of bias.counterfactuals."""

    def to_report(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "changed": self.changed,
            "flips": self.flips,
            "flipRate": self.flip_rate,
            "attributes": [flips.to_report() for flips in self.attributes],
            "pairs": [pair.to_report() for pair in self.pairs],
            "meanShiftDirection": (
                "P(positive | text with the counterpart) - P(positive | text with the term), "
                "over the texts that had only one of the two"
            ),
        }


@dataclass(frozen=True)
class BiasAudit:
    """The audit's verdict, the numbers behind it, and its status and report forms."""

    verdict: AuditVerdict
    positive_labels: list[str]
    min_group_size: int
    attributes: list[AttributeAudit]
    metrics: list[AuditMetric]
    worst_group: str
    """The disadvantaged group of the failing (or tightest) metric, as attribute=value."""
    message: str
    evidence: list[str] = field(default_factory=list)
    """Why columns or metrics could not be judged."""
    counterfactual: CounterfactualResult | None = None

    def passed(self) -> bool:
        """True only for Passed: InsufficientData is not a pass."""
        return self.verdict == "Passed"

    def to_status(self) -> dict[str, Any]:
        """status.biasAudit: the verdict, the metrics and the largest groups, within the limits."""
        return {
            "verdict": self.verdict,
            "worstGroup": _clip(self.worst_group, MAX_WORST_GROUP_CHARS),
            "metrics": self._status_metrics(),
            "groups": self._status_groups(),
            "message": _clip(self.message, MAX_MESSAGE_CHARS),
        }

    def to_report(self) -> dict[str, Any]:
        """Everything, JSON-safe (no NaN, no numpy scalars), for report.json."""
        several = len(self.positive_labels) > 1
        return {
            "verdict": self.verdict,
            "worstGroup": self.worst_group,
            "message": self.message,
            "positiveLabels": self.positive_labels,
            "minGroupSize": self.min_group_size,
            "missingGroup": MISSING_GROUP,
            "attributes": [attribute.to_report() for attribute in self.attributes],
            "metrics": [
                {"statusName": metric.status_name(several), **metric.to_report()}
                for metric in self.metrics
            ],
            "evidence": self.evidence,
            "counterfactual": None
            if self.counterfactual is None
            else self.counterfactual.to_report(),
        }

    def _status_metrics(self) -> list[dict[str, Any]]:
        """Failed, unmeasured and gated metrics first when they do not all fit, in audit order."""
        several = len(self.positive_labels) > 1
        rows = [
            (
                _status_priority(metric),
                {
                    "name": metric.status_name(several),
                    "attribute": _clip(metric.attribute, MAX_ATTRIBUTE_CHARS),
                    "value": _rounded(metric.value),
                    "threshold": metric.threshold,
                    "passed": metric.passed,
                },
            )
            for metric in self.metrics
        ]
        if self.counterfactual is not None:
            rows += [(2, _counterfactual_metric(flips)) for flips in self.counterfactual.attributes]
        kept = sorted(range(len(rows)), key=lambda i: (rows[i][0], i))[:MAX_STATUS_METRICS]
        return [rows[i][1] for i in sorted(kept)]

    def _status_groups(self) -> list[dict[str, Any]]:
        """The largest groups first (ties in audit order); the worst group always among them."""
        ranked = [
            (attribute.attribute, group)
            for attribute in self.attributes
            for group in attribute.groups
        ]
        order = sorted(range(len(ranked)), key=lambda i: -ranked[i][1].count)
        worst = [i for i in order if _group_id(*ranked[i]) == self.worst_group]
        kept = set((worst + [i for i in order if i not in worst])[:MAX_STATUS_GROUPS])
        return [_status_group(*ranked[i]) for i in order if i in kept]


def _group_id(attribute: str, group: GroupStats) -> str:
    return f"{attribute}={group.group}"


def _status_group(attribute: str, group: GroupStats) -> dict[str, Any]:
    return {
        "attribute": _clip(attribute, MAX_ATTRIBUTE_CHARS),
        "group": _clip(group.group, MAX_ATTRIBUTE_CHARS),
        "count": group.count,
        "accuracy": _rounded(group.accuracy),
        "selectionRate": _rounded(group.selection_rate),
    }


def _rounded(value: float | None) -> float | None:
    """Status numbers to STATUS_DECIMALS (kubectl shows them); report.json keeps them exact."""
    return None if value is None else round(value, STATUS_DECIMALS)


def _status_priority(metric: AuditMetric) -> int:
    if metric.passed is False:
        return 0
    if metric.gated:
        return 1 if metric.value is None else 2
    return 3


def _counterfactual_metric(flips: AttributeFlips) -> dict[str, Any]:
    return {
        "name": "counterfactualFlipRate",
        "attribute": _clip(flips.attribute or COUNTERFACTUAL_ATTRIBUTE, MAX_ATTRIBUTE_CHARS),
        "value": _rounded(flips.flip_rate),
        "threshold": None,
        "passed": None,
    }


# --- the audit ---------------------------------------------------------------------------


def audit(
    *,
    labels: Sequence[str],
    y_true: npt.NDArray[np.int64],
    y_pred: npt.NDArray[np.int64],
    groups: Mapping[str, Sequence[str | None]],
    spec: BiasSpec,
    counterfactual: CounterfactualResult | None = None,
) -> BiasAudit:
    """Audit predictions over the sensitive columns.

    `labels` are the class names in class-id order; `y_true` and `y_pred` the true and
    predicted class ids of the audit rows; `groups` each sensitive column's value per row
    (None or "" for no value). Raises ValueError for inputs that do not fit together, or
    positive classes that cannot be chosen (bias.positiveLabels).
    """
    if not groups:
        raise ValueError("the audit needs at least one sensitive column (data.sensitiveColumns)")
    truth, predicted = _checked_predictions(y_true, y_pred, len(labels))
    positive = positive_classes(labels, spec)
    ids = {label: index for index, label in enumerate(labels)}
    attributes, metrics, evidence = [], [], []
    for attribute, values in groups.items():
        names, codes = _group_codes(values, len(truth), attribute)
        result = _attribute_result(
            attribute, names, codes, truth, predicted, [(p, ids[p]) for p in positive], spec
        )
        attributes.append(result)
        measured = _attribute_metrics(result, spec)
        metrics += measured
        if not result.judged:
            evidence.append(f"{attribute}: {result.reason}")
        else:
            evidence += [
                _metric_evidence(m, len(positive) > 1) for m in measured if m.value is None
            ]
    return _judged(positive, spec, attributes, metrics, evidence, counterfactual)


def check_positive_labels(config: TrainingConfig, labels: Sequence[str]) -> None:
    """Refuse, before any training, a classifier's bias section that its classes cannot audit."""
    if config.bias is None or config.model.task == "causal-lm":
        return
    try:
        positive_classes(labels, config.bias)
    except ValueError as error:
        raise DataError(f"bias.positiveLabels: {error}") from None


def positive_classes(labels: Sequence[str], spec: BiasSpec) -> list[str]:
    """bias.positiveLabels, else the second label of a binary task."""
    if spec.positive_labels:
        unknown = [label for label in spec.positive_labels if label not in labels]
        if unknown:
            raise ValueError(
                f"bias.positiveLabels names {unknown[0]!r}, which is not a class of the "
                f"model ({', '.join(labels)})"
            )
        return list(dict.fromkeys(spec.positive_labels))
    if len(labels) == 2:
        return [labels[1]]
    raise ValueError(
        f"bias.positiveLabels is required for a task with {len(labels)} classes "
        f"({', '.join(labels)}): name the favourable outcomes"
    )


def _checked_predictions(
    y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64], classes: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    truth = np.asarray(y_true, dtype=np.int64)
    predicted = np.asarray(y_pred, dtype=np.int64)
    if truth.ndim != 1 or truth.shape != predicted.shape:
        raise ValueError(
            f"y_true and y_pred must be 1-D and aligned; got {truth.shape} and {predicted.shape}"
        )
    for name, values in (("y_true", truth), ("y_pred", predicted)):
        if values.size and (values.min() < 0 or values.max() >= classes):
            raise ValueError(f"{name} holds class ids outside 0..{classes - 1}")
    return truth, predicted


def _group_codes(
    values: Sequence[str | None], rows: int, attribute: str
) -> tuple[list[str], npt.NDArray[np.intp]]:
    """Group names, largest first (ties by name), and each row's index into them."""
    if len(values) != rows:
        raise ValueError(f"sensitive column {attribute!r} has {len(values)} values for {rows} rows")
    text = np.array([MISSING_GROUP if v is None or v == "" else str(v) for v in values], dtype=str)
    names, codes = np.unique(text, return_inverse=True)
    counts = np.bincount(codes, minlength=len(names))
    order = np.lexsort((names, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return [str(name) for name in names[order]], rank[codes.reshape(-1)]


def _attribute_result(
    attribute: str,
    names: list[str],
    codes: npt.NDArray[np.intp],
    truth: npt.NDArray[np.int64],
    predicted: npt.NDArray[np.int64],
    positive: list[tuple[str, int]],
    spec: BiasSpec,
) -> AttributeAudit:
    size = len(names)
    count = np.bincount(codes, minlength=size)
    accuracy = np.bincount(codes, weights=truth == predicted, minlength=size) / count
    selected = np.isin(predicted, [class_id for _, class_id in positive])
    selection = np.bincount(codes, weights=selected, minlength=size) / count
    sufficient = count >= spec.min_group_size
    judged = sufficient & (np.array(names, dtype=str) != MISSING_GROUP)
    groups = [
        GroupStats(name, int(n), float(a), float(s), bool(ok), bool(j))
        for name, n, a, s, ok, j in zip(
            names, count, accuracy, selection, sufficient, judged, strict=True
        )
    ]
    classes = {
        label: _class_groups(names, codes, truth == class_id, predicted == class_id, accuracy, spec)
        for label, class_id in positive
    }
    judgeable = int(judged.sum())
    reason = "" if judgeable >= 2 else _too_few_groups(groups, spec.min_group_size)
    return AttributeAudit(attribute, groups, classes, judgeable >= 2, reason)


def _class_groups(
    names: list[str],
    codes: npt.NDArray[np.intp],
    truth: npt.NDArray[np.bool_],
    predicted: npt.NDArray[np.bool_],
    accuracy: npt.NDArray[np.float64],
    spec: BiasSpec,
) -> list[ClassGroupStats]:
    """One-vs-rest confusion counts per group, from one bincount: tn, fp, fn, tp."""
    cells = codes * 4 + truth.astype(np.intp) * 2 + predicted.astype(np.intp)
    tn, fp, fn, tp = np.bincount(cells, minlength=4 * len(names)).reshape(-1, 4).T
    return [
        ClassGroupStats(
            group=name,
            count=int(n),
            positives=int(pos),
            negatives=int(neg),
            accuracy=float(acc),
            selection_rate=float((fp_ + tp_) / n),
            tpr=_rate(tp_, pos),
            fpr=_rate(fp_, neg),
            sufficient=bool(n >= spec.min_group_size),
        )
        for name, n, pos, neg, acc, fp_, tp_ in zip(
            names, tn + fp + fn + tp, fn + tp, tn + fp, accuracy, fp, tp, strict=True
        )
    ]


def _rate(hits: np.int64, total: np.int64) -> float | None:
    return float(hits / total) if total else None


def _too_few_groups(groups: list[GroupStats], min_group_size: int) -> str:
    judged = [f"{g.group} {g.count}" for g in groups if g.judged]
    small = [
        f"{g.group} {g.count}" for g in groups if not g.sufficient and g.group != MISSING_GROUP
    ]
    missing = [g.count for g in groups if g.group == MISSING_GROUP]
    parts = [
        f"{len(judged)} group{'' if len(judged) == 1 else 's'} with at least {min_group_size} rows"
        + (f" ({', '.join(judged)})" if judged else ""),
        f"too small: {', '.join(small)}" if small else "",
        f"{missing[0]} rows without a value, never judged" if missing else "",
    ]
    return "; ".join(part for part in parts if part) + "; a gap needs 2 groups"


# --- the gaps ----------------------------------------------------------------------------


def _attribute_metrics(result: AttributeAudit, spec: BiasSpec) -> list[AuditMetric]:
    metrics: list[AuditMetric] = []
    judged = {group.group for group in result.groups if group.judged}
    for label, class_groups in result.classes.items():
        rows = [row for row in class_groups if row.group in judged]
        metrics += _class_metrics(result, label, rows, spec)
    accuracy_rows = [row for row in next(iter(result.classes.values())) if row.group in judged]
    metrics.append(_gap(result, "accuracyDifference", None, accuracy_rows, "accuracy", spec))
    return metrics


def _class_metrics(
    result: AttributeAudit, label: str, rows: list[ClassGroupStats], spec: BiasSpec
) -> list[AuditMetric]:
    return [
        _gap(result, "demographicParityDifference", label, rows, "selectionRate", spec),
        _gap(result, "demographicParityRatio", label, rows, "selectionRate", spec),
        _equalized_odds(result, label, rows, spec),
        _gap(result, "equalOpportunityDifference", label, rows, "tpr", spec),
    ]


def _extremes(rows: list[ClassGroupStats], rate: Rate) -> tuple[Extreme, Extreme] | None:
    """The judged groups with the lowest and the highest defined rate (ties: the larger group)."""
    defined = [(value, row.group) for row in rows if (value := row.rate(rate)) is not None]
    if len(defined) < 2:
        return None
    low = min(defined, key=lambda item: item[0])
    high = max(defined, key=lambda item: item[0])
    return Extreme(low[1], low[0]), Extreme(high[1], high[0])


def _gap(
    result: AttributeAudit,
    name: MetricName,
    label: str | None,
    rows: list[ClassGroupStats],
    rate: Rate,
    spec: BiasSpec,
) -> AuditMetric:
    """Max minus min (or min over max) of a rate over the judged groups that define it."""
    threshold: float | None = getattr(spec.thresholds, THRESHOLD_FIELDS[name])
    unmeasured = AuditMetric(name, result.attribute, label, None, threshold, None, "", rate)
    ends = _extremes(rows, rate)
    if ends is None:
        return replace(unmeasured, reason=result.reason or _undefined_rate(rows, rate))
    low, high = ends
    if name not in RATIO_METRICS:
        return _gated(replace(unmeasured, value=high.value - low.value, low=low, high=high))
    if high.value == 0:
        why = "no judged group was predicted positive: the ratio is 0/0"
        return replace(unmeasured, reason=why, low=low, high=high)
    return _gated(replace(unmeasured, value=low.value / high.value, low=low, high=high))


def _equalized_odds(
    result: AttributeAudit, label: str, rows: list[ClassGroupStats], spec: BiasSpec
) -> AuditMetric:
    """The wider of the TPR and FPR gaps (fairlearn's worst_case); None unless both exist."""
    tpr = _gap(result, "equalizedOddsDifference", label, rows, "tpr", spec)
    fpr = _gap(result, "equalizedOddsDifference", label, rows, "fpr", spec)
    if tpr.value is None or fpr.value is None:
        why = "; ".join(metric.reason for metric in (tpr, fpr) if metric.value is None)
        return replace(tpr, value=None, passed=None, reason=why, low=None, high=None)
    return tpr if tpr.value >= fpr.value else fpr


def _gated(metric: AuditMetric) -> AuditMetric:
    margin = metric.margin()
    return metric if margin is None else replace(metric, passed=margin >= -GATE_TOLERANCE)


def _undefined_rate(rows: list[ClassGroupStats], rate: Rate) -> str:
    what = {"tpr": "positive", "fpr": "negative"}.get(rate)
    if what is None:
        return "fewer than 2 judged groups"
    lacking = [row.group for row in rows if row.rate(rate) is None]
    return (
        f"{_RATE_NAMES[rate]} is undefined for a group without {what} rows "
        f"({', '.join(lacking) or 'none'}); fewer than 2 judged groups have one"
    )


def _metric_evidence(metric: AuditMetric, several: bool) -> str:
    return f"{metric.status_name(several)} for {metric.attribute} not measured: {metric.reason}"


# --- the verdict -------------------------------------------------------------------------


def _judged(
    positive: list[str],
    spec: BiasSpec,
    attributes: list[AttributeAudit],
    metrics: list[AuditMetric],
    evidence: list[str],
    counterfactual: CounterfactualResult | None,
) -> BiasAudit:
    failed = [m for m in metrics if m.passed is False]
    unmeasured = [m for m in metrics if m.gated and m.value is None]
    unjudged = [a for a in attributes if not a.judged]
    verdict: AuditVerdict = (
        "Failed" if failed else "InsufficientData" if unjudged or unmeasured else "Passed"
    )
    headline = _headline(metrics, failed)
    several = len(positive) > 1
    judged = {a.attribute for a in attributes if a.judged}
    blockers = [f"{a.attribute}: {a.reason}" for a in unjudged] + [
        _metric_evidence(m, several) for m in unmeasured if m.attribute in judged
    ]
    worst = (
        ""
        if headline is None or headline.low is None
        else f"{headline.attribute}={headline.low.group}"
    )
    message = _message(verdict, metrics, failed, headline, blockers, several, counterfactual)
    return BiasAudit(
        verdict,
        positive,
        spec.min_group_size,
        attributes,
        metrics,
        worst,
        message,
        evidence,
        counterfactual,
    )


def _headline(metrics: list[AuditMetric], failed: list[AuditMetric]) -> AuditMetric | None:
    """The metric the verdict is about: the worst failure, else the tightest gated pass,
    else (nothing gated) the lowest demographic parity ratio."""
    if failed:
        return min(failed, key=_margin)
    passed = [m for m in metrics if m.passed is True]
    if passed:
        return min(passed, key=_margin)
    ratios = [m for m in metrics if m.name == "demographicParityRatio" and m.value is not None]
    return min(ratios, key=lambda m: m.value if m.value is not None else 1.0) if ratios else None


def _margin(metric: AuditMetric) -> float:
    margin = metric.margin()
    assert margin is not None  # gated metrics with a value
    return margin


def _message(
    verdict: AuditVerdict,
    metrics: list[AuditMetric],
    failed: list[AuditMetric],
    headline: AuditMetric | None,
    blockers: list[str],
    several: bool,
    counterfactual: CounterfactualResult | None,
) -> str:
    """One line: the verdict and the numbers behind it (InsufficientData: what blocked it)."""
    gated = [m for m in metrics if m.gated]
    if verdict == "Failed":
        assert headline is not None
        more = len(failed) - 1
        text = f"Failed: {_describe(headline, several)}" + (
            f"; {more} more gated metric{'s' if more > 1 else ''} failed" if more else ""
        )
    elif verdict == "InsufficientData":
        text = "InsufficientData: " + "; ".join(blockers)
    elif not gated:
        text = "Passed: no metric is gated (bias.thresholds)"
        text += f"; lowest {_describe(headline, several)}" if headline is not None else ""
    else:
        text = f"Passed: {len(gated)} gated metric{'s' if len(gated) > 1 else ''} within thresholds"
        text += f"; tightest {_describe(headline, several)}" if headline is not None else ""
    if counterfactual is not None and counterfactual.flip_rate is not None:
        text += (
            f"; counterfactual swaps flipped {counterfactual.flips} of {counterfactual.changed} "
            f"predictions ({_number(counterfactual.flip_rate)}{_per_attribute(counterfactual)})"
        )
    return " ".join(text.split())


def _per_attribute(result: CounterfactualResult) -> str:
    """', gender 0.250, name 0.000' when the pairs name attributes, else nothing."""
    named = [flips for flips in result.attributes if flips.attribute is not None]
    return "".join(
        f", {flips.attribute} {'n/a' if flips.flip_rate is None else _number(flips.flip_rate)}"
        for flips in named
    )


def _describe(metric: AuditMetric, several: bool) -> str:
    """E.g. 'demographicParityRatio 0.550 < 0.8 for dialect (selection rate a 0.250 vs b 0.455)'."""
    assert metric.value is not None
    comparison = ""
    if metric.threshold is not None:
        ratio = metric.name in RATIO_METRICS
        sign = (">=" if ratio else "<=") if metric.passed else ("<" if ratio else ">")
        comparison = f" {sign} {metric.threshold:g}"
    groups = ""
    if metric.low is not None and metric.high is not None:
        groups = (
            f" ({_RATE_NAMES[metric.rate]} {metric.low.group} {_number(metric.low.value)} "
            f"vs {metric.high.group} {_number(metric.high.value)})"
        )
    name = metric.status_name(several)
    return f"{name} {_number(metric.value)}{comparison} for {metric.attribute}{groups}"


# --- counterfactuals ---------------------------------------------------------------------


def counterfactual_sets(
    pairs: Sequence[CounterfactualPair],
) -> list[tuple[str | None, list[CounterfactualPair]]]:
    """The pairs by attribute, in the order each attribute first appears: each set is
    swapped in a copy of the texts of its own (swap_terms), never together with another."""
    sets: dict[str | None, list[CounterfactualPair]] = {}
    for pair in pairs:
        sets.setdefault(pair.attribute, []).append(pair)
    return list(sets.items())


def combined_counterfactuals(results: Sequence[CounterfactualResult]) -> CounterfactualResult:
    """The results of each attribute set (counterfactual_result of one set each), as one:
    their pairs and flips side by side, the totals over every swapped copy."""
    changed = sum(result.changed for result in results)
    flips = sum(result.flips for result in results)
    return CounterfactualResult(
        results[0].texts,
        changed,
        flips,
        _ratio(flips, changed),
        [pair for result in results for pair in result.pairs],
        [flips for result in results for flips in result.attributes],
    )


def swap_terms(texts: Sequence[str], pairs: Sequence[CounterfactualPair]) -> CounterfactualTexts:
    """Swap each pair both ways in one pass per text: "He said she" -> "She said he".

    Whole words and phrases only (a term is not matched inside a longer word), any case,
    with the case of the match's first letter kept (and an all-capitals match kept in
    capitals); phrases match across any run of whitespace. Longer terms win over shorter
    ones that start at the same place. Raises ValueError when a term appears in two pairs
    or a pair swaps a term for itself: the swap would not be reversible; and when the pairs
    vary more than one attribute: those are swapped apart (counterfactual_sets).
    """
    attributes = {pair.attribute for pair in pairs}
    if len(attributes) > 1:
        raise ValueError(
            f"the pairs vary {len(attributes)} attributes; swap each attribute's pairs apart "
            "(counterfactual_sets), never in one text"
        )
    replacements = _replacements(pairs)
    result = np.zeros((len(texts), len(pairs), 2), dtype=np.bool_)
    if not replacements:
        return _counterfactual_texts(list(texts), texts, result)
    pattern = _pattern(list(replacements))
    swapped = []
    for row, text in enumerate(texts):

        def swap(match: re.Match[str], row: int = row) -> str:
            counterpart, pair, direction = replacements[_key(match.group(0))]
            result[row, pair, direction] = True
            return _same_case(match.group(0), counterpart)

        swapped.append(pattern.sub(swap, text))
    return _counterfactual_texts(swapped, texts, result)


def _counterfactual_texts(
    swapped: list[str], texts: Sequence[str], fired: npt.NDArray[np.bool_]
) -> CounterfactualTexts:
    changed = np.array(
        [new != old for new, old in zip(swapped, texts, strict=True)], dtype=np.bool_
    )
    return CounterfactualTexts(swapped, changed.reshape(-1), fired[:, :, 0], fired[:, :, 1])


def _replacements(pairs: Sequence[CounterfactualPair]) -> dict[str, tuple[str, int, int]]:
    """Normalised term -> (replacement, pair index, 0 for term->counterpart or 1 for back)."""
    table: dict[str, tuple[str, int, int]] = {}
    for index, pair in enumerate(pairs):
        if _key(pair.term) == _key(pair.counterpart):
            raise ValueError(f"bias.counterfactuals[{index}] swaps {pair.term!r} for itself")
        for direction, (source, target) in enumerate(
            ((pair.term, pair.counterpart), (pair.counterpart, pair.term))
        ):
            key = _key(source)
            if key in table:
                raise ValueError(
                    f"bias.counterfactuals[{index}]: {source!r} is already in "
                    f"bias.counterfactuals[{table[key][1]}]; each term may appear in one pair, "
                    "or the swap would not be reversible"
                )
            table[key] = (target, index, direction)
    return table


def _key(term: str) -> str:
    return " ".join(term.casefold().split())


def _pattern(terms: list[str]) -> re.Pattern[str]:
    """Alternation of the terms, longest first, each bounded by non-word characters."""
    ordered = sorted(terms, key=lambda term: (-len(term), term))
    alternatives = [r"\s+".join(re.escape(word) for word in term.split()) for term in ordered]
    return re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)", re.IGNORECASE)


def _same_case(found: str, replacement: str) -> str:
    if len(found) > 1 and found.isupper():
        return replacement.upper()
    first = replacement[:1].upper() if found[:1].isupper() else replacement[:1].lower()
    return first + replacement[1:]


def counterfactual_result(
    original_scores: npt.NDArray[np.float64],
    swapped_scores: npt.NDArray[np.float64],
    swapped: CounterfactualTexts,
    pairs: Sequence[CounterfactualPair],
    positive_class_ids: Sequence[int],
) -> CounterfactualResult:
    """Flip rate and probability shift over the texts a swap changed.

    `original_scores` and `swapped_scores` are class probabilities (softmax, not logits),
    one row per text given to swap_terms (rows of unchanged texts are ignored, so they may
    simply repeat the originals). The positive probability is the sum over
    `positive_class_ids`. A text in which several pairs fired counts for each of them.
    """
    original, counter = _checked_scores(
        original_scores, swapped_scores, swapped, positive_class_ids
    )
    changed = swapped.changed
    flipped = (original.argmax(axis=1) != counter.argmax(axis=1)) & changed
    ids = list(positive_class_ids)
    shift = counter[:, ids].sum(axis=1) - original[:, ids].sum(axis=1)
    fired = swapped.fired & changed[:, None]
    forward = swapped.term_to_counterpart & ~swapped.counterpart_to_term & fired
    backward = swapped.counterpart_to_term & ~swapped.term_to_counterpart & fired
    signed = shift[:, None] * (forward.astype(np.float64) - backward.astype(np.float64))
    directional = (forward | backward).sum(axis=0)
    texts, flips = fired.sum(axis=0), (fired & flipped[:, None]).sum(axis=0)
    results = [
        PairResult(
            pair.term,
            pair.counterpart,
            int(texts[j]),
            int(flips[j]),
            _ratio(flips[j], texts[j]),
            int(forward[:, j].sum()),
            int(backward[:, j].sum()),
            _ratio(signed[:, j].sum(), directional[j]),
            _ratio(np.abs(signed[:, j]).sum(), directional[j]),
            pair.attribute,
        )
        for j, pair in enumerate(pairs)
    ]
    total_changed, total_flips = int(changed.sum()), int(flipped.sum())
    rate = _ratio(total_flips, total_changed)
    attribute = pairs[0].attribute if pairs else None
    return CounterfactualResult(
        len(changed),
        total_changed,
        total_flips,
        rate,
        results,
        [AttributeFlips(attribute, total_changed, total_flips, rate)],
    )


def _checked_scores(
    original_scores: npt.NDArray[np.float64],
    swapped_scores: npt.NDArray[np.float64],
    swapped: CounterfactualTexts,
    positive_class_ids: Sequence[int],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    original = np.asarray(original_scores, dtype=np.float64)
    counter = np.asarray(swapped_scores, dtype=np.float64)
    rows = len(swapped.texts)
    if original.ndim != 2 or original.shape != counter.shape or original.shape[0] != rows:
        raise ValueError(
            f"scores must be (texts, classes) arrays for the {rows} texts; got "
            f"{original.shape} and {counter.shape}"
        )
    classes = original.shape[1]
    if not positive_class_ids or any(not 0 <= i < classes for i in positive_class_ids):
        raise ValueError(f"positive_class_ids must name classes 0..{classes - 1}")
    for scores in (original, counter):
        ok = np.isfinite(scores) & (scores >= -PROBABILITY_TOLERANCE)
        if not ok.all() or (scores > 1 + PROBABILITY_TOLERANCE).any():
            raise ValueError("scores must be class probabilities (softmax), finite and in [0, 1]")
    return original, counter


def _ratio(
    part: float | np.integer[Any] | np.floating[Any], whole: float | np.integer[Any]
) -> float | None:
    return float(part / whole) if whole else None


# --- text --------------------------------------------------------------------------------


def _number(value: float) -> str:
    """Three decimals, or three significant digits for values too small or large for that."""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.3f}"
    return f"{value:.3g}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
