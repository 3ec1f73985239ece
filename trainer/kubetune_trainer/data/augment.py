"""EDA augmentation: more training rows for scarce data, made by small edits of real rows.

With a few hundred labelled rows a fine-tune overfits quickly. Easy Data Augmentation (Wei
and Zou 2019) makes new training rows from the old ones with four cheap word-level edits
(swap words, delete words, insert words, replace words by synonyms) that almost never
change the label, and reports gains of a few points on small text-classification sets.
An edited row is a new row of its source's class; with `minorityOnly` the new rows go to
the classes smaller than the largest, a gentler remedy for imbalance than repeating rows.

The work is split so that the data pipeline keeps its columns aligned:
`plan_augmentation` picks the source row of every new row, `augment_texts` edits the
texts, and the caller copies the label, text-pair, weight and sensitive columns of each
new row from `AugmentedTexts.sources`. Only training rows are passed in: validation rows
stay the user's real data, and the caller removes new rows that collide with them.

Unlike the rest of the data pipeline, `augment_texts` loops over rows in Python: an edit
re-splits and re-joins one row's words, which has no columnar form worth its complexity,
and augmentation is for scarce data (thousands of rows, not millions).

Determinism: each function makes one numpy Generator seeded with `seed` and draws from it
in a fixed order (class by class, then row by row in the order of the sources), so the
same rows, spec and seed give the same new rows on every worker and after every restart.

Words are whitespace-separated tokens and punctuation stays attached ("great!" is one
word); an edited row's words are joined by single spaces. Counts round halves up.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from kubetune_trainer.config import AugmentationOperation, AugmentationSpec

Indices = npt.NDArray[np.int64]
Synonyms = Mapping[str, Sequence[str]]

SYNONYMS_FIELD = "data.augmentation.synonyms"
OPERATION_ORDER: tuple[AugmentationOperation, ...] = ("swap", "delete", "insert", "synonym")
_SHOWN = 5
"""How many row numbers a message lists."""
_EPSILON = 1e-9
"""Absorbs float error in counts: 0.29 * 100 is 28.999999999999996, and means 29."""
_AROUND_WORD = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
"""Punctuation before a word, the word, punctuation after it: "(great)," -> "(", "great", "),"."""


class AugmentationError(Exception):
    """An unusable augmentation input; the message names the manifest field, file and rows."""


@dataclass(frozen=True, eq=False)
class AugmentedTexts:
    """The new training rows, aligned: text, source row and the edit that made it.

    A planned row whose source text has no words (missing, empty or only spaces) is left
    out, so `sources` can be shorter than the plan; copy the other columns from it.
    """

    texts: list[str]
    sources: Indices
    """The training row (position in the texts passed in) each new row was made from."""
    operations: list[str]
    """The edit that made each row: swap, delete, insert or synonym (after any fallback)."""

    def counts(self) -> dict[str, int]:
        """New rows per edit, in the order swap, delete, insert, synonym; zeros left out."""
        tally = Counter(self.operations)
        return {operation: tally[operation] for operation in OPERATION_ORDER if tally[operation]}


# --- which rows to copy ----------------------------------------------------------------


def plan_augmentation(
    label_ids: Indices, num_classes: int, spec: AugmentationSpec, seed: int
) -> Indices:
    """The source row of each new row, sorted.

    Without minorityOnly: round(multiple x rows) new rows, spread evenly, so each row is
    the source of floor or ceil of that over rows new rows (which rows get one more is
    drawn with the seed). With minorityOnly: each class smaller than the largest gets
    min(largest - count, floor(multiple x count)) new rows (rounded down, so no class
    grows by more than `multiple` per row nor past the largest), spread evenly over its
    own rows; the largest class(es) get none. For a task without classes pass zeros and 1.
    """
    _check_labels(label_ids, num_classes)
    rng = np.random.default_rng(seed)
    if not spec.minority_only:
        rows = np.arange(len(label_ids), dtype=np.int64)
        return _spread(rows, _round_half_up(spec.multiple * len(rows)), rng)
    counts = np.bincount(label_ids, minlength=num_classes)
    largest = int(counts.max(initial=0))
    plans = [np.zeros(0, np.int64)]
    for label, count in enumerate(counts.tolist()):
        new_rows = min(largest - count, _round_down(spec.multiple * count))
        if new_rows > 0:
            plans.append(_spread(np.flatnonzero(label_ids == label), new_rows, rng))
    return np.sort(np.concatenate(plans))


def _check_labels(label_ids: Indices, num_classes: int) -> None:
    if label_ids.ndim != 1:
        raise ValueError(f"label_ids must be one-dimensional, not {label_ids.ndim}-dimensional")
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() >= num_classes):
        raise ValueError(f"label_ids must lie in [0, {num_classes}) for {num_classes} classes")


def _spread(rows: Indices, total: int, rng: np.random.Generator) -> Indices:
    """`total` picks from `rows`: each row floor or ceil of total/rows times, extras at random."""
    if total <= 0 or len(rows) == 0:
        return np.zeros(0, np.int64)
    each, extra = divmod(total, len(rows))
    times = np.full(len(rows), each, np.int64)
    times[rng.choice(len(rows), size=extra, replace=False)] += 1
    return np.repeat(rows.astype(np.int64), times)


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5 + _EPSILON)


def _round_down(value: float) -> int:
    return math.floor(value + _EPSILON)


# --- the edits -------------------------------------------------------------------------


def augment_texts(
    texts: Sequence[str | None],
    sources: Indices,
    spec: AugmentationSpec,
    seed: int,
    synonyms: Synonyms | None,
) -> AugmentedTexts:
    """One edited copy of texts[source] for each planned source row.

    Each row draws one edit from spec.operations and changes max(1, round(wordFraction x
    words)) words. synonym falls back to swap when no word of the row is in the table;
    swap and delete fall back to insert on a one-word row. The edit actually made is the
    one recorded.
    """
    _check_sources(sources, len(texts))
    if "synonym" in spec.operations and synonyms is None:
        raise ValueError("the synonym operation needs a synonyms table")
    table = _lookup_table(synonyms or {})
    rng = np.random.default_rng(seed)
    new_texts: list[str] = []
    kept: list[int] = []
    operations: list[str] = []
    for source in sources.tolist():
        words = (texts[source] or "").split()
        if not words:
            continue
        drawn = spec.operations[int(rng.integers(len(spec.operations)))]
        changes = _words_to_change(len(words), spec.word_fraction)
        edited, operation = _edit(words, drawn, changes, rng, table)
        new_texts.append(" ".join(edited))
        kept.append(source)
        operations.append(operation)
    return AugmentedTexts(new_texts, np.asarray(kept, dtype=np.int64), operations)


def _words_to_change(words: int, word_fraction: float) -> int:
    """How many words one edit changes: max(1, round(fraction x words)), halves up."""
    return max(1, _round_half_up(word_fraction * words))


def _check_sources(sources: Indices, rows: int) -> None:
    if sources.size and (sources.min() < 0 or sources.max() >= rows):
        raise ValueError(f"sources must lie in [0, {rows}) for {rows} texts")


def _edit(
    words: list[str],
    operation: AugmentationOperation,
    changes: int,
    rng: np.random.Generator,
    synonyms: dict[str, list[str]],
) -> tuple[list[str], AugmentationOperation]:
    """The edited words and the edit made, after the fallbacks."""
    if operation == "synonym":
        replaced = _replace_synonyms(words, changes, rng, synonyms)
        if replaced is not None:
            return replaced, "synonym"
        operation = "swap"
    if operation in ("swap", "delete") and len(words) < 2:
        operation = "insert"
    if operation == "swap":
        return _swap_words(words, changes, rng), "swap"
    if operation == "delete":
        return _delete_words(words, changes, rng), "delete"
    return _insert_words(words, changes, rng), "insert"


def _swap_words(words: Sequence[str], times: int, rng: np.random.Generator) -> list[str]:
    """Swap two different positions, `times` times (needs two words)."""
    edited = list(words)
    for _ in range(times):
        first = int(rng.integers(len(edited)))
        second = int(rng.integers(len(edited) - 1))
        second += second >= first
        edited[first], edited[second] = edited[second], edited[first]
    return edited


def _delete_words(words: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """Delete `count` words at random positions, but always keep at least one."""
    doomed = rng.choice(len(words), size=min(count, len(words) - 1), replace=False)
    keep = np.ones(len(words), dtype=np.bool_)
    keep[doomed] = False
    return [word for word, kept in zip(words, keep.tolist(), strict=True) if kept]


def _insert_words(words: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """Insert `count` copies of the row's own words, each at a random position.

    EDA inserts synonyms of the row's words; like the config's insert edit, this inserts
    the row's words themselves, so it needs no table and brings in no new vocabulary.
    """
    edited = list(words)
    for _ in range(count):
        word = words[int(rng.integers(len(words)))]
        edited.insert(int(rng.integers(len(edited) + 1)), word)
    return edited


def _replace_synonyms(
    words: Sequence[str],
    count: int,
    rng: np.random.Generator,
    synonyms: Mapping[str, Sequence[str]],
) -> list[str] | None:
    """Replace up to `count` words found in `synonyms` by one of their synonyms.

    Words are looked up lower-cased and without surrounding punctuation, which is kept
    around the synonym; a capitalised word gets a capitalised synonym (otherwise the
    table's spelling is kept, so acronyms stay acronyms). None when no word has one.
    """
    candidates = [i for i, word in enumerate(words) if _word_key(word) in synonyms]
    if not candidates:
        return None
    chosen = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    edited = list(words)
    for position in (candidates[i] for i in chosen.tolist()):
        before, word, after = _around(edited[position])
        options = synonyms[word.lower()]
        synonym = options[int(rng.integers(len(options)))]
        edited[position] = before + _capitalised_like(word, synonym) + after
    return edited


def _around(token: str) -> tuple[str, str, str]:
    match = _AROUND_WORD.match(token)
    assert match is not None  # the pattern matches every string
    return match.group(1), match.group(2), match.group(3)


def _word_key(token: str) -> str:
    return _around(token)[1].lower()


def _capitalised_like(word: str, synonym: str) -> str:
    if word[:1].isupper() and synonym:
        return synonym[0].upper() + synonym[1:]
    return synonym


def _lookup_table(synonyms: Synonyms) -> dict[str, list[str]]:
    """Keys as words are looked up; synonyms deduplicated, never the word itself."""
    table: dict[str, list[str]] = {}
    for key, options in synonyms.items():
        word = _word_key(key)
        found = table.setdefault(word, [])
        for option in options:
            if option.strip() and option.lower() != word and option not in found:
                found.append(option)
    return {word: options for word, options in table.items() if word and options}


# --- the synonyms table ----------------------------------------------------------------


def read_synonyms(table: pa.Table, origin: str) -> dict[str, list[str]]:
    """word -> synonyms from a table with the text columns word and synonym.

    The table is directional: a row lets its word be replaced by its synonym, not the
    reverse (a pair that should work both ways needs two rows). Keys are lower-cased;
    cells are trimmed; repeated pairs count once, and a word listed as its own synonym is
    ignored. Raises AugmentationError for a missing column, no rows, an empty or missing
    cell, or a word cell holding more than one word (the edit replaces single words).
    """
    missing = [column for column in ("word", "synonym") if column not in table.column_names]
    if missing:
        raise AugmentationError(
            f"{SYNONYMS_FIELD}: {origin} has no column {missing[0]!r} "
            f"(columns: {', '.join(table.column_names) or 'none'}); "
            "the table needs the columns word and synonym"
        )
    if table.num_rows == 0:
        raise AugmentationError(f"{SYNONYMS_FIELD}: {origin} has no rows")
    words, synonyms = (_cells(table, column, origin) for column in ("word", "synonym"))
    _refuse_blank_cells({"word": words, "synonym": synonyms}, origin)
    _refuse_phrases(words, origin)
    return _pairs(words.to_pylist(), synonyms.to_pylist())


def _cells(table: pa.Table, column: str, origin: str) -> pa.ChunkedArray:
    values = table.column(column)
    try:
        return pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    except pa.ArrowException:
        raise AugmentationError(
            f"{SYNONYMS_FIELD}: column {column!r} of {origin} holds {values.type} values, not text"
        ) from None


def _refuse_blank_cells(columns: dict[str, pa.ChunkedArray], origin: str) -> None:
    blank = {name: _blank(values) for name, values in columns.items()}
    rows = int(np.count_nonzero(np.logical_or.reduce(list(blank.values()))))
    if rows:
        where = [f"{name} in {_row_list(mask)}" for name, mask in blank.items() if mask.any()]
        raise AugmentationError(
            f"{SYNONYMS_FIELD}: {origin} has {_rows(rows)} with an empty or missing cell "
            f"({'; '.join(where)}); every row needs a word and a synonym"
        )


def _refuse_phrases(words: pa.ChunkedArray, origin: str) -> None:
    phrases = _mask(pc.match_substring_regex(words, r"\s"))
    if phrases.any():
        first = words[int(np.flatnonzero(phrases)[0])].as_py()
        raise AugmentationError(
            f"{SYNONYMS_FIELD}: {origin} has {_rows(int(phrases.sum()))} whose word is more "
            f"than one word ({_row_list(phrases)}, e.g. {first!r}); "
            "the synonym edit replaces single words"
        )


def _blank(values: pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    return _mask(pc.or_kleene(pc.is_null(values), pc.equal(values, "")))


def _mask(values: pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    filled = pc.fill_null(values, False)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.bool_)


def _row_list(mask: npt.NDArray[np.bool_]) -> str:
    """ "data rows 3, 5 and 2 more": the first rows where `mask` is true, counted from 1."""
    numbers = (np.flatnonzero(mask) + 1).tolist()
    shown = ", ".join(str(number) for number in numbers[:_SHOWN])
    more = f" and {len(numbers) - _SHOWN} more" if len(numbers) > _SHOWN else ""
    return f"data {'row' if len(numbers) == 1 else 'rows'} {shown}{more}"


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _pairs(words: list[str], synonyms: list[str]) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for word, synonym in zip(words, synonyms, strict=True):
        key = word.lower()
        options = table.setdefault(key, [])
        if synonym.lower() != key and synonym not in options:
            options.append(synonym)
    return {key: options for key, options in table.items() if options}
