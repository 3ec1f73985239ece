"""The data report: what the data looked like, and what the pipeline did to it.

A user whose fine-tune disappoints first asks what the model was trained on. This report
answers with numbers: rows in and out, what each quality rule matched, the classes and
the sensitive groups before and after the rules, the rows augmentation and resampling
added or removed, the token lengths the model saw (for a causal LM, its prompt and
response tokens, what an epoch reads and the loss counts, what data.maxLength cuts:
token_budget.py), and a recommendation when the classes are imbalanced and nothing was
done about it. The status carries a compact summary
(`status.dataValidation`, the DataValidated condition's evidence); report.json and
report.html carry all of it.

"In" means the rows that reached the text rules (each split after its file was read and,
for a held-out validation split, after the split); "out" means what the model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from kubetune_trainer.data.balance import imbalance_ratio
from kubetune_trainer.data.quality import QualityReport

HISTOGRAM_BINS = 20
"""Length histograms have at most this many bins."""
STATUS_CLASSES = 20
"""The status lists at most this many classes (the largest); report.json lists all."""

Counts = dict[str, int]
BeforeAfter = dict[str, Counts]
"""{"in": counts, "out": counts}"""


def class_counts(label_ids: npt.NDArray[np.int64], labels: Sequence[str]) -> Counts:
    """Rows per class name, every class listed (zero included), in class-id order."""
    counts = np.bincount(label_ids, minlength=len(labels))
    return {name: int(count) for name, count in zip(labels, counts, strict=True)}


def group_counts(values: pa.Array | pa.ChunkedArray) -> Counts:
    """Rows per group value, largest first (ties by name)."""
    tally = pc.value_counts(values)
    found = zip(tally.field("values").to_pylist(), tally.field("counts").to_pylist(), strict=True)
    return {str(name): int(count) for name, count in sorted(found, key=lambda p: (-p[1], p[0]))}


def length_summary(lengths: npt.NDArray[np.integer[Any]], max_length: int) -> dict[str, Any]:
    """Token lengths as the model sees them: percentiles, rows at maxLength, a histogram."""
    if len(lengths) == 0:
        return {"count": 0}
    values = np.asarray(lengths, dtype=np.int64)
    bins = min(HISTOGRAM_BINS, int(values.max() - values.min()) + 1)
    counts, edges = np.histogram(values, bins=bins)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "count": len(values),
        "min": int(values.min()),
        "mean": float(values.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": int(values.max()),
        "atMaxLength": int((values >= max_length).sum()),
        "maxLength": max_length,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


@dataclass
class DataReport:
    """Everything the data stage found and did, for the status and the reports."""

    quality: QualityReport
    labels: list[str]
    classes: dict[str, BeforeAfter]
    """split -> {"in", "out"} -> class -> rows."""
    groups: dict[str, dict[str, BeforeAfter]] = field(default_factory=dict)
    """sensitive column -> split -> {"in", "out"} -> group -> rows."""
    lengths: dict[str, dict[str, Any]] = field(default_factory=dict)
    """split -> length_summary."""
    added: Counts = field(default_factory=dict)
    """Training rows added: augmented, synthetic, oversampled."""
    removed: Counts = field(default_factory=dict)
    """Training rows left out after the rules: undersampled."""
    recommendation: str = ""
    warnings: list[str] = field(default_factory=list)
    """What the data does not fail for but the user should know, e.g. a class without rows."""
    packing: dict[str, Any] | None = None
    """data.packing: rows, sequences, fill and padding before and after (packing.packing_summary);
    set when the training loader is built, None without packing."""
    conversations: dict[str, dict[str, Any]] | None = None
    """data.messagesColumn: split -> rows, messages, turns (assistant messages),
    trainedMessages (assistant, weight 1), assistantTokenShare (of the tokens after
    truncation); None for other rows."""
    tokens: dict[str, Any] | None = None
    """causal-lm: each split's prompt and response tokens, the tokens an epoch reads and
    the loss counts, the responses data.maxLength cuts, and the run's totals
    (token_budget.run_tokens); None for classifiers."""

    def imbalance_ratio(self) -> float | None:
        """Largest over smallest class in the training rows that reached the rules."""
        counts = list(self.classes.get("train", {}).get("in", {}).values())
        return imbalance_ratio(counts) if len(counts) > 1 else None

    def to_status(self) -> dict[str, Any]:
        """The compact summary for status.dataValidation."""
        quality = self.quality.to_status()
        status: dict[str, Any] = {
            **quality,
            "classCounts": _largest(self.classes.get("train", {}).get("out", {}), STATUS_CLASSES),
            "added": {name: count for name, count in self.added.items() if count},
            "passed": True,
            "message": self._message(quality["message"]),
        }
        ratio = self.imbalance_ratio()
        if ratio is not None:
            status["imbalanceRatio"] = round(ratio, 3)
        if self.recommendation:
            status["recommendation"] = self.recommendation
        return status

    def to_report(self) -> dict[str, Any]:
        """Everything, JSON-serialisable, for report.json."""
        return {
            "quality": self.quality.to_report(),
            "classes": self.classes,
            "groups": self.groups,
            "lengths": self.lengths,
            "added": self.added,
            "removed": self.removed,
            "imbalanceRatio": self.imbalance_ratio(),
            "recommendation": self.recommendation,
            "warnings": self.warnings,
            "packing": self.packing,
            "conversations": self.conversations,
            "tokens": self.tokens,
        }

    def _message(self, quality_message: str) -> str:
        changes = [f"+{count} {name}" for name, count in self.added.items() if count]
        changes += [f"-{count} {name}" for name, count in self.removed.items() if count]
        trained_on = sum(self.classes.get("train", {}).get("out", {}).values())
        warnings = "".join(f"; warning: {warning}" for warning in self.warnings)
        if self.tokens is not None:
            quality_message += f"; {_tokens_message(self.tokens)}"
        if not changes:
            return quality_message + warnings
        return f"{quality_message}; training on {trained_on} rows ({', '.join(changes)}){warnings}"


def _largest(counts: Counts, limit: int) -> Counts:
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return dict(ranked[:limit])


def _tokens_message(tokens: dict[str, Any]) -> str:
    """One line for the status, e.g. "training reads 1,200 tokens per epoch (400 in the
    loss), 3,600 over 3 epochs; 2 responses cut by data.maxLength (35 tokens lost)"."""
    train = tokens["splits"].get("train", {})
    at_most = "at most " if tokens["upperBound"] else ""
    epochs = "1 epoch" if tokens["epochs"] == 1 else f"{tokens['epochs']} epochs"
    line = (
        f"training reads {train.get('tokensPerEpoch', 0):,} tokens per epoch "
        f"({train.get('lossTokensPerEpoch', 0):,} in the loss), {at_most}"
        f"{tokens['tokensPerRun']:,} over {epochs}"
    )
    cut = sum(split.get("responsesCut", 0) for split in tokens["splits"].values())
    lost = sum(split.get("responseTokensCut", 0) for split in tokens["splits"].values())
    if cut:
        responses = "response" if cut == 1 else "responses"
        line += f"; {cut:,} {responses} cut by data.maxLength ({lost:,} tokens lost)"
    return line


def failed_status(message: str) -> dict[str, Any]:
    """status.dataValidation for data that failed the job: the reason, and no counts to trust."""
    return {"passed": False, "message": message}
