"""Data-quality rules on the raw rows, before tokenization.

A fine-tune learns whatever its rows say, noise included: repeated rows weigh more than
the others, a text seen under two labels teaches nothing, empty or garbled rows waste
steps, and a training row that is also a validation row makes the validation metrics lie.
These checks find such rows while they are still text, say how many each rule matched
(with a few examples, for the job's status and report), and either drop them, only flag
them, or fail the job, as the manifest asks per rule. Dropping too much is a failure too:
it means the data, not a few rows, is wrong.

Rows are compared on their normalised text (lowercase, no punctuation, single spaces), so
"Great kettle!" and "great  kettle" are the same row. A causal LM's rows are compared on
their prompt and response: a repeated pair is a duplicate, one prompt with several
responses is conflictingResponses', a prompt nearly another's nearDuplicates'
(near_duplicates.py), and leakage compares prompts. Every rule works on whole Arrow
columns (pyarrow.compute regexes, numpy on integer codes), never on one row at a time.

The engine knows no tokenizer, file format or model. What needs one is measured by the
caller and handed in: token counts per row for the length rule (`SplitInput.lengths`), the
results of the rules that run on each file before its labels are encoded (missing values,
unknown labels: `earlier`, counted in the same report and the same dropped share), and
the label-noise detector, a function of the training rows the other rules keep
(`label_noise`). The detector is a callback rather than a precomputed mask because it
must see exactly the rows the other rules leave, and a second pass after `check` would
have to repeat the engine's bookkeeping (modes, examples, the dropped share).

Row numbers in examples and messages are positions in the file the rows were read from
(`SplitInput.positions`, from 0), so that they stay right after a validation split; an
example names that file too (`SplitInput.files`), since a split may hold the rows of
several (the training rows and the synthetic sources').
`rows_in` of a split counts the rows read for it, those the earlier per-file rules
dropped included; `rows_in - dropped == rows_out` holds per split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from kubetune_trainer.data.near_duplicates import near_duplicates

RuleMode = Literal["drop", "warn", "fail"]
Mask = npt.NDArray[np.bool_]
Codes = npt.NDArray[np.int64]

EXAMPLE_TEXT_CHARS = 200
"""An example's text is clipped to this many characters."""
_PUNCTUATION = r"\p{P}+"
_WHITESPACE = r"[\s\p{Z}]{2,}|[^\S ]|[^\P{Z} ]"
"""Runs of two or more whitespace characters, or one that is not a plain space: everything
that normalising to single spaces changes. Single spaces, the common case, are no match,
which makes the replacement several times faster than matching every run (one regex
search per match)."""
_BROKEN_CHARS = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\x{FFFD}]"
"""Control characters other than tab, newline and carriage return, and U+FFFD (a failed decode)."""
_UNPRINTABLE_CHAR = r"[^\p{L}\p{M}\p{N}\p{P}\p{Z}\s]"
"""Anything but letters (with their accents), digits, punctuation and spaces."""
_SUSPECT_CHAR = r"[^\p{L}\p{M}\p{N}\p{P}\p{Z}\t\n\r ]"
"""Every character of _BROKEN_CHARS or _UNPRINTABLE_CHAR (and a few harmless others): rows
without one are not garbage, so the exact checks run only on the rows with one."""
_SHOWN_ROWS = 5


@dataclass(frozen=True)
class RuleSettings:
    """What to do with the rows one rule matches."""

    mode: RuleMode


@dataclass(frozen=True)
class LengthSettings(RuleSettings):
    """The length rule: rows with fewer than min_tokens or more than max_tokens tokens."""

    min_tokens: int = 1
    max_tokens: int | None = None
    """None: no upper bound."""

    def describe(self) -> str:
        upper = "none" if self.max_tokens is None else str(self.max_tokens)
        return f"minTokens {self.min_tokens}, maxTokens {upper}"


@dataclass(frozen=True)
class NearDuplicateSettings(RuleSettings):
    """The near-duplicates rule: prompts whose word trigrams overlap by at least `threshold`
    (Jaccard similarity, estimated by MinHash)."""

    threshold: float = 0.8


