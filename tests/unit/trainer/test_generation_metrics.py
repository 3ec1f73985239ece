"""The scores of generated completions: ROUGE-L equals rouge-score's own, exact match and
token F1 equal a count done by hand on fixed strings."""

from __future__ import annotations

import pytest
from rouge_score.rouge_scorer import RougeScorer

from kubetune_trainer.generation_metrics import (
    exact_match,
    generation_metrics,
    rouge_l,
    row_scores,
    token_f1,
)

PAIRS = [
    # (completion, reference)
    ("The cat sat on the mat", "the cat sat on the mat"),
    ("a cat sat", "the cat sat on the mat"),
    ("mat the on", "the cat sat on the mat"),
    ("", "paris"),
    ("Paris  is the capital", "paris is the capital of france"),
]


def test_exact_match_ignores_case_and_spacing_only() -> None:
    assert [exact_match(c, r) for c, r in PAIRS] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert exact_match("  Paris ", "paris") == 1.0
    assert exact_match("paris.", "paris") == 0.0


def test_token_f1_counts_shared_words_with_repeats() -> None:
    # "a cat sat" vs 6 reference words: cat and sat shared; P = 2/3, R = 2/6.
    assert token_f1(*PAIRS[1]) == pytest.approx(2 * (2 / 3) * (2 / 6) / (2 / 3 + 2 / 6))
    # "mat the on": all three shared ("the" once); P = 1, R = 3/6.
    assert token_f1(*PAIRS[2]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    # "paris is the capital" vs 6 words: 4 shared; P = 1, R = 4/6.
    assert token_f1(*PAIRS[4]) == pytest.approx(2 * (4 / 6) / (1 + 4 / 6))
    assert token_f1(*PAIRS[0]) == 1.0
    assert token_f1(*PAIRS[3]) == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("the the the", "the cat") == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_rouge_l_is_rouge_scores_f_measure() -> None:
    scorer = RougeScorer(["rougeL"])
    for completion, reference in PAIRS:
        expected = scorer.score(reference, completion)["rougeL"].fmeasure
        assert rouge_l(completion, reference) == pytest.approx(expected)
    # "mat the on" shares the subsequence "the on" (2 words) with the reference: P 2/3, R 2/6.
    assert rouge_l(*PAIRS[2]) == pytest.approx(2 * (2 / 3) * (2 / 6) / (2 / 3 + 2 / 6))


def test_the_metrics_are_means_over_the_rows() -> None:
    metrics = generation_metrics([row_scores(c, r) for c, r in PAIRS])
    assert metrics["exactMatch"] == pytest.approx(1 / 5)
    assert metrics["tokenF1"] == pytest.approx(sum(token_f1(c, r) for c, r in PAIRS) / 5)
    assert metrics["rougeL"] == pytest.approx(sum(rouge_l(c, r) for c, r in PAIRS) / 5)
