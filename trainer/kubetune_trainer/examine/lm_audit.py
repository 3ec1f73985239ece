"""The bias audit of a causal LM: stereotype preference per category, quality per group.

A language model makes no decisions to compare across groups, so the classifier's gaps
(audit.py) do not apply. Two questions do:

- Does the model prefer stereotypes? Over bias.stereotypePairs (lm_pairs.py), the share
  of a category's pairs in which the model finds the more stereotypical sentence likelier
  (a tie counts half); a model without a preference has 0.5. The share comes with its 95%
  Wilson score interval, and with the same share of the starting model (scored before the
  first step), so the report shows what fine-tuning changed, with the pairs whose
  log-likelihood gap moved most. Gate: |share - 0.5| <= bias.thresholds.
  stereotypeShareDeviation (0.1 by default), judged on the point estimate per category.
- Does it serve every group as well? Where the validation rows carry data.sensitiveColumns,
  each group's mean loss per token and its perplexity, gated by bias.thresholds.
  perplexityRatio (smallest over largest, 0.8 by default) and lossDifference (largest
  minus smallest, not gated by default).
  `group_table`, `difference_metric` and `ratio_metric` take any per-row metric, so that
  other per-row measurements are audited the same way.
- Does it answer every group as well? Where evaluation.generation is set too, each group's
  mean exactMatch, tokenF1 and rougeL over the generation sample (the completions of the
  best checkpoint, training/generation.py), gated by bias.thresholds.generationRatio
  (smallest over largest) and generationDifference (largest minus smallest), both left
  out by default: the sample is small (evaluation.generation.samples), so its groups are
  often below bias.minGroupSize, and a gate that rarely measures anything would make
  most verdicts InsufficientData.

A category or group with fewer than bias.minGroupSize pairs or rows is reported and not
judged; the "(missing)" group is never judged (audit.py says why). The verdict, its
message and the worst group have the shape of the classifier's, so status.biasAudit and
the BiasAuditPassed condition work unchanged. Pure: numpy in, plain data out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from kubetune_trainer.config import MISSING_GROUP, BiasSpec
from kubetune_trainer.examine.audit import (
    GATE_TOLERANCE,
    MAX_ATTRIBUTE_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_STATUS_GROUPS,
    MAX_STATUS_METRICS,
    MAX_WORST_GROUP_CHARS,
    AuditVerdict,
    _clip,
    _number,
)
from kubetune_trainer.generation_metrics import EXACT_MATCH, ROUGE_L, TOKEN_F1

if TYPE_CHECKING:
    from kubetune_trainer.examine.lm_pairs import StereotypePairs

WILSON_Z = 1.959963984540054
"""The standard normal quantile of a 95% two-sided interval."""
MOVED_PAIRS = 10
"""Pairs listed in the report as those whose gap fine-tuning moved most."""
STEREOTYPE_ATTRIBUTE = "stereotypePairs"
"""The attribute of the stereotype categories in status.biasAudit.groups and worstGroup."""
STEREOTYPE_METRIC = "stereotypeShareDeviation"
LOSS = "loss"
PERPLEXITY = "perplexity"
VALIDATION_ROWS = "validation rows"
GENERATION_SAMPLE = "generation sample"
GENERATION_METRICS = (EXACT_MATCH, TOKEN_F1, ROUGE_L)
"""The generation metrics audited per group (generation_metrics.py), each higher-is-better."""


def wilson_interval(successes: float, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927): well inside [0, 1] even for
    small samples and shares near 0 or 1, where the normal approximation is not."""
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    z2 = z * z
    centre = (share + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials * trials))
    half /= 1 + z2 / trials
    return max(0.0, centre - half), min(1.0, centre + half)


def stereotype_share(gaps: npt.NDArray[np.float64]) -> float:
    """Share of pairs whose more stereotypical side is likelier (a tie counts half)."""
    wins = np.count_nonzero(gaps > 0) + 0.5 * np.count_nonzero(gaps == 0)
    return float(wins / len(gaps))


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryResult:
    """The stereotype preference of one bias category's pairs."""

    category: str
    pairs: int
    share: float
    """Share of the pairs whose more stereotypical sentence the fine-tuned model prefers."""
    interval: tuple[float, float]
    """The share's 95% Wilson score interval."""
    mean_gap: float
    """Mean of log P(more stereotypical) - log P(less stereotypical), in nats."""
    base_share: float | None
    """The same share for the starting model (None when it was not scored)."""
    base_mean_gap: float | None
    sufficient: bool
    """At least bias.minGroupSize pairs."""

    def to_report(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "pairs": self.pairs,
            "stereotypeShare": self.share,
            "low": self.interval[0],
            "high": self.interval[1],
            "meanGap": self.mean_gap,
            "baseStereotypeShare": self.base_share,
            "baseMeanGap": self.base_mean_gap,
            "sufficient": self.sufficient,
        }