@dataclass(frozen=True)
class QualitySettings:
    """The rules to apply and their limits (built by the config layer)."""

    duplicates: RuleSettings
    conflicting_labels: RuleSettings
    empty: RuleSettings
    garbage: RuleSettings
    leakage: RuleSettings
    length: LengthSettings = LengthSettings("warn")
    """Runs on the splits whose token counts are given (SplitInput.lengths)."""
    label_noise: RuleSettings | None = None
    """Runs when set and a detector is given to `check`."""
    conflicting_responses: RuleSettings | None = None
    """Runs when set and `check` is given a response column (causal LMs)."""
    near_duplicates: NearDuplicateSettings | None = None
    """Runs when set (causal LMs), on the prompts."""
    max_non_printable_fraction: float = 0.3
    max_dropped_fraction: float = 0.3
    examples_per_rule: int = 3


class QualityError(Exception):
    """Data the rules refuse; the message names the split and the counts.

    `rule` is the rule that failed, or "maxDroppedFraction" when the rules together would
    drop too many rows; `split` is the split it happened in.
    """

    def __init__(self, message: str, *, rule: str, split: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.split = split


Details = Mapping[str, npt.NDArray[Any]]
"""Per-row values (aligned with a split's rows) that a rule's examples show, by name."""


@dataclass
class RuleResult:
    """What one rule matched in one split."""

    rule: str
    split: str
    mode: RuleMode
    matched: int
    examples: list[dict[str, Any]]
    """Up to examples_per_rule rows: {"row": position in the file, "file" (when the input
    names the files), "text", "label"}, and what the rule measured (e.g. "tokens" for
    length)."""
    note: str = ""
    """What the rule used or why it did not run, e.g. its bounds or a skipped check."""


@dataclass(frozen=True)
class Finding:
    """What a rule computed outside the engine found (the label-noise detector)."""

    matched: Mask
    """Over all the rows of the split."""
    details: Details = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class SplitInput:
    """One split's rows and what the caller measured of them."""

    table: pa.Table
    positions: Codes | None = None
    """Each row's position in its file (from 0); left out: the row's position in `table`."""
    lengths: Codes | None = None
    """Each row's length in tokens, for the length rule; left out: the rule does not run."""
    origin: str = ""
    """Where the rows come from (a file), for messages."""
    files: npt.NDArray[np.object_] | None = None
    """Each row's source file, named in its examples; left out: examples name no file."""


@dataclass
class QualityReport:
    """Rows in and out per split, and every rule's result.

    rows_in: the rows read for a split (with a validation split held out of the training
    file, its held-out rows; the training file's other rows, those dropped before the
    split included, are train's). rows_out: the rows kept. rows_in - dropped == rows_out.
    """

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

    def refuse_excess_drops(self, split: str, limit: float, origin: str = "") -> None:
        """Raise QualityError when the rules dropped more than `limit` of the split's rows."""
        rows_in, rows_out = self.rows_in[split], self.rows_out[split]
        dropped = rows_in - rows_out
        if rows_in and dropped / rows_in > limit:
            per_rule: dict[str, int] = {}
            for r in self.results:
                if r.split == split and r.mode == "drop" and r.matched:
                    per_rule[r.rule] = per_rule.get(r.rule, 0) + r.matched
            raise QualityError(
                f"the rules would drop {dropped} of {rows_in} {split} rows{_of(origin)} "
                f"({dropped / rows_in:.0%}, more than maxDroppedFraction {limit}): "
                f"{_counts(per_rule)}; {rows_out} rows left",
                rule="maxDroppedFraction",
                split=split,
            )

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


def _of(origin: str) -> str:
    return f" of {origin}" if origin else ""


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


def rule_result(
    rule: str,
    split: str,
    mode: RuleMode,
    matched: Mask,
    rows: SplitInput,
    *,
    text_column: str,
    label_column: str | None,
    limit: int,
    details: Details | None = None,
    note: str = "",
) -> RuleResult:
    """A rule's result with its first `limit` examples, for rules run outside `check`."""
    texts = rows.table.column(text_column).cast(pa.large_string())
    where = _Where(_positions(rows), rows.files)
    shown = _examples(rows.table, texts, label_column, where, matched, limit, details or {})
    return RuleResult(rule, split, mode, int(matched.sum()), shown, note)


@dataclass(frozen=True)
class _Where:
    """Where each row of a split was read: its position in its file, and the file if known."""

    positions: Codes
    files: npt.NDArray[np.object_] | None

    def of(self, row: int) -> dict[str, Any]:
        found: dict[str, Any] = {"row": int(self.positions[row])}
        if self.files is not None:
            found["file"] = str(self.files[row])
        return found


def _examples(
    table: pa.Table,
    texts: pa.ChunkedArray,
    label_column: str | None,
    where: _Where,
    matched: Mask,
    limit: int,
    details: Details,
) -> list[dict[str, Any]]:
    """The first `limit` matched rows: file position (and file), clipped text, label, and
    `details`."""
    rows = np.flatnonzero(matched)[:limit]
    shown_texts = texts.take(rows).to_pylist()
    labels = (
        [None] * len(rows)
        if label_column is None
        else table.column(label_column).take(rows).to_pylist()
    )
    measured = {name: np.asarray(values)[rows].tolist() for name, values in details.items()}
    return [
        {
            **where.of(row),
            "text": _clipped(text),
            "label": label,
            **{name: values[i] for name, values in measured.items()},
        }
        for i, (row, text, label) in enumerate(zip(rows, shown_texts, labels, strict=True))
    ]


def _positions(rows: SplitInput) -> Codes:
    if rows.positions is None:
        return np.arange(rows.table.num_rows, dtype=np.int64)
    return rows.positions


@dataclass
class _Split:
    """One split's columns, and which rows are still kept as the rules run."""

    name: str
    origin: str
    table: pa.Table
    texts: pa.ChunkedArray
    normalised: pa.ChunkedArray
    label_column: str | None
    positions: Codes
    files: npt.NDArray[np.object_] | None
    lengths: Codes | None
    keep: Mask
    judged: Mask
    """Rows the rules after `empty` look at: kept so far, and with some text."""
    prompts: pa.ChunkedArray
    """The normalised prompts (a causal LM's) that leakage and near-duplicates compare; the
    normalised texts where there are no prompts."""
    responses: pa.ChunkedArray | None
    """The normalised responses, where a causal LM's rows have them."""

    def take_examples(self, matched: Mask, limit: int, details: Details) -> list[dict[str, Any]]:
        where = _Where(self.positions, self.files)
        return _examples(self.table, self.texts, self.label_column, where, matched, limit, details)


def _clipped(text: str | None) -> str | None:
    return None if text is None else text[:EXAMPLE_TEXT_CHARS]


def check(
    train: pa.Table | SplitInput,
    validation: pa.Table | SplitInput | None,
    *,
    text_column: str,
    label_column: str | None,
    settings: QualitySettings,
    earlier: Sequence[RuleResult] = (),
    label_noise: Callable[[Mask], Finding] | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
) -> tuple[Mask, Mask | None, QualityReport]:
    """The rows of each split to keep, and the report; raises QualityError as configured.

    Each split goes through empty, garbage, length (where token counts are given),
    duplicates and conflicting labels (the last only with a label column); a causal LM's
    rows, with `response_column`, are duplicates when prompt and response repeat, and go on
    through conflicting responses and near-duplicates of prompts. Then training rows whose
    text (or prompt, with `prompt_column`) is in the cleaned validation rows are leakage,
    and last the label-noise detector looks at the training rows still kept. A rule sees
    only the rows the rules before it kept. `earlier` holds the results of rules run on the
    files before (their dropped rows are no longer in the tables): they open the report and
    count in rows_in and in the dropped share.
    """
    results: list[RuleResult] = list(earlier)
    columns = _Columns(text_column, label_column, prompt_column, response_column)
    train_split = _split("train", _input(train), columns)
    _clean(train_split, settings, results)
    validation_split = None
    if validation is not None:
        validation_split = _split("validation", _input(validation), columns)
        _clean(validation_split, settings, results)
        leaked = _leaked(train_split, validation_split)
        _apply(train_split, "leakage", settings.leakage, leaked, settings, results)
    if label_noise is not None and settings.label_noise is not None:
        finding = label_noise(train_split.judged.copy())
        matched = finding.matched & train_split.judged
        rule = settings.label_noise
        _apply(train_split, "labelNoise", rule, matched, settings, results, finding)
    splits = [s for s in (train_split, validation_split) if s is not None]
    report = QualityReport(
        rows_in={s.name: s.table.num_rows + _dropped_before(earlier, s.name) for s in splits},
        rows_out={s.name: int(s.keep.sum()) for s in splits},
        results=results,
    )
    for split in splits:
        report.refuse_excess_drops(split.name, settings.max_dropped_fraction, split.origin)
    return train_split.keep, None if validation_split is None else validation_split.keep, report


def _input(rows: pa.Table | SplitInput) -> SplitInput:
    return rows if isinstance(rows, SplitInput) else SplitInput(rows)


def _dropped_before(earlier: Sequence[RuleResult], split: str) -> int:
    return sum(r.matched for r in earlier if r.split == split and r.mode == "drop")


@dataclass(frozen=True)
class _Columns:
    """The columns the rules read: text and label, and a causal LM's prompt and response."""

    text: str
    label: str | None
    prompt: str | None
    response: str | None


def _split(name: str, rows: SplitInput, columns: _Columns) -> _Split:
    table = rows.table
    texts = table.column(columns.text).cast(pa.large_string())
    normalised = normalise(texts)
    everything = np.ones(table.num_rows, dtype=np.bool_)
    return _Split(
        name,
        rows.origin,
        table,
        texts,
        normalised,
        columns.label,
        _positions(rows),
        rows.files,
        rows.lengths,
        everything,
        everything.copy(),
        (
            normalised
            if columns.prompt in (None, columns.text)
            else _normalised_column(table, columns.prompt)
        ),
        None if columns.response is None else _normalised_column(table, columns.response),
    )


def _normalised_column(table: pa.Table, column: str) -> pa.ChunkedArray:
    return normalise(pc.fill_null(table.column(column).cast(pa.large_string()), ""))


def _clean(split: _Split, settings: QualitySettings, results: list[RuleResult]) -> None:
    empty = _empty(split.texts)
    _apply(split, "empty", settings.empty, empty, settings, results)
    split.judged &= ~empty
    garbage = split.judged & _garbage(split.texts, settings.max_non_printable_fraction)
    _apply(split, "garbage", settings.garbage, garbage, settings, results)
    if split.lengths is not None:
        length = split.judged & ~garbage & _out_of_bounds(split.lengths, settings.length)
        tokens = Finding(length, {"tokens": split.lengths}, settings.length.describe())
        _apply(split, "length", settings.length, length, settings, results, tokens)
    text_codes, label_codes = _codes(split.normalised), _label_codes(split)
    has_words = _has_words(split.normalised)
    duplicates = _repeats(_pair_codes(text_codes, label_codes), split.judged & has_words)
    _apply(split, "duplicates", settings.duplicates, duplicates, settings, results)
    if split.label_column is not None:
        conflicting = _conflicting(text_codes, label_codes, split.judged & has_words)
        rule = settings.conflicting_labels
        _apply(split, "conflictingLabels", rule, conflicting, settings, results)
    _clean_prompts(split, settings, results)


def _clean_prompts(split: _Split, settings: QualitySettings, results: list[RuleResult]) -> None:
    """A causal LM's rules on its prompts: one prompt with several responses, and prompts
    nearly the same as an earlier one."""
    prompt_codes = _codes(split.prompts)
    has_prompt = _has_words(split.prompts)
    rule = settings.conflicting_responses
    if rule is not None and split.responses is not None:
        response_codes = _codes(split.responses)
        conflicting = _conflicting(prompt_codes, response_codes, split.judged & has_prompt)
        _apply(split, "conflictingResponses", rule, conflicting, settings, results)
    near = settings.near_duplicates
    if near is not None:
        candidates = split.judged & has_prompt
        matched = near_duplicates(split.prompts, prompt_codes, candidates, near.threshold)
        note = f"threshold {near.threshold}"
        _apply(
            split, "nearDuplicates", near, matched, settings, results, Finding(matched, {}, note)
        )


def _apply(
    split: _Split,
    rule: str,
    rule_settings: RuleSettings,
    matched: Mask,
    settings: QualitySettings,
    results: list[RuleResult],
    finding: Finding | None = None,
) -> None:
    """Record what `rule` matched, then fail, drop the rows or only keep count of them."""
    details, note = (finding.details, finding.note) if finding is not None else ({}, "")
    examples = split.take_examples(matched, settings.examples_per_rule, details)
    mode = rule_settings.mode
    result = RuleResult(rule, split.name, mode, int(matched.sum()), examples, note)
    if result.mode == "fail" and result.matched:
        raise QualityError(
            _failure(result, split.positions[matched], split.table.num_rows, split.origin),
            rule=rule,
            split=split.name,
        )
    if result.mode == "drop":
        split.keep &= ~matched
        split.judged &= ~matched
    results.append(result)


def _failure(result: RuleResult, rows: Codes, rows_in: int, origin: str) -> str:
    shown = ", ".join(str(row) for row in rows[:_SHOWN_ROWS])
    more = f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else ""
    note = f"; {result.note}" if result.note else ""
    return (
        f"{result.matched} of {rows_in} {result.split} rows{_of(origin)} match "
        f"(file rows {shown}{more}, counting from 0{note}) and the rule's mode is fail"
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
    matched = np.zeros(len(texts), dtype=np.bool_)
    suspects = np.flatnonzero(_mask(pc.match_substring_regex(texts, _SUSPECT_CHAR)))
    if not suspects.size:
        return matched
    rows = texts.take(pa.array(suspects))
    broken = pc.match_substring_regex(rows, _BROKEN_CHARS)
    unprintable = pc.count_substring_regex(rows, _UNPRINTABLE_CHAR).cast(pa.float64())
    fraction = pc.divide(unprintable, pc.utf8_length(rows).cast(pa.float64()))
    matched[suspects] = _mask(broken) | _mask(pc.greater(fraction, max_non_printable_fraction))
    return matched


def _out_of_bounds(lengths: Codes, bounds: LengthSettings) -> Mask:
    short: Mask = lengths < bounds.min_tokens
    if bounds.max_tokens is None:
        return short
    return short | (lengths > bounds.max_tokens)


def _has_words(normalised: pa.ChunkedArray) -> Mask:
    """Rows whose normalised text is not empty (all-punctuation rows have nothing to compare)."""
    return _mask(pc.not_equal(normalised, ""))


def _codes(values: pa.ChunkedArray) -> Codes:
    """The same integer for equal values (null included), from 0: one hash pass.

    The chunks of a dictionary-encoded chunked array share one growing dictionary, so the
    chunks' indices are codes of the whole column.
    """
    encoded = pc.dictionary_encode(_as_chunked(values), null_encoding="encode")
    indices = [chunk.indices.to_numpy(zero_copy_only=False) for chunk in encoded.chunks]
    return np.concatenate(indices).astype(np.int64) if indices else np.zeros(0, np.int64)


def _label_codes(split: _Split) -> Codes:
    """What makes rows with the same text different: the label, or a causal LM's response."""
    if split.label_column is not None:
        return _codes(split.table.column(split.label_column))
    if split.responses is not None:
        return _codes(split.responses)
    return np.zeros(split.table.num_rows, dtype=np.int64)


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
    """Training rows whose normalised text (a causal LM's: prompt) is in the kept validation
    rows."""
    kept = validation.prompts.filter(pa.array(validation.judged))
    inside = pc.is_in(train.prompts, value_set=kept.combine_chunks())
    return train.judged & _has_words(train.prompts) & _mask(inside)
