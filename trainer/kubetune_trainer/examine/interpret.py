"""What the fine-tuned classifier relies on, and which layers fine-tuning moved.

A good validation score does not say *why* a model is right: it may have learnt the
sentiment words, or a name, a dialect marker or a punctuation habit that happens to go
with a class. This module explains the final model on a sample of validation rows:

- token attributions: captum's LayerIntegratedGradients on the input embedding layer,
  toward the predicted class, from a baseline that keeps the special tokens ([CLS], [SEP])
  and replaces every other token with padding. Per row the scores are summed over the
  embedding dimension and divided by their L2 norm, so that every row weighs the same;
  WordPiece pieces ("##ing") are merged into their word (scores summed), so the report
  reads words, not pieces;
- top tokens per class (rows predicted as it) and per sensitive group (all rows of the
  group, toward their predicted class): the mean score of each word seen at least twice;
- layer conductance: captum's LayerConductance at the output of each repeated block
  (freezing.py's layer groups), the mean absolute conductance per layer normalised to sum
  to 1: where in depth the decision is made;
- weight change: ||W - W0|| / ||W0|| per layer group (embeddings, blocks, head) between
  the start and the end of training, which shows whether fine-tuning reshaped the whole
  network or mostly its top (and that frozen groups stayed put: exactly 0).

The sample puts the most confident errors first (up to a third of it): a model that is
sure and wrong is the clearest view of a shortcut. The rest is a class-stratified sample
drawn with the run's seed, so the same model and seed explain the same rows the same way.

Cost is bounded: rows are attributed in chunks of at most `EXPANDED_ROWS // steps` rows
(one forward/backward pass of `EXPANDED_ROWS` interpolated rows per chunk, padded to the
chunk's longest row), and layer conductance, which costs one such pass per block, runs on
the first `CONDUCTANCE_ROWS` rows of the sample with at most `CONDUCTANCE_STEPS` steps.
The snapshot for the weight change is one copy of the parameters in host memory, in
their own dtype.

Everything returned is JSON-safe: plain floats, never NaN (a NaN score becomes 0.0 and a
warning is logged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from kubetune_trainer.config import AttributionSpec
from kubetune_trainer.freezing import find_layer_groups

log = logging.getLogger(__name__)

EXPANDED_ROWS = 512
"""Interpolated rows per forward/backward pass of the attribution methods (bounds memory)."""
PREDICT_BATCH = 64
"""Validation rows per forward pass when predicting the rows to sample from."""
CONDUCTANCE_ROWS = 16
"""Sample rows used for layer conductance (one pass per block per row: kept small)."""
CONDUCTANCE_STEPS = 8
"""At most this many integration steps for layer conductance."""
MIN_OCCURRENCES = 2
"""A word must be seen this often to be listed among the top tokens."""
WORD_MARKERS = ("\u2581", "\u0120")
"""Word-start markers of SentencePiece ("▁") and byte-level BPE ("Ġ") pieces."""
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

Scored = list[dict[str, Any]]


# --- weight change --------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSnapshot:
    """The parameters of each layer group at the start of training, on the CPU."""

    groups: dict[str, dict[str, torch.Tensor]]


def snapshot_layer_groups(model: nn.Module) -> LayerSnapshot:
    """Copy every layer group's parameters to the CPU (embeddings, block 0..n-1, head)."""
    parameters = dict(model.named_parameters())
    groups = {
        group: {name: parameters[name].detach().to("cpu", copy=True) for name in names}
        for group, names in find_layer_groups(model).named().items()
    }
    return LayerSnapshot(groups)


def relative_weight_change(model: nn.Module, snapshot: LayerSnapshot) -> list[dict[str, Any]]:
    """||W - W0|| / ||W0|| per layer group, in group order (0.0 for an untouched group)."""
    parameters = dict(model.named_parameters())
    return [
        {"group": group, "relativeChange": _group_change(parameters, initial)}
        for group, initial in snapshot.groups.items()
    ]


def _group_change(parameters: dict[str, nn.Parameter], initial: dict[str, torch.Tensor]) -> float:
    moved = torch.zeros((), dtype=torch.float64)
    size = torch.zeros((), dtype=torch.float64)
    for name, start in initial.items():
        now = parameters[name].detach()
        before = start.to(now.device)
        moved += (now.double() - before.double()).pow(2).sum().cpu()
        size += before.double().pow(2).sum().cpu()
    if size.item() == 0.0:
        return 0.0
    return _finite(math.sqrt(moved.item() / size.item()), "relative weight change")


# --- the sample -----------------------------------------------------------------------