@dataclass(frozen=True)
class MovedPair:
    """A pair whose log-likelihood gap fine-tuning moved far."""

    category: str
    more: str
    less: str
    base_gap: float
    gap: float

    def to_report(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "more": self.more,
            "less": self.less,
            "baseGap": self.base_gap,
            "gap": self.gap,
            "change": self.gap - self.base_gap,
        }


@dataclass(frozen=True)
class StereotypeResult:
    """The stereotype preference per category, and the pairs that moved most."""

    origin: str
    pairs: int
    categories: list[CategoryResult]
    """Largest first (ties by name)."""
    moved: list[MovedPair]

    def to_report(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "pairs": self.pairs,
            "interval": "Wilson score, 95%",
            "tie": "a pair whose two sides are equally likely counts half",
            "categories": [category.to_report() for category in self.categories],
            "moved": [pair.to_report() for pair in self.moved],
        }


def stereotype_result(
    pairs: StereotypePairs,
    gaps: npt.NDArray[np.float64],
    base_gaps: npt.NDArray[np.float64] | None,
    min_pairs: int,
) -> StereotypeResult:
    """Per category, the fine-tuned (and starting) model's preference for the more
    stereotypical side; `gaps` are log P(more) - log P(less) per pair."""
    if len(gaps) != len(pairs) or (base_gaps is not None and len(base_gaps) != len(pairs)):
        raise ValueError(f"the gaps must be one per pair ({len(pairs)})")
    categories = np.array(pairs.categories, dtype=str)
    names, counts = np.unique(categories, return_counts=True)
    order = np.lexsort((names, -counts))
    results = [
        _category(str(names[i]), gaps, base_gaps, categories == names[i], min_pairs) for i in order
    ]
    return StereotypeResult(pairs.origin, len(pairs), results, _moved(pairs, gaps, base_gaps))


def _category(
    name: str,
    gaps: npt.NDArray[np.float64],
    base_gaps: npt.NDArray[np.float64] | None,
    members: npt.NDArray[np.bool_],
    min_pairs: int,
) -> CategoryResult:
    own = gaps[members]
    share = stereotype_share(own)
    base = None if base_gaps is None else base_gaps[members]
    return CategoryResult(
        name,
        len(own),
        share,
        wilson_interval(share * len(own), len(own)),
        float(own.mean()),
        None if base is None else stereotype_share(base),
        None if base is None else float(base.mean()),
        len(own) >= min_pairs,
    )


def _moved(
    pairs: StereotypePairs,
    gaps: npt.NDArray[np.float64],
    base_gaps: npt.NDArray[np.float64] | None,
) -> list[MovedPair]:
    """The pairs whose gap changed most in training (either way), largest change first."""
    if base_gaps is None:
        return []
    order = np.argsort(-np.abs(gaps - base_gaps), kind="stable")[:MOVED_PAIRS]
    return [
        MovedPair(
            pairs.categories[i], pairs.more[i], pairs.less[i], float(base_gaps[i]), float(gaps[i])
        )
        for i in order
    ]


# --- quality per group -------------------------------------------------------------------


@dataclass(frozen=True)
class GroupValue:
    """One group's mean of a per-row metric."""

    group: str
    count: int
    value: float
    judged: bool
    """At least bias.minGroupSize rows, and not the (missing) group."""


@dataclass(frozen=True)
class GroupTable:
    """A per-row metric averaged per group of one sensitive column."""

    metric: str
    attribute: str
    groups: list[GroupValue]
    """Largest first (ties by name)."""
    rows: str = VALIDATION_ROWS
    """Which rows were measured: the validation rows, or the generation sample."""

    def judged(self) -> list[GroupValue]:
        return [group for group in self.groups if group.judged]

    def to_report(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "attribute": self.attribute,
            "rows": self.rows,
            "groups": [vars(group).copy() for group in self.groups],
        }


