"""Scores of generated completions against reference responses (evaluation.generation).

A causal LM's loss says how likely it finds the references, not whether it answers with
them; these say the latter, on the text a user would read. Three scores, each a mean over
the completions, higher is better, as the camelCase metric names that evaluation.metric
may pick:

- exactMatch: the completion's words equal the reference's (case and spacing ignored);
- tokenF1: the F1 of the words the two share, counted with repeats (SQuAD's token F1);
- rougeL: the F-measure of their longest common subsequence of words (ROUGE-L, Lin 2004),
  by Google's `rouge-score` package, the reference implementation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache

from rouge_score.rouge_scorer import RougeScorer

EXACT_MATCH = "exactMatch"
TOKEN_F1 = "tokenF1"
ROUGE_L = "rougeL"


def words(text: str) -> list[str]:
    """The words that exactMatch and tokenF1 compare: lower-cased, split on whitespace."""
    return text.lower().split()


def exact_match(completion: str, reference: str) -> float:
    """1.0 when the two have the same words in the same order, else 0.0."""
    return float(words(completion) == words(reference))


def token_f1(completion: str, reference: str) -> float:
    """The F1 of the words shared by the two (two empty texts agree fully)."""
    predicted, expected = words(completion), words(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge_scorer() -> RougeScorer:
    return RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(completion: str, reference: str) -> float:
    """ROUGE-L's F-measure of the completion against the reference (rouge-score)."""
    return float(_rouge_scorer().score(reference, completion)["rougeL"].fmeasure)


def row_scores(completion: str, reference: str) -> dict[str, float]:
    """One completion's three scores, by metric name."""
    return {
        EXACT_MATCH: exact_match(completion, reference),
        TOKEN_F1: token_f1(completion, reference),
        ROUGE_L: rouge_l(completion, reference),
    }


def generation_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each score over the rows' scores (`row_scores`)."""
    return {
        name: sum(row[name] for row in rows) / len(rows)
        for name in (EXACT_MATCH, TOKEN_F1, ROUGE_L)
    }
