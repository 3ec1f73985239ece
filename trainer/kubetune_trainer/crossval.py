"""k-fold cross-validation: k models on k folds of the training rows, and how much they agree.

One train/validation split can flatter or punish a recipe by chance, which matters most
on the small datasets people fine-tune on. Each fold trains the same recipe on k-1 parts
and evaluates on the remaining one; the report gives each metric's mean and standard
deviation over the folds, and the best fold's model is kept as the run's model. The
validation rows of the config are not used: the folds are the validation.

A causal LM's folds split whole rows (a conversation, a preference pair, a prompt with its
response is one row, never cut between folds); they are not stratified, as its rows have
no class, and no class counts or weights follow them.

One GPU budget (runPolicy.maxGpuHours) covers all the folds: each fold counts the GPU-hours
of the folds before it, so a fold's cost (its report.json, status.cost) is the
cross-validation's so far, and the last fold's is the whole run's.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import PreparedData, class_weights, kfold_splits, prepare_data
from kubetune_trainer.data.cache import cached_prepare
from kubetune_trainer.metrics import is_better
from kubetune_trainer.modeling import load_tokenizer
from kubetune_trainer.report.files import REPORT_HTML, REPORT_JSON
from kubetune_trainer.report.summary import write_reports
from kubetune_trainer.training.model_export import MERGED_DIR, MODEL_DIR
from kubetune_trainer.training.recipe import CACHE_DIR, Recipe, RunResult


def fold_rows(
    data: PreparedData, config: TrainingConfig
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Training and validation rows of each fold, split over the rows the quality rules kept.

    A fold trains on every row made from its training rows (augmented rows, oversampled
    copies) and validates on its held-out rows as they were, never on a copy of a row it
    trained on.
    """
    spec = config.evaluation.cross_validation
    assert spec is not None
    sources = data.train_sources
    _, first = np.unique(sources, return_index=True)
    stratified = spec.stratifies(config.model.task)
    labels = np.asarray(data.train["labels"])[first] if stratified else np.zeros(len(first))
    splits = kfold_splits(labels, spec.folds, stratified, config.training.seed)
    return [
        (np.flatnonzero(np.isin(sources, sources[first[kept]])), first[held_out])
        for kept, held_out in splits
    ]


def fold_data(
    data: PreparedData, train_rows: np.ndarray, validation_rows: np.ndarray, config: TrainingConfig
) -> PreparedData:
    """One fold: the training rows split into the fold's own training and validation parts
    (a classifier's class counts and weights counted over them)."""
    fold = replace(
        data,
        train=data.train.select(train_rows),
        validation=data.train.select(validation_rows),
        train_texts=[data.train_texts[i] for i in train_rows],
        train_groups=_pick(data.train_groups, train_rows),
        train_sources=data.train_sources[train_rows],
        validation_texts=[data.train_texts[i] for i in validation_rows],
        validation_groups=_pick(data.train_groups, validation_rows),
        rows={**data.rows, "train_out": len(train_rows), "validation_out": len(validation_rows)},
    )
    if config.model.task == "causal-lm":
        return fold
    labels = np.asarray(data.train["labels"])
    counts = np.bincount(labels[train_rows], minlength=len(data.labels))
    held_out = labels[validation_rows]
    balance = config.data.balance
    return replace(
        fold,
        train_class_counts=dict(zip(data.labels, counts.tolist(), strict=True)),
        class_weights=class_weights(
            counts.tolist(), balance.class_weights, balance.beta, names=data.labels
        ),
        majority_rate=float(np.bincount(held_out).max() / len(held_out)),
    )


def _pick(groups: dict[str, list[str]], rows: np.ndarray) -> dict[str, list[str]]:
    return {column: [values[i] for i in rows] for column, values in groups.items()}


def run_cross_validation(
    config: TrainingConfig,
    output_dir: Path,
    *,
    job_name: str,
    env: Mapping[str, str],
    console: Console | None,
) -> RunResult:
    """Train one model per fold into output/fold-K; summarise them in output/report.json."""
    spec = config.evaluation.cross_validation
    assert spec is not None
    data, _ = cached_prepare(config, load_tokenizer(config), output_dir / CACHE_DIR, prepare_data)
    results: list[RunResult] = []
    for index, (train_rows, validation_rows) in enumerate(fold_rows(data, config)):
        recipe = Recipe(
            config,
            output_dir / f"fold-{index}",
            job_name=job_name,
            env=env,
            console=console,
            data=fold_data(data, train_rows, validation_rows, config),
            others_gpu_hours=_gpu_hours(results[-1]) if results else 0.0,
        )
        try:
            recipe.setup()
            results.append(recipe.train())
        finally:
            recipe.cleanup()
        # The budget or a SIGTERM stops the fold it arrives in; the next start resumes this
        # fold from its checkpoint, and the earlier folds at their end.
        if results[-1].budget_exceeded or results[-1].interrupted:
            return results[-1]
    return _summarise(config, output_dir, job_name, results)


def _summarise(
    config: TrainingConfig, output_dir: Path, job_name: str, results: list[RunResult]
) -> RunResult:
    metric = config.primary_metric()
    best = _best_fold(results, metric)
    summary = fold_summary(results)
    models = {"model": MODEL_DIR, "mergedModel": MERGED_DIR}
    for folder in models.values():
        if (best.output_dir / folder).exists():
            shutil.copytree(best.output_dir / folder, output_dir / folder, dirs_exist_ok=True)
    report: dict[str, Any] = {
        **best.report,
        "job": job_name,
        "succeeded": all(r.succeeded for r in results),
        "bestMetrics": {name: values["mean"] for name, values in summary.items()},
        "cost": results[-1].report["cost"],
        "crossValidation": {
            "folds": len(results),
            "metrics": summary,
            "bestFold": results.index(best),
            "foldReports": [str(r.output_dir / REPORT_JSON) for r in results],
        },
        "artifacts": {
            **best.report["artifacts"],
            **{
                key: str(output_dir / folder)
                for key, folder in models.items()
                if best.report["artifacts"].get(key)
            },
            "report": str(output_dir / REPORT_JSON),
            "reportHtml": str(output_dir / REPORT_HTML),
        },
    }
    write_reports(output_dir, report)
    mean = summary.get(metric, {}).get("mean")
    message = (
        f"{len(results)}-fold cross-validation: {metric} {mean:.4f} ± {summary[metric]['std']:.4f}"
        if mean is not None
        else "cross-validation finished"
    )
    return replace(
        best,
        succeeded=report["succeeded"],
        message=message,
        output_dir=output_dir,
        metrics=report["bestMetrics"],
        report=report,
    )


def _gpu_hours(result: RunResult) -> float:
    """The GPU-hours of a fold and the folds before it."""
    return float(result.report["cost"]["gpuHours"])


def _best_fold(results: list[RunResult], metric: str) -> RunResult:
    best = results[0]
    for result in results[1:]:
        if is_better(metric, result.metrics.get(metric, float("nan")), best.metrics.get(metric)):
            best = result
    return best


def fold_summary(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Each metric's mean, standard deviation and per-fold values over the folds' best scores."""
    names = sorted({name for r in results for name in r.metrics})
    summary = {}
    for name in names:
        values = [r.metrics[name] for r in results if name in r.metrics]
        summary[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "folds": values,
        }
    return summary
