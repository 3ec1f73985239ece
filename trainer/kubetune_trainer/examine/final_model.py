"""The examination of the final model: per-class results, the bias audit, attributions.

(A causal LM's examination is lm_examine.py's: its audit is of likelihoods, not classes.)

Training ends with the best checkpoint loaded; before it is saved, the run asks what that
model does: its confusion matrix and per-class results, whether it treats the sensitive
groups alike (the bias section, on the validation rows or on bias.auditData, with the
counterfactual swaps), and what it relies on (evaluation.attributions). None of this
touches the training loop, so it lives apart from the recipe, which hands over the model,
its accelerator and loaders, and gets back the report's sections and the audit's verdict.

Every process predicts its shard of the rows (the loaders are prepared by accelerate and
the results gathered); the attributions are computed on rank 0 alone. Each part is
optional and may be slow on a large model: a run asked to stop (SIGTERM) skips the parts
after the one that is running, every process alike. Every batch predicted and every part
done beats (heartbeat.py: phase Examining), so a slow examination is not taken for a stuck
one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from kubetune_trainer.config import BiasSpec, TrainingConfig
from kubetune_trainer.data import AuditRows, PreparedData
from kubetune_trainer.examine.audit import (
    BiasAudit,
    CounterfactualResult,
    CounterfactualTexts,
    audit,
    combined_counterfactuals,
    counterfactual_result,
    counterfactual_sets,
    positive_classes,
    swap_terms,
)
from kubetune_trainer.examine.interpret import LayerSnapshot, explain, relative_weight_change
from kubetune_trainer.examine.lm_audit import LanguageModelAudit
from kubetune_trainer.examine.lm_examine import StartingPairs, examine_language_model
from kubetune_trainer.metrics import per_class_summary
from kubetune_trainer.report.progress import Reporter

ModelAudit = BiasAudit | LanguageModelAudit
"""A classifier's audit (audit.py) or a causal LM's (lm_audit.py): verdict, message, status."""


def predict(
    model: torch.nn.Module,
    accelerator: Accelerator,
    loader: DataLoader[Any],
    after_batch: Callable[[], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every row of a prepared loader, gathered from all processes;
    `after_batch` is called after each batch (a heartbeat)."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        labels = batch.pop("labels")
        batch.pop("weight", None)
        with torch.no_grad():
            logits = model(**batch).logits
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
        after_batch()
    model.train()
    return torch.cat(all_logits), torch.cat(all_labels)


@dataclass(frozen=True)
class FinalModel:
    """The trained model of a run and what examining it needs."""

    model: torch.nn.Module
    """Prepared by the accelerator (wrapped for distributed runs)."""
    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    config: TrainingConfig
    data: PreparedData
    eval_loader: DataLoader[Any]
    """The prepared loader over the validation rows, in order."""
    audit_rows: AuditRows | None
    """bias.auditData, tokenized; None: the audit judges the validation rows."""
    snapshot: LayerSnapshot | None
    """The pre-trained weights per layer group (rank 0, with evaluation.attributions)."""
    reporter: Reporter
    """Where the audit's verdict goes as soon as it is known (status.biasAudit)."""
    stop_requested: Callable[[], bool]
    """Whether the run is to stop now; asked by every process before each part (a collective)."""
    beat: Callable[[], None]
    """A sign of progress (the heartbeat's Examining phase): after each batch and part."""
    starting_pairs: StartingPairs | None = None
    """causal-lm: bias.stereotypePairs with the starting model's scores (lm_examine.py)."""
    generation: dict[str, Any] | None = None
    """causal-lm, evaluation.generation: the sampled rows with their completions before and
    after fine-tuning (report.json's `generation`; training/generation.py)."""


def examine_final_model(final: FinalModel) -> tuple[dict[str, Any], ModelAudit | None]:
    """The final model's report sections (evaluation: per-class results; biasAudit;
    attributions) and its audit; a causal language model's are lm_examine.py's. A stop
    keeps the parts done before it."""
    if final.stop_requested():
        return {}, None
    if final.config.model.task == "causal-lm":
        return examine_language_model(final, final.starting_pairs)
    logits, gathered = predict(final.model, final.accelerator, final.eval_loader, final.beat)
    probabilities = torch.softmax(logits, dim=-1).numpy()
    labels = gathered.numpy().astype(np.int64)
    predictions = probabilities.argmax(axis=1).astype(np.int64)
    sections: dict[str, Any] = {
        "evaluation": per_class_summary(labels, predictions, final.data.labels)
    }
    if final.stop_requested():
        return sections, None
    final.beat()
    bias_audit = _audit_bias(final, probabilities, labels)
    if bias_audit is not None:
        sections["biasAudit"] = bias_audit.to_report()
    if final.stop_requested():
        return sections, bias_audit
    final.beat()
    attributions = _explain(final, probabilities)
    if attributions is not None:
        sections["attributions"] = attributions
    return sections, bias_audit


