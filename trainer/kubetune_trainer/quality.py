"""Data-quality rules on the raw rows, before tokenization.

A fine-tune learns whatever its rows say, noise included: repeated rows weigh more than
the others, a text seen under two labels teaches nothing, empty or garbled rows waste
steps, and a training row that is also a validation row makes the validation metrics lie.
These checks find such rows while they are still text, say how many each rule matched
(with a few examples, for the job's status and report), and either drop them, only flag
them, or fail the job, as the manifest asks per rule. Dropping too much is a failure too:
it means the data, not a few rows, is wrong.

Rows are compared on their normalised text (lowercase, no punctuation, single spaces), so
"Great kettle!" and "great  kettle" are the same row. Every rule works on whole Arrow
columns (pyarrow.compute regexes, numpy on integer codes), never on one row at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

RuleMode = Literal["drop", "warn", "fail"]
Mask = npt.NDArray[np.bool_]
Codes = npt.NDArray[np.int64]

EXAMPLE_TEXT_CHARS = 200
"""An example's text is clipped to this many characters."""
_PUNCTUATION = r"\p{P}+"
_WHITESPACE = r"[\s\p{Z}]+"
_BROKEN_CHARS = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\x{FFFD}]"
"""Control characters other than tab, newline and carriage return, and U+FFFD (a failed decode)."""
_UNPRINTABLE_CHAR = r"[^\p{L}\p{M}\p{N}\p{P}\p{Z}\s]"
"""Anything but letters (with their accents), digits, punctuation and spaces."""
_SHOWN_ROWS = 5


@dataclass(frozen=True)
class RuleSettings:
    """What to do with the rows one rule matches."""

    mode: RuleMode


@dataclass(frozen=True)
class QualitySettings:
    """The rules to apply and their limits (built by the config layer)."""

    duplicates: RuleSettings
    conflicting_labels: RuleSettings
    empty: RuleSettings
    garbage: RuleSettings
    leakage: RuleSettings
    max_non_printable_fraction: float = 0.3
    max_dropped_fraction: float = 0.3
    examples_per_rule: int = 3


class QualityError(Exception):
    """Data the rules refuse; the message names the rule(s), the split and the counts."""


@dataclass
class RuleResult:
    """What one rule matched in one split."""

    rule: str
    split: str
    mode: RuleMode
    matched: int
    examples: list[dict[str, Any]]
    """Up to examples_per_rule rows: {"row": position in the table, "text", "label"}."""


@dataclass
class QualityReport:
    """Rows in and out per split, and every rule's result."""

    rows_in: dict[str, int]
    rows_out: dict[str, int]
    results: list[RuleResult]

    def dropped(self) -> dict[str, int]:
        """Rows each rule dropped, summed over the splits (rules that dropped none left out)."""
        return self._matched_in_mode("drop")

    def flagged(self) -> dict[str, int]:
        """Rows each warn-mode rule matched (and kept), summed over the splits."""
        return self._matched_in_mode("warn")

    def to_status(self) -> dict[str, Any]:
        """Totals over the splits for the job's status."""
        return {
            "rowsIn": sum(self.rows_in.values()),
            "rowsOut": sum(self.rows_out.values()),
            "dropped": self.dropped(),
            "flagged": self.flagged(),
            "message": self._message(),
        }

    def to_report(self) -> dict[str, Any]:
        """Everything, JSON-serialisable, for report.json."""
        return {
            "rowsIn": dict(self.rows_in),
            "rowsOut": dict(self.rows_out),
            "dropped": self.dropped(),
            "flagged": self.flagged(),
            "message": self._message(),
            "results": [asdict(result) for result in self.results],
        }

    def _message(self) -> str:
        """One line, e.g. "3582 of 3600 rows kept: 12 duplicates, 6 empty dropped"."""
        kept = f"{sum(self.rows_out.values())} of {sum(self.rows_in.values())} rows kept"
        by_verb = {"dropped": self.dropped(), "flagged": self.flagged()}
        parts = [f"{_counts(counts)} {verb}" for verb, counts in by_verb.items() if counts]
        return f"{kept}: {'; '.join(parts)}" if parts else kept

    def _matched_in_mode(self, mode: RuleMode) -> dict[str, int]:
        totals: dict[str, int] = {}
        for result in self.results:
            if result.mode == mode and result.matched:
                totals[result.rule] = totals.get(result.rule, 0) + result.matched
        return totals