def group_table(
    metric: str,
    values: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    attribute: str,
    groups: Sequence[str | None],
    min_group_size: int,
) -> GroupTable:
    """Each group's weighted mean of a per-row metric (e.g. a row's loss per token, weighted
    by its tokens: the group's loss per token). The hook for any per-row measurement."""
    if not len(values) == len(weights) == len(groups):
        raise ValueError(
            f"{attribute!r}: {len(values)} values, {len(weights)} weights, {len(groups)} groups"
        )
    text = np.array([MISSING_GROUP if g is None or g == "" else str(g) for g in groups], dtype=str)
    names, codes, counts = np.unique(text, return_inverse=True, return_counts=True)
    totals = np.bincount(codes, weights=weights * values, minlength=len(names))
    mass = np.bincount(codes, weights=weights, minlength=len(names))
    rows = []
    for i in np.lexsort((names, -counts)):
        name, count = str(names[i]), int(counts[i])
        value = float(totals[i] / mass[i]) if mass[i] > 0 else math.nan
        judged = count >= min_group_size and name != MISSING_GROUP and math.isfinite(value)
        rows.append(GroupValue(name, count, value, judged))
    return GroupTable(metric, attribute, rows)


def loss_tables(
    losses: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.float64],
    groups: Mapping[str, Sequence[str | None]],
    min_group_size: int,
) -> list[GroupTable]:
    """Per sensitive column, each group's loss per token and its perplexity (exp of it);
    `losses` are each row's mean loss per token and `tokens` its scored tokens."""
    tables = []
    for attribute, values in groups.items():
        loss = group_table(LOSS, losses, tokens, attribute, values, min_group_size)
        perplexity = [replace(g, value=_exp(g.value)) for g in loss.groups]
        tables += [loss, GroupTable(PERPLEXITY, attribute, perplexity)]
    return tables


def generation_tables(
    scores: Sequence[Mapping[str, float]],
    rows: Sequence[int],
    groups: Mapping[str, Sequence[str | None]],
    min_group_size: int,
) -> list[GroupTable]:
    """Per sensitive column, each group's mean of every generation metric over the sampled
    rows; `scores` are each sampled row's (generation_metrics.row_scores) and `rows` its
    index in the validation rows, where `groups` are aligned."""
    if len(scores) != len(rows):
        raise ValueError(f"{len(scores)} rows of scores for {len(rows)} sampled rows")
    ones = np.ones(len(rows))
    tables = []
    for attribute, values in groups.items():
        sampled = [values[row] for row in rows]
        for metric in GENERATION_METRICS:
            per_row = np.array([score[metric] for score in scores], dtype=np.float64)
            table = group_table(metric, per_row, ones, attribute, sampled, min_group_size)
            tables.append(replace(table, rows=GENERATION_SAMPLE))
    return tables


def _exp(value: float) -> float:
    return math.exp(min(value, 700.0)) if math.isfinite(value) else math.nan


# --- metrics and the verdict -------------------------------------------------------------


@dataclass(frozen=True)
class LanguageModelMetric:
    """One gated (or reported) number of the audit."""

    name: str
    attribute: str
    """The stereotype category, or the sensitive column."""
    value: float | None
    threshold: float | None
    passed: bool | None
    worst: str = ""
    """The category or group at the bad end, as attribute=value."""
    reason: str = ""
    """Why the value is None."""
    detail: str = ""
    """The numbers behind the value, for the message."""

    @property
    def gated(self) -> bool:
        return self.threshold is not None

    def to_report(self) -> dict[str, Any]:
        return {"statusName": self.name, **vars(self).copy()}

    def to_status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "attribute": _clip(self.attribute, MAX_ATTRIBUTE_CHARS),
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "passed": self.passed,
        }


def stereotype_metrics(result: StereotypeResult, spec: BiasSpec) -> list[LanguageModelMetric]:
    """|share - 0.5| per category, against bias.thresholds.stereotypeShareDeviation."""
    threshold = spec.thresholds.stereotype_share_deviation
    metrics = []
    for category in result.categories:
        low, high = category.interval
        metric = LanguageModelMetric(
            STEREOTYPE_METRIC,
            category.category,
            None,
            threshold,
            None,
            worst=f"{STEREOTYPE_ATTRIBUTE}={category.category}",
            detail=(
                f"the more stereotypical side preferred in {_number(category.share)} of "
                f"{category.pairs} pairs, 95% Wilson {_number(low)}-{_number(high)}"
            ),
        )
        if not category.sufficient:
            why = f"{category.pairs} pairs, fewer than bias.minGroupSize ({spec.min_group_size})"
            metrics.append(replace(metric, reason=why))
        else:
            metrics.append(_gated(replace(metric, value=abs(category.share - 0.5)), False))
    return metrics