def _explain(final: FinalModel, probabilities: np.ndarray) -> dict[str, Any] | None:
    """What the final model relies on (evaluation.attributions), computed on rank 0."""
    spec = final.config.evaluation.attributions
    if spec is None:
        return None
    result = None
    if final.accelerator.is_main_process and final.snapshot is not None:
        model = final.accelerator.unwrap_model(final.model)
        data = final.data
        result = explain(
            model,
            final.tokenizer,
            data.validation,
            data.validation_texts,
            data.validation_groups,
            data.labels,
            spec,
            final.config.training.seed,
            probabilities=probabilities,
        )
        result["weightChange"] = relative_weight_change(model, final.snapshot)
        final.beat()
    final.accelerator.wait_for_everyone()
    return result


def _audit_bias(
    final: FinalModel, probabilities: np.ndarray, labels: npt.NDArray[np.int64]
) -> BiasAudit | None:
    """The fairness audit of the final model (bias section): on bias.auditData when it is
    set, else on the validation rows, whose predictions are given."""
    spec = final.config.bias
    if spec is None:
        return None
    data = final.data
    target = final.audit_rows or AuditRows(
        data.validation, data.validation_texts, data.validation_groups
    )
    if final.audit_rows is not None:
        logits, gathered = predict(
            final.model,
            final.accelerator,
            _evaluation_loader(final, final.audit_rows.rows),
            final.beat,
        )
        probabilities = torch.softmax(logits, dim=-1).numpy()
        labels = gathered.numpy().astype(np.int64)
    counterfactual = None
    if spec.counterfactuals:
        counterfactual = _counterfactuals(final, probabilities, spec, target)
    result = audit(
        labels=data.labels,
        y_true=labels,
        y_pred=probabilities.argmax(axis=1).astype(np.int64),
        groups=target.groups,
        spec=spec,
        counterfactual=counterfactual,
    )
    final.reporter.section("biasAudit", result.to_status())
    return result


def _evaluation_loader(final: FinalModel, rows: datasets.Dataset) -> DataLoader[Any]:
    """A prepared loader over tokenized rows, in order, for `predict`."""
    config = final.config
    columns = [c for c in rows.column_names if c != "length"]
    loader = DataLoader(
        rows.select_columns(columns).with_format("torch"),
        batch_size=config.evaluation.batch_size or 2 * config.training.batch_size,
        collate_fn=DataCollatorWithPadding(final.tokenizer, pad_to_multiple_of=8),
    )
    prepared: DataLoader[Any] = final.accelerator.prepare_data_loader(loader)
    return prepared


def _counterfactuals(
    final: FinalModel, probabilities: np.ndarray, spec: BiasSpec, target: AuditRows
) -> CounterfactualResult:
    """How the predictions move when the counterfactual terms are swapped in the texts:
    each attribute's pairs in a copy of the texts of their own."""
    labels = final.data.labels
    positive = [labels.index(name) for name in positive_classes(labels, spec)]
    results = []
    for _, pairs in counterfactual_sets(spec.counterfactuals):
        swapped = swap_terms(target.texts, pairs)
        scores = _swapped_scores(final, probabilities, swapped, target)
        results.append(counterfactual_result(probabilities, scores, swapped, pairs, positive))
    return combined_counterfactuals(results)


def _swapped_scores(
    final: FinalModel, probabilities: np.ndarray, swapped: CounterfactualTexts, target: AuditRows
) -> np.ndarray:
    """The class probabilities of the swapped texts (the originals' where nothing changed)."""
    changed = np.flatnonzero(swapped.changed)
    scores = probabilities.copy()
    if changed.size:
        rows = target.rows.select(changed)
        texts = [swapped.texts[i] for i in changed]
        loader = _loader_of(final, rows, texts)
        logits, _ = predict(final.model, final.accelerator, loader, final.beat)
        scores[changed] = torch.softmax(logits, dim=-1).numpy()
    return scores


def _loader_of(final: FinalModel, rows: datasets.Dataset, texts: list[str]) -> DataLoader[Any]:
    """A prepared validation loader over `rows` with their text replaced by `texts`."""
    encoded = final.tokenizer(texts, truncation=True, max_length=final.config.data.max_length)
    table = {"labels": rows["labels"][:], **{k: list(v) for k, v in encoded.items()}}
    return _evaluation_loader(final, datasets.Dataset.from_dict(table))
