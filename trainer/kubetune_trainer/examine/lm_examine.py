"""The examination of a final causal LM: its bias audit and its attributions.

final_model.py examines a classifier from its predictions; a language model is examined
from likelihoods instead. The stereotype pairs (bias.stereotypePairs) are read and scored
by the starting model at setup (`score_starting_pairs`, before the first step and before a
resume restores trained weights; with LoRA the adapter starts at zero, so that model is
the base model), and scored again by the final model here. The per-group quality is each
validation row's loss per token, over the prepared validation loader with every process's
rows gathered, grouped by data.sensitiveColumns; with evaluation.generation, also each
group's generation metrics over the sampled rows, from the completions that the best
evaluation kept (the model examined here), so nothing is generated again. Every process
scores all pairs, so a sharded model runs the same forward passes everywhere; the
attributions run on rank 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import IGNORED_LABEL
from kubetune_trainer.examine.lm_audit import (
    GroupTable,
    LanguageModelAudit,
    generation_gap_metrics,
    generation_tables,
    language_model_audit,
    loss_tables,
    stereotype_result,
)
from kubetune_trainer.examine.lm_interpret import explain_conversations, explain_generations
from kubetune_trainer.examine.lm_pairs import (
    PairScores,
    StereotypePairs,
    read_stereotype_pairs,
    score_pairs,
)
from kubetune_trainer.generation_metrics import row_scores

if TYPE_CHECKING:
    from kubetune_trainer.examine.final_model import FinalModel


@dataclass(frozen=True)
class StartingPairs:
    """bias.stereotypePairs as read at setup, with the starting model's scores."""

    pairs: StereotypePairs
    scores: PairScores


def score_starting_pairs(
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    model: torch.nn.Module,
    accelerator: Accelerator,
) -> StartingPairs | None:
    """The stereotype pairs scored by the model before training (None without them); a bad
    pairs table is a DataError before any step."""
    spec = config.bias.stereotype_pairs if config.bias is not None else None
    if spec is None or config.model.task != "causal-lm":
        return None
    pairs = read_stereotype_pairs(spec)
    return StartingPairs(pairs, _scores(config, tokenizer, model, accelerator, pairs))


def _scores(
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    model: torch.nn.Module,
    accelerator: Accelerator,
    pairs: StereotypePairs,
) -> PairScores:
    batch = config.evaluation.batch_size or 2 * config.training.batch_size
    return score_pairs(model, tokenizer, pairs, batch, config.data.max_length, accelerator.device)


def examine_language_model(
    final: FinalModel, starting: StartingPairs | None
) -> tuple[dict[str, Any], LanguageModelAudit | None]:
    """The report sections (biasAudit, attributions) of a final causal LM and its audit."""
    sections: dict[str, Any] = {}
    bias_audit = _audit(final, starting)
    if bias_audit is not None:
        sections["biasAudit"] = bias_audit.to_report()
        final.reporter.section("biasAudit", bias_audit.to_status())
    if final.stop_requested():
        return sections, bias_audit
    final.beat()
    attributions = _explain(final)
    if attributions is not None:
        sections["attributions"] = attributions
    return sections, bias_audit


def _audit(final: FinalModel, starting: StartingPairs | None) -> LanguageModelAudit | None:
    spec = final.config.bias
    if spec is None:
        return None
    stereotypes = None
    if starting is not None:
        scores = _scores(
            final.config, final.tokenizer, final.model, final.accelerator, starting.pairs
        )
        stereotypes = stereotype_result(
            starting.pairs, scores.gaps, starting.scores.gaps, spec.min_group_size
        )
        final.beat()
    generation = generation_quality(
        final.generation, final.data.validation_groups, spec.min_group_size
    )
    quality = _quality(final, spec.min_group_size) + generation
    gaps = generation_gap_metrics(generation, spec)
    return language_model_audit(spec, stereotypes, quality, gaps)


def _quality(final: FinalModel, min_group_size: int) -> list[GroupTable]:
    """Each sensitive group's validation loss per token and perplexity (SFT rows only: a
    preference run's validation rows are pairs of responses, not one text)."""
    groups = final.data.validation_groups
    if not groups or final.config.training.learns_preferences:
        return []
    losses, tokens = row_losses(final.model, final.accelerator, final.eval_loader, final.beat)
    return loss_tables(losses, tokens, groups, min_group_size)


def generation_quality(
    kept: Mapping[str, Any] | None,
    groups: Mapping[str, Sequence[str | None]],
    min_group_size: int,
) -> list[GroupTable]:
    """Each sensitive group's mean exactMatch, tokenF1 and rougeL over the generation sample
    as the final model completed it: `kept` is the run's table of completions (report.json's
    `generation`), whose `after` pass is the best evaluation's, the model examined here.
    None without evaluation.generation, sensitive columns or that pass."""
    rows = (kept or {}).get("rows") or []
    if not groups or not rows or any(not isinstance(row.get("after"), str) for row in rows):
        return []
    scores = [row_scores(row["after"], row["reference"]) for row in rows]
    return generation_tables(scores, [row["row"] for row in rows], groups, min_group_size)


def row_losses(
    model: torch.nn.Module,
    accelerator: Accelerator,
    loader: Any,
    after_batch: Any,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Each row's mean loss per scored token (the tokens whose label is not IGNORED_LABEL)
    and its number of scored tokens, over a prepared loader, gathered from all processes."""
    model.eval()
    sums, counts = [], []
    for batch in loader:
        labels = batch["labels"][:, 1:]
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORED_LABEL, reduction="none"
        )
        row_sum, row_tokens = losses.sum(dim=1), (labels != IGNORED_LABEL).sum(dim=1)
        row_sum, row_tokens = accelerator.gather_for_metrics((row_sum, row_tokens))
        sums.append(row_sum.double().cpu())
        counts.append(row_tokens.double().cpu())
        after_batch()
    model.train()
    total, tokens = torch.cat(sums).numpy(), torch.cat(counts).numpy()
    return np.divide(total, tokens, out=np.zeros_like(total), where=tokens > 0), tokens


def _explain(final: FinalModel) -> dict[str, Any] | None:
    """Which prompt tokens (a conversation's turns) drove the responses
    (evaluation.attributions), on rank 0."""
    spec = final.config.evaluation.attributions
    if spec is None:
        return None
    result = None
    if final.accelerator.is_main_process:
        model = final.accelerator.unwrap_model(final.model)
        tokenizer, data = final.tokenizer, final.data
        if final.config.data.messages_column is not None:
            result = explain_conversations(model, tokenizer, data.validation, spec, final.beat)
        else:
            result = explain_generations(model, tokenizer, data.validation_texts, spec, final.beat)
    final.accelerator.wait_for_everyone()
    return result