def select_rows(
    labels: npt.NDArray[np.int64],
    predicted: npt.NDArray[np.int64],
    confidence: npt.NDArray[np.float64],
    size: int,
    seed: int,
) -> npt.NDArray[np.int64]:
    """Row indices to explain: the most confident errors (up to a third), then a stratified rest.

    The stratified part draws rows in a seeded random order and interleaves the classes in
    proportion to their counts (each row keyed by its rank within its class over the class
    size), so any prefix of it is a class-stratified sample.
    """
    size = min(size, len(labels))
    errors = np.flatnonzero(labels != predicted)
    errors = errors[np.argsort(-confidence[errors], kind="stable")][: max(size // 3, 1)]
    rest = np.setdiff1d(np.arange(len(labels)), errors)
    rest = np.random.default_rng(seed).permutation(rest)
    classes = labels[rest]
    rank = np.zeros(len(rest), dtype=np.float64)
    for value in np.unique(classes):
        members = classes == value
        rank[members] = (np.arange(members.sum()) + 0.5) / members.sum()
    stratified = rest[np.argsort(rank, kind="stable")]
    return np.concatenate([errors, stratified])[:size].astype(np.int64)


# --- explain --------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Padded model inputs of some rows, on the model's device."""

    inputs: dict[str, torch.Tensor]

    @property
    def ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]

    def extra(self) -> tuple[torch.Tensor, ...]:
        """The inputs after input_ids, in forward-argument order (captum's additional args)."""
        return tuple(self.inputs[k] for k in MODEL_INPUTS[1:] if k in self.inputs)


def explain(
    model: nn.Module,
    tokenizer: Any,
    rows: datasets.Dataset,
    texts: list[str],
    groups: dict[str, list[str]],
    labels: list[str],
    spec: AttributionSpec,
    seed: int,
    probabilities: npt.NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """Token attributions, top tokens per class and group, and layer conductance.

    `rows` are tokenized validation rows with `labels`, aligned with `texts` and each
    column of `groups`. `probabilities` (rows x classes), when the caller already has
    them from its evaluation, saves predicting every row again. `weightChange` is left
    empty for the caller to fill with `relative_weight_change`.
    """
    _check_model(model, labels)
    if len(rows) == 0:
        return {
            "classes": {},
            "groups": {},
            "examples": [],
            "layerConductance": [],
            "weightChange": [],
        }
    with _in_eval_mode(model):
        pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        truth = np.asarray(rows["labels"][:], dtype=np.int64)
        if probabilities is None:
            probabilities = _predict(model, rows, pad_id)
        predicted = probabilities.argmax(axis=1).astype(np.int64)
        confidence = probabilities.max(axis=1).astype(np.float64)
        chosen = select_rows(truth, predicted, confidence, spec.sample_size, seed)
        sample = rows.select(chosen.tolist())
        target = torch.as_tensor(predicted[chosen])
        scores, ids = _attribute(model, sample, target, pad_id, special, spec.steps)
        words = _row_words(tokenizer, ids, scores, special, pad_id)
        return {
            "classes": _class_tokens(words, predicted[chosen], labels, spec.top_tokens),
            "groups": _group_tokens(words, chosen, groups, spec.top_tokens),
            "examples": [
                {
                    "text": texts[row],
                    "label": labels[truth[row]],
                    "predicted": labels[predicted[row]],
                    "confidence": _finite(float(confidence[row]), "confidence"),
                    "error": bool(truth[row] != predicted[row]),
                    "tokens": _scored(row_words),
                }
                for row, row_words in zip(chosen.tolist(), words, strict=True)
            ],
            "layerConductance": _layer_conductance(
                model, sample, target, pad_id, special, min(spec.steps, CONDUCTANCE_STEPS)
            ),
            "weightChange": [],
        }


@contextmanager
def _in_eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def input_embeddings(model: nn.Module) -> nn.Module:
    """The model's token embedding layer, or a ValueError naming what is missing."""
    getter = getattr(model, "get_input_embeddings", None)
    layer = getter() if callable(getter) else None
    if not isinstance(layer, nn.Module):
        raise ValueError("attributions need a model with input embeddings (get_input_embeddings)")
    return layer


def _check_model(model: nn.Module, labels: list[str]) -> None:
    input_embeddings(model)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    classifier = type(model).__name__.endswith("ForSequenceClassification")
    if not classifier or num_labels != len(labels):
        raise ValueError(
            "attributions explain sequence-classification models only, with one output per "
            f"label: got {type(model).__name__} with num_labels={num_labels} for {len(labels)} "
            "labels"
        )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batch(rows: datasets.Dataset, pad_id: int, device: torch.device) -> Batch:
    """Pad the rows' model inputs to their longest row."""
    present = [k for k in MODEL_INPUTS if k in rows.column_names]
    columns = {k: list(rows[k][:]) for k in present}
    width = max((len(r) for r in columns["input_ids"]), default=1)
    inputs = {}
    for key, values in columns.items():
        fill = pad_id if key == "input_ids" else 0
        padded = np.full((len(values), width), fill, dtype=np.int64)
        for i, value in enumerate(values):  # ragged lists: one copy per row
            padded[i, : len(value)] = value
        inputs[key] = torch.from_numpy(padded).to(device)
    if "attention_mask" not in inputs:  # forward arguments are positional: keep the order
        inputs["attention_mask"] = (inputs["input_ids"] != pad_id).long()
        inputs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
    return Batch(inputs)


def _chunks(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


@torch.no_grad()
def _predict(model: nn.Module, rows: datasets.Dataset, pad_id: int) -> npt.NDArray[np.float64]:
    """Class probabilities of every row (batched)."""
    device = _device(model)
    parts = []
    for part in _chunks(len(rows), PREDICT_BATCH):
        batch = _batch(rows.select(part), pad_id, device)
        logits = model(**batch.inputs).logits
        parts.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(parts).astype(np.float64)


def _forward(model: nn.Module) -> Callable[..., torch.Tensor]:
    """The model as captum calls it: positional inputs in MODEL_INPUTS order, logits out."""

    def forward(input_ids: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        names = MODEL_INPUTS[1 : 1 + len(extra)]
        logits: torch.Tensor = model(input_ids, **dict(zip(names, extra, strict=True))).logits
        return logits.float()

    return forward


def _baseline(ids: torch.Tensor, special: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The input with every non-special token replaced by padding."""
    return torch.where(_is_special(ids, special), ids, torch.full_like(ids, pad_id))


def _is_special(ids: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    return torch.isin(ids, special.to(ids.device))


def _attribute(
    model: nn.Module,
    sample: datasets.Dataset,
    target: torch.Tensor,
    pad_id: int,
    special: torch.Tensor,
    steps: int,
) -> tuple[list[list[float]], list[list[int]]]:
    """Per row, the normalised attribution of each token position, and the token ids."""
    from captum.attr import LayerIntegratedGradients

    method = LayerIntegratedGradients(_forward(model), input_embeddings(model))
    per_chunk = max(EXPANDED_ROWS // steps, 1)
    scores: list[list[float]] = []
    ids: list[list[int]] = []
    for part in _chunks(len(sample), per_chunk):
        batch = _batch(sample.select(part), pad_id, _device(model))
        attributions = method.attribute(
            batch.ids,
            baselines=_baseline(batch.ids, special, pad_id),
            target=target[part.start : part.stop].to(batch.ids.device),
            additional_forward_args=batch.extra(),
            n_steps=steps,
            internal_batch_size=len(part) * steps,
        )
        token_scores = _normalised(attributions.sum(dim=-1), batch, special)
        scores.extend(token_scores.tolist())
        ids.extend(batch.ids.cpu().tolist())
    return scores, ids


def _normalised(scores: torch.Tensor, batch: Batch, special: torch.Tensor) -> torch.Tensor:
    """Zero special and padding positions, replace NaN by 0, divide each row by its L2 norm."""
    keep = (batch.mask > 0) & ~_is_special(batch.ids, special)
    scores = torch.where(keep, scores.double(), torch.zeros_like(scores, dtype=torch.float64))
    if torch.isnan(scores).any():
        log.warning("attributions: NaN token scores set to 0")
        scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
    norm = scores.norm(dim=-1, keepdim=True)
    return (scores / torch.where(norm > 0, norm, torch.ones_like(norm))).cpu()


# --- words ----------------------------------------------------------------------------


def _row_words(
    tokenizer: Any,
    ids: list[list[int]],
    scores: list[list[float]],
    special: torch.Tensor,
    pad_id: int,
) -> list[list[tuple[str, float]]]:
    """Each row's words and scores, special and padding tokens dropped, pieces merged."""
    skipped = set(special.tolist()) | {pad_id}
    marked = _uses_word_markers(tokenizer)
    rows = []
    for row_ids, row_scores in zip(ids, scores, strict=True):
        kept = [(i, s) for i, s in zip(row_ids, row_scores, strict=True) if i not in skipped]
        pieces = tokenizer.convert_ids_to_tokens([i for i, _ in kept])
        rows.append(merge_pieces(pieces, [s for _, s in kept], marked))
    return rows


def _uses_word_markers(tokenizer: Any) -> bool:
    """Whether pieces mark word starts ("▁word", "Ġword") rather than continuations ("##")."""
    vocab = tokenizer.get_vocab()
    return any(token.startswith(WORD_MARKERS) for token in vocab)


def merge_pieces(
    pieces: Sequence[str], scores: Sequence[float], marked: bool = False
) -> list[tuple[str, float]]:
    """Merge sub-word pieces into words, summing their scores.

    WordPiece continues a word with "##ing"; with `marked` (SentencePiece, byte-level BPE)
    a piece without a word-start marker continues the word before it.
    """
    words: list[tuple[str, float]] = []
    for piece, score in zip(pieces, scores, strict=True):
        continues = piece.startswith("##") or (marked and not piece.startswith(WORD_MARKERS))
        text = piece[2:] if piece.startswith("##") else piece.lstrip("".join(WORD_MARKERS))
        if continues and words:
            word, total = words[-1]
            words[-1] = (word + text, total + score)
        elif text:
            words.append((text, score))
    return words


# --- top tokens -----------------------------------------------------------------------


def _top_tokens(rows: Sequence[list[tuple[str, float]]], top: int) -> Scored:
    """Mean score per word over these rows, for words seen at least twice, best first."""
    totals: dict[str, list[float]] = {}
    for words in rows:
        for word, score in words:
            totals.setdefault(word, []).append(score)
    means = [(w, float(np.mean(s))) for w, s in totals.items() if len(s) >= MIN_OCCURRENCES]
    means.sort(key=lambda item: (-item[1], item[0]))
    return _scored(means[:top])


def _class_tokens(
    words: list[list[tuple[str, float]]],
    predicted: npt.NDArray[np.int64],
    labels: list[str],
    top: int,
) -> dict[str, Scored]:
    return {
        label: _top_tokens([w for w, p in zip(words, predicted, strict=True) if p == c], top)
        for c, label in enumerate(labels)
    }


def _group_tokens(
    words: list[list[tuple[str, float]]],
    chosen: npt.NDArray[np.int64],
    groups: dict[str, list[str]],
    top: int,
) -> dict[str, dict[str, Scored]]:
    result: dict[str, dict[str, Scored]] = {}
    for column, values in groups.items():
        of_row = [values[row] for row in chosen.tolist()]
        result[column] = {
            group: _top_tokens([w for w, g in zip(words, of_row, strict=True) if g == group], top)
            for group in sorted(set(of_row))
        }
    return result


def _scored(items: Sequence[tuple[str, float]]) -> Scored:
    return [{"token": token, "score": _finite(score, "token score")} for token, score in items]


def _finite(value: float, what: str) -> float:
    if math.isfinite(value):
        return float(value)
    log.warning("attributions: non-finite %s set to 0", what)
    return 0.0


# --- layer conductance ----------------------------------------------------------------


def block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks (freezing.py's layer groups) as (group name, module), bottom up."""
    named = find_layer_groups(model).named()
    blocks = [(name, names) for name, names in named.items() if name.startswith("block ")]
    if len(blocks) < 2:
        return []
    first, second = blocks[0][1][0].split("."), blocks[1][1][0].split(".")
    depth = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    stack = model.get_submodule(".".join(first[:depth]))
    return [(name, stack[i]) for i, (name, _) in enumerate(blocks)]  # type: ignore[index]


def _layer_conductance(
    model: nn.Module,
    sample: datasets.Dataset,
    target: torch.Tensor,
    pad_id: int,
    special: torch.Tensor,
    steps: int,
) -> list[dict[str, Any]]:
    """Mean absolute conductance of each block's output over a sub-sample, summing to 1."""
    from captum.attr import LayerConductance

    blocks = block_modules(model)
    if not blocks or len(sample) == 0:
        return []
    count = min(len(sample), CONDUCTANCE_ROWS)
    batch = _batch(sample.select(range(count)), pad_id, _device(model))
    embed = input_embeddings(model)
    with torch.no_grad():
        inputs = embed(batch.ids)
        baselines = embed(_baseline(batch.ids, special, pad_id))
    totals = []
    for _, module in blocks:
        conductance = LayerConductance(_embedded_forward(model), module).attribute(
            inputs,
            baselines=baselines,
            target=target[:count].to(inputs.device),
            additional_forward_args=batch.extra(),
            n_steps=steps,
            internal_batch_size=count * steps,
        )
        per_token = conductance.sum(dim=-1).abs() * batch.mask
        totals.append(_finite(float(per_token.sum(dim=-1).mean().item()), "conductance"))
    whole = sum(totals)
    return [
        {"layer": name, "score": value / whole if whole > 0 else 0.0}
        for (name, _), value in zip(blocks, totals, strict=True)
    ]


def _embedded_forward(model: nn.Module) -> Callable[..., torch.Tensor]:
    """The model from its token embeddings (inputs_embeds), so captum can interpolate them."""

    def forward(embeds: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        names = MODEL_INPUTS[1 : 1 + len(extra)]
        inputs = dict(zip(names, extra, strict=True))
        logits: torch.Tensor = model(inputs_embeds=embeds, **inputs).logits
        return logits.float()

    return forward
