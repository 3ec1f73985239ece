"""Stereotype sentence pairs for the bias audit of a causal LM, and their scores.

A language model has no favourable class to compare across groups; what it has is a
likelihood for every sentence. CrowS-Pairs (Nangia et al. 2020) measures bias with pairs of
sentences that differ only in a group term, one more stereotypical than the other: a model
without a preference finds the more stereotypical side likelier in half of the pairs.
bias.stereotypePairs gives the pairs as a table, or as templates with a {group}
placeholder expanded over a table of group terms; this module reads and checks them (a
bad table is a DataError naming the file, the row and the rule, before any training) and
scores each sentence as the model's summed token log-likelihood, in batches.

Rows are numbered from 1 in the order of the file (a CSV's header is not a row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import STEREOTYPE_PLACEHOLDER, DataSource, StereotypePairsSpec
from kubetune_trainer.data import DataError, read_source


@dataclass(frozen=True)
class StereotypePairs:
    """Sentence pairs that differ only in a group term, each with its bias category."""

    more: list[str]
    """The more stereotypical sentence of each pair."""
    less: list[str]
    """The less stereotypical sentence of each pair."""
    categories: list[str]
    origin: str
    """Where the pairs came from, for the report: a file, or templates x terms."""

    def __len__(self) -> int:
        return len(self.more)


@dataclass(frozen=True)
class _Table:
    """A table's columns as text, with the file it came from, for messages."""

    field: str
    origin: str
    columns: dict[str, list[str | None]]

    def cell(self, column: str, row: int, *, required: bool = True) -> str:
        """The stripped text of a cell; a missing or empty cell is a DataError if required."""
        value = (self.columns[column][row] or "").strip()
        if required and not value:
            raise DataError(f"{self.field}: {self.origin} row {row + 1} has no {column}")
        return value

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values())))


def read_stereotype_pairs(spec: StereotypePairsSpec) -> StereotypePairs:
    """The pairs of bias.stereotypePairs, read and checked (DataError when a table is bad)."""
    if spec.pairs is not None:
        return _pairs_table(spec, spec.pairs)
    assert spec.templates is not None
    assert spec.terms is not None
    templates = _read(spec.templates, "bias.stereotypePairs.templates", [spec.template_column])
    needed = [spec.category_column, spec.more_column, spec.less_column]
    terms = _read(spec.terms, "bias.stereotypePairs.terms", needed)
    return expand_templates(spec, templates, terms)


def _read(source: DataSource, field: str, needed: Sequence[str]) -> _Table:
    rows = read_source(source, field)
    table: pa.Table = rows.table
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise DataError(
            f"{field}: {rows.origin} has no column {', '.join(map(repr, missing))} "
            f"(its columns: {', '.join(table.column_names)})"
        )
    columns = {
        name: [None if v is None else str(v) for v in table.column(name).to_pylist()]
        for name in table.column_names
    }
    return _Table(field, rows.origin, columns)


def _pairs_table(spec: StereotypePairsSpec, source: DataSource) -> StereotypePairs:
    needed = [spec.more_column, spec.less_column, spec.category_column]
    table = _read(source, "bias.stereotypePairs.pairs", needed)
    more, less, categories = [], [], []
    for row in range(table.rows):
        sides = table.cell(spec.more_column, row), table.cell(spec.less_column, row)
        _check_sides_differ(table, row, *sides)
        more.append(sides[0])
        less.append(sides[1])
        categories.append(table.cell(spec.category_column, row))
    return StereotypePairs(more, less, categories, table.origin)


def _check_sides_differ(table: _Table, row: int, more: str, less: str) -> None:
    if " ".join(more.split()) == " ".join(less.split()):
        raise DataError(
            f"{table.field}: {table.origin} row {row + 1}: both sides are {more!r}; "
            "a pair must differ in its group term"
        )