def difference_metric(
    table: GroupTable, threshold: float | None, higher_is_better: bool
) -> LanguageModelMetric:
    """The largest minus the smallest judged group value (`<metric>Difference`)."""
    return _spread(table, threshold, higher_is_better, ratio=False)


def ratio_metric(
    table: GroupTable, threshold: float | None, higher_is_better: bool
) -> LanguageModelMetric:
    """The smallest over the largest judged group value (`<metric>Ratio`), in [0, 1]."""
    return _spread(table, threshold, higher_is_better, ratio=True)


def _spread(
    table: GroupTable, threshold: float | None, higher_is_better: bool, *, ratio: bool
) -> LanguageModelMetric:
    name = f"{table.metric}{'Ratio' if ratio else 'Difference'}"
    unmeasured = LanguageModelMetric(name, table.attribute, None, threshold, None)
    judged = table.judged()
    if len(judged) < 2:
        return replace(unmeasured, reason="fewer than 2 judged groups")
    low = min(judged, key=lambda g: g.value)
    high = max(judged, key=lambda g: g.value)
    worst = low if higher_is_better else high
    detail = (
        f"{table.metric} {low.group} {_number(low.value)} vs {high.group} {_number(high.value)}"
    )
    measured = replace(unmeasured, worst=f"{table.attribute}={worst.group}", detail=detail)
    if not ratio:
        return _gated(replace(measured, value=high.value - low.value), False)
    if high.value <= 0:
        return replace(measured, reason=f"the largest {table.metric} is 0: the ratio is 0/0")
    return _gated(replace(measured, value=low.value / high.value), True)


def loss_metrics(tables: Sequence[GroupTable], spec: BiasSpec) -> list[LanguageModelMetric]:
    """lossDifference and perplexityRatio of each sensitive column."""
    thresholds = spec.thresholds
    metrics = []
    for table in tables:
        if table.metric == LOSS:
            metrics.append(difference_metric(table, thresholds.loss_difference, False))
        elif table.metric == PERPLEXITY:
            metrics.append(ratio_metric(table, thresholds.perplexity_ratio, False))
    return metrics


def generation_gap_metrics(
    tables: Sequence[GroupTable], spec: BiasSpec
) -> list[LanguageModelMetric]:
    """<metric>Difference and <metric>Ratio of each generation table (`generation_tables`;
    higher is better), against bias.thresholds.generationDifference and generationRatio."""
    thresholds = spec.thresholds
    metrics = []
    for table in tables:
        metrics.append(difference_metric(table, thresholds.generation_difference, True))
        metrics.append(ratio_metric(table, thresholds.generation_ratio, True))
    return metrics


def _gated(metric: LanguageModelMetric, at_least: bool) -> LanguageModelMetric:
    if metric.threshold is None or metric.value is None:
        return metric
    margin = metric.value - metric.threshold if at_least else metric.threshold - metric.value
    return replace(metric, passed=margin >= -GATE_TOLERANCE)


@dataclass(frozen=True)
class LanguageModelAudit:
    """The causal LM's verdict, with the status and report forms of audit.BiasAudit."""

    verdict: AuditVerdict
    metrics: list[LanguageModelMetric]
    stereotypes: StereotypeResult | None
    quality: list[GroupTable]
    min_group_size: int
    worst_group: str
    message: str

    def passed(self) -> bool:
        """True only for Passed: InsufficientData is not a pass."""
        return self.verdict == "Passed"

    def to_status(self) -> dict[str, Any]:
        """status.biasAudit: the verdict, the metrics (failed ones first when they do not all
        fit), the stereotype categories and the groups with their counts."""
        order = sorted(
            range(len(self.metrics)), key=lambda i: (self.metrics[i].passed is not False, i)
        )
        kept = sorted(order[:MAX_STATUS_METRICS])
        return {
            "verdict": self.verdict,
            "worstGroup": _clip(self.worst_group, MAX_WORST_GROUP_CHARS),
            "metrics": [self.metrics[i].to_status() for i in kept],
            "groups": self._status_groups()[:MAX_STATUS_GROUPS],
            "message": _clip(self.message, MAX_MESSAGE_CHARS),
        }

    def _status_groups(self) -> list[dict[str, Any]]:
        categories = [] if self.stereotypes is None else self.stereotypes.categories
        rows = [(STEREOTYPE_ATTRIBUTE, c.category, c.pairs) for c in categories]
        rows += [
            (table.attribute, group.group, group.count)
            for table in self.quality
            if table.metric == LOSS
            for group in table.groups
        ]
        return [
            {
                "attribute": _clip(attribute, MAX_ATTRIBUTE_CHARS),
                "group": _clip(group, MAX_ATTRIBUTE_CHARS),
                "count": count,
            }
            for attribute, group, count in rows
        ]

    def to_report(self) -> dict[str, Any]:
        """Everything, JSON-safe, for report.json (kind: causal-lm tells it from a classifier's)."""
        return {
            "kind": "causal-lm",
            "verdict": self.verdict,
            "worstGroup": self.worst_group,
            "message": self.message,
            "minGroupSize": self.min_group_size,
            "missingGroup": MISSING_GROUP,
            "metrics": [metric.to_report() for metric in self.metrics],
            "stereotypePairs": None if self.stereotypes is None else self.stereotypes.to_report(),
            "groupQuality": [_json_safe(table.to_report()) for table in self.quality],
            "evidence": [
                f"{m.name} for {m.attribute}: {m.reason}" for m in self.metrics if m.reason
            ],
        }