def _counts(counts: dict[str, int]) -> str:
    """ "12 duplicates, 6 empty": largest first, ties in rule order."""
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return ", ".join(f"{count} {rule}" for rule, count in ordered)


def normalise(texts: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """Lowercase, punctuation removed, runs of whitespace made one space, ends trimmed."""
    lowered = pc.utf8_lower(_as_chunked(texts).cast(pa.large_string()))
    without_punctuation = pc.replace_substring_regex(lowered, _PUNCTUATION, "")
    spaced = pc.replace_substring_regex(without_punctuation, _WHITESPACE, " ")
    return pc.utf8_trim_whitespace(spaced)


def _as_chunked(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])


@dataclass
class _Split:
    """One split's columns, and which rows are still kept as the rules run."""

    name: str
    table: pa.Table
    texts: pa.ChunkedArray
    normalised: pa.ChunkedArray
    label_column: str | None
    keep: Mask
    judged: Mask
    """Rows the rules after `empty` look at: kept so far, and with some text."""

    def take_examples(self, matched: Mask, limit: int) -> list[dict[str, Any]]:
        rows = np.flatnonzero(matched)[:limit]
        texts = self.texts.take(rows).to_pylist()
        labels = (
            [None] * len(rows)
            if self.label_column is None
            else self.table.column(self.label_column).take(rows).to_pylist()
        )
        return [
            {"row": int(row), "text": _clipped(text), "label": label}
            for row, text, label in zip(rows, texts, labels, strict=True)
        ]


def _clipped(text: str | None) -> str | None:
    return None if text is None else text[:EXAMPLE_TEXT_CHARS]


def check(
    train: pa.Table,
    validation: pa.Table | None,
    *,
    text_column: str,
    label_column: str | None,
    settings: QualitySettings,
) -> tuple[Mask, Mask | None, QualityReport]:
    """The rows of each split to keep, and the report; raises QualityError as configured.

    Each split goes through empty, garbage, duplicates and conflicting labels (the last
    only with a label column); then training rows whose text is in the cleaned validation
    rows are leakage. A rule sees only the rows the rules before it kept.
    """
    results: list[RuleResult] = []
    train_split = _split("train", train, text_column, label_column)
    _clean(train_split, settings, results)
    validation_split = None
    if validation is not None:
        validation_split = _split("validation", validation, text_column, label_column)
        _clean(validation_split, settings, results)
        leaked = _leaked(train_split, validation_split)
        _apply(train_split, "leakage", settings.leakage, leaked, settings, results)
    splits = [s for s in (train_split, validation_split) if s is not None]
    report = QualityReport(
        rows_in={s.name: s.table.num_rows for s in splits},
        rows_out={s.name: int(s.keep.sum()) for s in splits},
        results=results,
    )
    for split in splits:
        _check_dropped_fraction(report, split.name, settings.max_dropped_fraction)
    return train_split.keep, None if validation_split is None else validation_split.keep, report


def _split(name: str, table: pa.Table, text_column: str, label_column: str | None) -> _Split:
    texts = table.column(text_column).cast(pa.large_string())
    everything = np.ones(table.num_rows, dtype=np.bool_)
    return _Split(name, table, texts, normalise(texts), label_column, everything, everything.copy())


def _clean(split: _Split, settings: QualitySettings, results: list[RuleResult]) -> None:
    empty = _empty(split.texts)
    _apply(split, "empty", settings.empty, empty, settings, results)
    split.judged &= ~empty
    garbage = split.judged & _garbage(split.texts, settings.max_non_printable_fraction)
    _apply(split, "garbage", settings.garbage, garbage, settings, results)
    text_codes, label_codes = _codes(split.normalised), _label_codes(split)
    has_words = _has_words(split.normalised)
    duplicates = _repeats(_pair_codes(text_codes, label_codes), split.judged & has_words)
    _apply(split, "duplicates", settings.duplicates, duplicates, settings, results)
    if split.label_column is not None:
        conflicting = _conflicting(text_codes, label_codes, split.judged & has_words)
        rule = settings.conflicting_labels
        _apply(split, "conflictingLabels", rule, conflicting, settings, results)


def _apply(
    split: _Split,
    rule: str,
    rule_settings: RuleSettings,
    matched: Mask,
    settings: QualitySettings,
    results: list[RuleResult],
) -> None:
    """Record what `rule` matched, then fail, drop the rows or only keep count of them."""
    examples = split.take_examples(matched, settings.examples_per_rule)
    result = RuleResult(rule, split.name, rule_settings.mode, int(matched.sum()), examples)
    if result.mode == "fail" and result.matched:
        raise QualityError(_failure(result, matched, split.table.num_rows))
    if result.mode == "drop":
        split.keep &= ~matched
        split.judged &= ~matched
    results.append(result)