def expand_templates(
    spec: StereotypePairsSpec, templates: _Table, terms: _Table
) -> StereotypePairs:
    """Each template with its category's term pairs in its placeholder (every category's
    when the template names none): one sentence pair per template and term row."""
    by_category: dict[str, list[tuple[str, str]]] = {}
    for row in range(terms.rows):
        pair = terms.cell(spec.more_column, row), terms.cell(spec.less_column, row)
        _check_sides_differ(terms, row, *pair)
        by_category.setdefault(terms.cell(spec.category_column, row), []).append(pair)
    more, less, categories = [], [], []
    for row in range(templates.rows):
        template = _template(templates, spec.template_column, row)
        for category, (term, other) in _terms_for(spec, templates, row, by_category):
            more.append(template.replace(STEREOTYPE_PLACEHOLDER, term))
            less.append(template.replace(STEREOTYPE_PLACEHOLDER, other))
            categories.append(category)
    return StereotypePairs(more, less, categories, f"{templates.origin} x {terms.origin}")


def _template(templates: _Table, column: str, row: int) -> str:
    template = templates.cell(column, row)
    if STEREOTYPE_PLACEHOLDER not in template:
        raise DataError(
            f"{templates.field}: {templates.origin} row {row + 1}: the template {template!r} "
            f"has no placeholder {STEREOTYPE_PLACEHOLDER} for the group term"
        )
    return template


def _terms_for(
    spec: StereotypePairsSpec,
    templates: _Table,
    row: int,
    by_category: dict[str, list[tuple[str, str]]],
) -> list[tuple[str, tuple[str, str]]]:
    """(category, (more, less) terms) that fill one template."""
    wanted = ""
    if spec.category_column in templates.columns:
        wanted = templates.cell(spec.category_column, row, required=False)
    if not wanted:
        return [(category, pair) for category, pairs in by_category.items() for pair in pairs]
    if wanted not in by_category:
        raise DataError(
            f"{templates.field}: {templates.origin} row {row + 1}: category {wanted!r} has no "
            f"terms in bias.stereotypePairs.terms (its categories: {', '.join(by_category)})"
        )
    return [(wanted, pair) for pair in by_category[wanted]]


# --- scores ------------------------------------------------------------------------------


def scoring_ids(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    """Each text's token ids as training encodes a text (no special tokens), after a
    beginning-of-text token (the tokenizer's, else its end-of-text token, as GPT-2 uses it)
    so that the first word is scored too: every token after the first is."""
    encoded: list[list[int]] = tokenizer(
        list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 1
    )["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return encoded if start is None else [[start, *ids] for ids in encoded]


def sequence_log_likelihoods(
    model: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    batch_size: int,
    device: torch.device,
) -> npt.NDArray[np.float64]:
    """Each sequence's summed log-likelihood of its tokens after the first, given the ones
    before, in batches of `batch_size` sequences of similar length (right-padded; padding is
    never scored), in the order given."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    scores = np.zeros(len(token_ids), np.float64)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        scores[batch] = _batch_log_likelihoods(model, [token_ids[i] for i in batch], device)
    model.train(was_training)
    return scores


def _batch_log_likelihoods(
    model: torch.nn.Module, token_ids: Sequence[Sequence[int]], device: torch.device
) -> npt.NDArray[np.float64]:
    width = max(len(ids) for ids in token_ids)
    ids = torch.zeros((len(token_ids), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(token_ids):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    scored = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]
    result: npt.NDArray[np.float64] = scored.sum(dim=1).double().cpu().numpy()
    return result


@dataclass(frozen=True)
class PairScores:
    """The summed log-likelihood of each side of each pair under one model."""

    more: npt.NDArray[np.float64]
    less: npt.NDArray[np.float64]

    @property
    def gaps(self) -> npt.NDArray[np.float64]:
        """log P(more stereotypical) - log P(less stereotypical), per pair."""
        return self.more - self.less


def score_pairs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: StereotypePairs,
    batch_size: int,
    max_length: int,
    device: torch.device,
) -> PairScores:
    """Both sides of every pair scored by `model` (every process scores them all, so that a
    sharded model's forward passes run on every process alike)."""
    both = scoring_ids(tokenizer, [*pairs.more, *pairs.less], max_length)
    scores = sequence_log_likelihoods(model, both, batch_size, device)
    return PairScores(scores[: len(pairs)], scores[len(pairs) :])