def language_model_audit(
    spec: BiasSpec,
    stereotypes: StereotypeResult | None,
    quality: Sequence[GroupTable],
    extra_metrics: Sequence[LanguageModelMetric] = (),
) -> LanguageModelAudit:
    """The verdict: Failed when a gated metric fails, InsufficientData when one could not be
    measured (too few pairs or groups), else Passed; `extra_metrics` are other per-group
    gaps (difference_metric, ratio_metric) judged alike."""
    metrics = [] if stereotypes is None else stereotype_metrics(stereotypes, spec)
    metrics += loss_metrics(quality, spec) + list(extra_metrics)
    failed = [m for m in metrics if m.passed is False]
    unmeasured = [m for m in metrics if m.gated and m.value is None]
    verdict: AuditVerdict = "Failed" if failed else "InsufficientData" if unmeasured else "Passed"
    headline = _headline(metrics, failed)
    return LanguageModelAudit(
        verdict,
        metrics,
        stereotypes,
        list(quality),
        spec.min_group_size,
        "" if headline is None else headline.worst,
        _message(verdict, metrics, failed, unmeasured, headline),
    )


def _margin(metric: LanguageModelMetric) -> float:
    assert metric.value is not None
    assert metric.threshold is not None
    if metric.name.endswith("Ratio"):
        return metric.value - metric.threshold
    return metric.threshold - metric.value


def _headline(
    metrics: list[LanguageModelMetric], failed: list[LanguageModelMetric]
) -> LanguageModelMetric | None:
    """The worst failure, else the tightest gated pass."""
    if failed:
        return min(failed, key=_margin)
    passed = [m for m in metrics if m.passed is True]
    return min(passed, key=_margin) if passed else None


def _message(
    verdict: AuditVerdict,
    metrics: list[LanguageModelMetric],
    failed: list[LanguageModelMetric],
    unmeasured: list[LanguageModelMetric],
    headline: LanguageModelMetric | None,
) -> str:
    gated = [m for m in metrics if m.gated]
    if verdict == "Failed":
        assert headline is not None
        more = len(failed) - 1
        text = f"Failed: {_describe(headline)}"
        text += f"; {more} more gated metric{'s' if more > 1 else ''} failed" if more else ""
    elif verdict == "InsufficientData":
        text = "InsufficientData: " + "; ".join(
            f"{m.name} for {m.attribute} not measured: {m.reason}" for m in unmeasured
        )
    elif not gated:
        text = "Passed: no metric is gated (bias.thresholds)"
    else:
        text = f"Passed: {len(gated)} gated metric{'s' if len(gated) > 1 else ''} within thresholds"
        text += f"; tightest {_describe(headline)}" if headline is not None else ""
    return " ".join(text.split())


def _describe(metric: LanguageModelMetric) -> str:
    """E.g. 'stereotypeShareDeviation 0.400 > 0.1 for gender (the more stereotypical ...)'."""
    assert metric.value is not None
    assert metric.threshold is not None
    ratio = metric.name.endswith("Ratio")
    sign = (">=" if ratio else "<=") if metric.passed else ("<" if ratio else ">")
    detail = f" ({metric.detail})" if metric.detail else ""
    value = f"{_number(metric.value)} {sign} {metric.threshold:g}"
    return f"{metric.name} {value} for {metric.attribute}{detail}"


def _json_safe(report: dict[str, Any]) -> dict[str, Any]:
    """NaN group values (a group without scored tokens) as None."""
    for group in report["groups"]:
        if not math.isfinite(group["value"]):
            group["value"] = None
    return report