def _failure(result: RuleResult, matched: Mask, rows_in: int) -> str:
    rows = np.flatnonzero(matched)
    shown = ", ".join(str(row) for row in rows[:_SHOWN_ROWS])
    more = f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else ""
    return (
        f"rule {result.rule} matched {result.matched} of {rows_in} {result.split} rows "
        f"(rows {shown}{more}, counting from 0) and its mode is fail"
    )


def _check_dropped_fraction(report: QualityReport, split: str, limit: float) -> None:
    rows_in, rows_out = report.rows_in[split], report.rows_out[split]
    dropped = rows_in - rows_out
    if rows_in and dropped / rows_in > limit:
        per_rule = {
            r.rule: r.matched
            for r in report.results
            if r.split == split and r.mode == "drop" and r.matched
        }
        raise QualityError(
            f"the rules would drop {dropped} of {rows_in} {split} rows "
            f"({dropped / rows_in:.0%}, more than maxDroppedFraction {limit}): "
            f"{_counts(per_rule)}; {rows_out} rows left"
        )


# --- the rules, on whole columns -------------------------------------------------------


def _mask(values: pa.ChunkedArray) -> Mask:
    """A boolean column as a numpy mask, nulls false."""
    filled = pc.fill_null(values, False)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.bool_)


def _empty(texts: pa.ChunkedArray) -> Mask:
    blank = pc.equal(pc.utf8_trim_whitespace(texts), "")
    return _mask(pc.or_kleene(pc.is_null(texts), blank))


def _garbage(texts: pa.ChunkedArray, max_non_printable_fraction: float) -> Mask:
    broken = pc.match_substring_regex(texts, _BROKEN_CHARS)
    unprintable = pc.count_substring_regex(texts, _UNPRINTABLE_CHAR).cast(pa.float64())
    fraction = pc.divide(unprintable, pc.utf8_length(texts).cast(pa.float64()))
    return _mask(broken) | _mask(pc.greater(fraction, max_non_printable_fraction))


def _has_words(normalised: pa.ChunkedArray) -> Mask:
    """Rows whose normalised text is not empty (all-punctuation rows have nothing to compare)."""
    return _mask(pc.not_equal(normalised, ""))


def _codes(values: pa.ChunkedArray) -> Codes:
    """The same integer for equal values (null included), from 0."""
    distinct = pc.unique(values)
    codes = pc.index_in(values, value_set=distinct)
    return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)


def _label_codes(split: _Split) -> Codes:
    if split.label_column is None:
        return np.zeros(split.table.num_rows, dtype=np.int64)
    return _codes(split.table.column(split.label_column))


def _pair_codes(text_codes: Codes, label_codes: Codes) -> Codes:
    """One integer per distinct (text, label) pair; `// _label_span` gives the text back."""
    return text_codes * _label_span(label_codes) + label_codes


def _label_span(label_codes: Codes) -> int:
    return int(label_codes.max(initial=0)) + 1


def _repeats(codes: Codes, candidates: Mask) -> Mask:
    """Candidate rows whose code an earlier candidate row already had."""
    rows = np.flatnonzero(candidates)
    _, first = np.unique(codes[rows], return_index=True)
    repeated = np.ones(len(rows), dtype=np.bool_)
    repeated[first] = False
    matched = np.zeros(len(codes), dtype=np.bool_)
    matched[rows[repeated]] = True
    return matched


def _conflicting(text_codes: Codes, label_codes: Codes, candidates: Mask) -> Mask:
    """Candidate rows whose text the candidates carry under more than one label."""
    pairs = np.unique(_pair_codes(text_codes, label_codes)[candidates])
    labels_per_text = np.bincount(pairs // _label_span(label_codes), minlength=len(text_codes))
    return candidates & (labels_per_text[text_codes] > 1)


def _leaked(train: _Split, validation: _Split) -> Mask:
    """Training rows whose normalised text is in the kept validation rows."""
    kept = validation.normalised.filter(pa.array(validation.judged))
    inside = pc.is_in(train.normalised, value_set=kept.combine_chunks())
    return train.judged & _has_words(train.normalised) & _mask(inside)
