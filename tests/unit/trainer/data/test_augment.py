"""EDA augmentation on hand-made rows whose answers are known: plans, edits, synonym tables."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune_trainer.config import AugmentationOperation, AugmentationSpec, DataSource
from kubetune_trainer.data.augment import (
    AugmentationError,
    AugmentedTexts,
    augment_texts,
    plan_augmentation,
    read_synonyms,
)

TWENTY_WORDS = (
    "one two three four five six seven eight nine ten "
    "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
)
SYNONYMS = {"great": ["fine", "superb"], "kettle": ["pot"], "boils": ["heats"]}


def spec(*operations: AugmentationOperation, **fields: Any) -> AugmentationSpec:
    if "synonym" in operations:
        fields.setdefault("synonyms", DataSource(source="synonyms.csv"))
    return AugmentationSpec(operations=list(operations or ["swap"]), **fields)


def labels(*ids: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.array(ids, dtype=np.int64)


def augment(
    texts: list[str | None],
    *operations: AugmentationOperation,
    copies: int = 1,
    seed: int = 0,
    synonyms: dict[str, list[str]] | None = None,
    **fields: Any,
) -> AugmentedTexts:
    """`copies` edited copies of every text."""
    sources = np.repeat(np.arange(len(texts), dtype=np.int64), copies)
    return augment_texts(texts, sources, spec(*operations, **fields), seed, synonyms)


# --- plan_augmentation -----------------------------------------------------------------


def test_multiple_one_uses_every_row_once() -> None:
    plan = plan_augmentation(labels(*[0] * 5, *[1] * 5), 2, spec(multiple=1.0), seed=3)
    assert plan.tolist() == list(range(10))
    assert plan.dtype == np.int64


def test_a_fractional_multiple_spreads_the_rows_evenly() -> None:
    plan = plan_augmentation(labels(0, 1, 0, 1), 2, spec(multiple=2.5), seed=3)
    uses = np.bincount(plan, minlength=4)
    assert len(plan) == 10
    assert sorted(uses.tolist()) == [2, 2, 3, 3]
    assert plan.tolist() == sorted(plan.tolist())


def test_which_rows_get_the_extra_copy_depends_on_the_seed() -> None:
    def extras(seed: int) -> list[int]:
        plan = plan_augmentation(labels(*[0] * 20), 1, spec(multiple=0.25), seed)
        return [int(row) for row in plan]

    assert extras(1) == extras(1)
    assert len(extras(1)) == 5
    assert len(set(extras(1))) == 5
    assert {tuple(extras(seed)) for seed in range(5)} != {tuple(extras(1))}


def test_counts_round_half_up() -> None:
    assert len(plan_augmentation(labels(*[0] * 5), 1, spec(multiple=0.5), seed=0)) == 3
    assert len(plan_augmentation(labels(*[0] * 100), 1, spec(multiple=0.29), seed=0)) == 29


def test_minority_only_fills_the_smaller_classes_up_to_the_largest() -> None:
    ids = labels(*[0] * 8, *[1] * 3, *[2] * 2)
    rng = np.random.default_rng(0)
    ids = ids[rng.permutation(len(ids))]  # classes interleaved, as in a real file
    plan = plan_augmentation(ids, 3, spec(multiple=2.0, minority_only=True), seed=5)
    per_class = np.bincount(ids[plan], minlength=3)
    assert per_class.tolist() == [0, 5, 4]  # 0, min(8 - 3, 2 x 3), min(8 - 2, 2 x 2)
    uses = np.bincount(plan, minlength=len(ids))
    assert not uses[ids == 0].any()
    assert sorted(uses[ids == 1].tolist()) == [1, 2, 2]
    assert uses[ids == 2].tolist() == [2, 2]
    assert plan.tolist() == sorted(plan.tolist())


def test_minority_only_rounds_each_class_down() -> None:
    ids = labels(*[0] * 10, *[1] * 3)
    plan = plan_augmentation(ids, 2, spec(multiple=0.5, minority_only=True), seed=0)
    assert len(plan) == 1  # floor(0.5 x 3)
    assert ids[plan].tolist() == [1]


def test_minority_only_leaves_every_largest_class_and_empty_classes_alone() -> None:
    ids = labels(0, 0, 0, 1, 1, 1, 2)
    plan = plan_augmentation(ids, 4, spec(multiple=5.0, minority_only=True), seed=0)
    assert plan.tolist() == [6, 6]  # class 2 up to 3 rows; class 3 has no rows to copy


@pytest.mark.parametrize("minority_only", [False, True])
def test_multiple_zero_adds_nothing(minority_only: bool) -> None:
    spec_ = spec(multiple=0.0, minority_only=minority_only)
    assert plan_augmentation(labels(0, 0, 0, 1), 2, spec_, seed=0).tolist() == []


def test_no_rows_plan_nothing() -> None:
    assert plan_augmentation(labels(), 2, spec(multiple=3.0), seed=0).tolist() == []


def test_labels_outside_the_classes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        plan_augmentation(labels(0, 2), 2, spec(), seed=0)


# --- augment_texts: determinism and bookkeeping -----------------------------------------


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_rows() -> None:
    texts: list[str | None] = [TWENTY_WORDS, "the kettle boils fast", "Great kettle, great price"]
    ops: tuple[AugmentationOperation, ...] = ("swap", "delete", "insert", "synonym")
    first = augment(texts, *ops, copies=5, seed=7, synonyms=SYNONYMS)
    again = augment(texts, *ops, copies=5, seed=7, synonyms=SYNONYMS)
    other = augment(texts, *ops, copies=5, seed=8, synonyms=SYNONYMS)
    assert first.texts == again.texts
    assert first.operations == again.operations
    assert first.texts != other.texts


def test_sources_and_operations_align_with_the_texts() -> None:
    result = augment(["a b c", "d e f g"], "swap", "delete", "insert", copies=4, seed=1)
    assert result.sources.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(result.texts) == len(result.operations) == 8
    assert set(result.operations) <= {"swap", "delete", "insert"}
    assert result.counts() == {
        op: n for op in ("swap", "delete", "insert") if (n := result.operations.count(op))
    }


def test_every_operation_gets_drawn() -> None:
    result = augment([TWENTY_WORDS], "swap", "delete", "insert", copies=60, seed=2)
    assert set(result.operations) == {"swap", "delete", "insert"}


def test_rows_without_words_are_left_out() -> None:
    result = augment(["good kettle", None, "", "  \t ", "nice lamp"], "swap", seed=0)
    assert result.sources.tolist() == [0, 4]
    assert len(result.texts) == 2


def test_sources_outside_the_texts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        augment_texts(["a b", "c d"], labels(0, 2), spec(), 0, None)


def test_the_synonym_edit_needs_a_table() -> None:
    with pytest.raises(ValueError, match="synonyms table"):
        augment(["a b"], "synonym", synonyms=None)


# --- the edits ---------------------------------------------------------------------------


def test_swap_keeps_the_words_and_changes_their_order() -> None:
    text = "the small red kettle boils water quickly today, really fast"
    result = augment([text], "swap", copies=50, seed=4)
    for new in result.texts:
        assert Counter(new.split()) == Counter(text.split())
        assert new != text  # ten distinct words, one swap of two positions
    assert set(result.operations) == {"swap"}


def test_delete_removes_exactly_the_fraction_and_keeps_the_order() -> None:
    result = augment([TWENTY_WORDS], "delete", copies=30, seed=4, word_fraction=0.1)
    for new in result.texts:
        assert len(new.split()) == 18  # round(0.1 x 20) = 2 words gone
        assert is_subsequence(new.split(), TWENTY_WORDS.split())


def test_delete_never_empties_a_row() -> None:
    result = augment(["two words", "three short words"], "delete", copies=30, word_fraction=0.5)
    for source, new in zip(result.sources.tolist(), result.texts, strict=True):
        assert len(new.split()) == 1  # round(0.5 x 2) = 1, round(0.5 x 3) = 2 (halves up)
        assert new in ["two words", "three short words"][source].split()


def test_insert_adds_words_of_the_row_itself() -> None:
    result = augment([TWENTY_WORDS], "insert", copies=30, seed=4, word_fraction=0.1)
    for new in result.texts:
        added = Counter(new.split()) - Counter(TWENTY_WORDS.split())
        assert sum(added.values()) == 2
        assert set(added) <= set(TWENTY_WORDS.split())
        assert is_subsequence(TWENTY_WORDS.split(), new.split())


def test_at_least_one_word_changes() -> None:
    result = augment(["the kettle boils"], "insert", word_fraction=0.1)
    assert len(result.texts[0].split()) == 4  # 0.1 x 3 rounds to 0, raised to 1


@pytest.mark.parametrize("operation", ["swap", "delete"])
def test_a_one_word_row_is_inserted_into_instead(operation: AugmentationOperation) -> None:
    result = augment(["Wonderful!"], operation, copies=3)
    assert result.texts == ["Wonderful! Wonderful!"] * 3
    assert result.operations == ["insert"] * 3


def test_synonym_replaces_only_listed_words_and_keeps_case_and_punctuation() -> None:
    text = "Great kettle, it boils (great) water"
    result = augment([text], "synonym", copies=40, seed=1, synonyms=SYNONYMS, word_fraction=0.5)
    allowed = [
        {"Great", "Fine", "Superb"},
        {"kettle,", "pot,"},
        {"it"},
        {"boils", "heats"},
        {"(great)", "(fine)", "(superb)"},
        {"water"},
    ]
    for new in result.texts:
        words = new.split()
        assert len(words) == 6
        assert all(word in options for word, options in zip(words, allowed, strict=True))
        changed = sum(a != b for a, b in zip(words, text.split(), strict=True))
        assert changed == 3  # round(0.5 x 6) of the four listed words
    assert set(result.operations) == {"synonym"}
    assert {new.split()[0] for new in result.texts} == {"Great", "Fine", "Superb"}


def test_synonym_lookup_ignores_case() -> None:
    result = augment(["KETTLE here"], "synonym", synonyms={"Kettle": ["pot"]})
    assert result.texts == ["Pot here"]


def test_synonym_changes_the_fraction_of_the_words() -> None:
    table = {word: [word.upper() + "X"] for word in TWENTY_WORDS.split()}
    result = augment([TWENTY_WORDS], "synonym", copies=10, synonyms=table, word_fraction=0.1)
    for new in result.texts:
        changed = [a for a, b in zip(new.split(), TWENTY_WORDS.split(), strict=True) if a != b]
        assert len(changed) == 2
        assert all(word.endswith("X") for word in changed)


def test_synonym_falls_back_to_swap_when_no_word_is_listed() -> None:
    result = augment(["nothing listed here"], "synonym", copies=5, synonyms=SYNONYMS)
    assert result.operations == ["swap"] * 5
    for new in result.texts:
        assert sorted(new.split()) == ["here", "listed", "nothing"]


def test_a_one_word_row_without_synonyms_is_inserted_into() -> None:
    result = augment(["hello"], "synonym", synonyms=SYNONYMS)
    assert (result.texts, result.operations) == (["hello hello"], ["insert"])


def test_a_word_is_never_replaced_by_itself() -> None:
    result = augment(["great day"], "synonym", copies=5, synonyms={"great": ["Great", "good"]})
    assert result.texts == ["good day"] * 5


@given(
    words=st.lists(st.text(alphabet="abcxyz.,!'", min_size=1, max_size=6), min_size=1, max_size=30),
    operation=st.sampled_from(["swap", "delete", "insert"]),
    fraction=st.floats(min_value=0.01, max_value=0.5),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_word_edits_only_use_the_row_s_own_words(
    words: list[str], operation: AugmentationOperation, fraction: float, seed: int
) -> None:
    text = " ".join(words)
    result = augment([text], operation, copies=3, seed=seed, word_fraction=fraction)
    for new, done in zip(result.texts, result.operations, strict=True):
        assert new.split()
        assert set(new.split()) <= set(words)
        grown = Counter(new.split()) - Counter(words)
        shrunk = Counter(words) - Counter(new.split())
        expected = {"swap": (False, False), "delete": (False, True), "insert": (True, False)}
        assert (bool(grown), bool(shrunk)) == expected[done]


def is_subsequence(short: list[str], long: list[str]) -> bool:
    remaining = iter(long)
    return all(word in remaining for word in short)


# --- read_synonyms -----------------------------------------------------------------------


def test_read_synonyms_is_directional_lower_cased_and_deduplicated() -> None:
    table = pa.table(
        {
            "word": ["Great", "great", "great ", "kettle", "Happy", "fast"],
            "synonym": ["fine", " superb", "fine", "pot", "happy", "Quick"],
            "note": ["", "", "", "", "", ""],
        }
    )
    assert read_synonyms(table, "syn.csv") == {
        "great": ["fine", "superb"],
        "kettle": ["pot"],
        "fast": ["Quick"],
    }


def test_read_synonyms_reads_numbers_as_text() -> None:
    table = pa.table({"word": [1, 2], "synonym": ["one", "two"]})
    assert read_synonyms(table, "syn.csv") == {"1": ["one"], "2": ["two"]}


def test_a_missing_column_is_named_with_the_columns_there_are() -> None:
    table = pa.table({"term": ["great"], "synonym": ["fine"]})
    with pytest.raises(AugmentationError) as error:
        read_synonyms(table, "/data/syn.csv")
    assert str(error.value) == (
        "data.augmentation.synonyms: /data/syn.csv has no column 'word' "
        "(columns: term, synonym); the table needs the columns word and synonym"
    )


def test_an_empty_table_is_refused() -> None:
    table = pa.table({"word": pa.array([], pa.string()), "synonym": pa.array([], pa.string())})
    with pytest.raises(AugmentationError, match=r"^data\.augmentation\.synonyms: s\.csv has no"):
        read_synonyms(table, "s.csv")


def test_empty_cells_are_counted_and_their_rows_named() -> None:
    table = pa.table(
        {
            "word": ["great", None, "kettle", "fast", "  "],
            "synonym": ["fine", "good", "", None, "x"],
        }
    )
    with pytest.raises(AugmentationError) as error:
        read_synonyms(table, "/data/syn.csv")
    assert str(error.value) == (
        "data.augmentation.synonyms: /data/syn.csv has 4 rows with an empty or missing cell "
        "(word in data rows 2, 5; synonym in data rows 3, 4); every row needs a word and a synonym"
    )


def test_many_empty_cells_show_the_first_rows() -> None:
    table = pa.table({"word": ["a", *[None] * 8], "synonym": ["b"] * 9})
    with pytest.raises(AugmentationError, match=r"8 rows .*data rows 2, 3, 4, 5, 6 and 3 more"):
        read_synonyms(table, "syn.csv")


def test_a_phrase_in_the_word_column_is_refused() -> None:
    table = pa.table({"word": ["great", "ice cream"], "synonym": ["fine", "gelato"]})
    with pytest.raises(AugmentationError) as error:
        read_synonyms(table, "syn.csv")
    assert "syn.csv has 1 row whose word is more than one word (data row 2, e.g. 'ice cream')" in (
        str(error.value)
    )


def test_a_column_that_is_not_text_is_refused() -> None:
    table = pa.table({"word": [["a"], ["b"]], "synonym": ["x", "y"]})
    with pytest.raises(AugmentationError, match=r"column 'word' of syn\.csv holds list<.*not text"):
        read_synonyms(table, "syn.csv")


def test_a_read_table_drives_the_synonym_edit() -> None:
    table = pa.table({"word": ["Kettle"], "synonym": ["pot"]})
    result = augment(["The kettle."], "synonym", synonyms=read_synonyms(table, "syn.csv"))
    assert result.texts == ["The pot."]
