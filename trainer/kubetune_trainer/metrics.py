"""Validation metrics, computed once over the gathered predictions of every process.

Metric names are the camelCase keys of `status.metrics` and of `evaluation.metric`.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

from kubetune_trainer.config import metric_direction


def per_class_summary(
    labels: np.ndarray, predictions: np.ndarray, names: list[str]
) -> dict[str, object]:
    """The confusion matrix (rows: true class, columns: predicted, in `names` order) and
    precision, recall, F1 and support per class, for the report."""
    classes = list(range(len(names)))
    matrix = confusion_matrix(labels, predictions, labels=classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    return {
        "labels": list(names),
        "confusionMatrix": matrix.tolist(),
        "perClass": [
            {
                "label": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        ],
    }


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, loss: float
) -> dict[str, float]:
    """Accuracy, macro/micro F1, macro precision and recall, binary ROC-AUC, and the loss."""
    predictions = probabilities.argmax(axis=1)
    metrics = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1Macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "f1Micro": float(f1_score(labels, predictions, average="micro", zero_division=0)),
        "precisionMacro": float(
            precision_score(labels, predictions, average="macro", zero_division=0)
        ),
        "recallMacro": float(recall_score(labels, predictions, average="macro", zero_division=0)),
        "loss": loss,
    }
    if probabilities.shape[1] == 2 and len(np.unique(labels)) == 2:
        metrics["rocAuc"] = float(roc_auc_score(labels, probabilities[:, 1]))
    return metrics


def language_model_metrics(loss: float) -> dict[str, float]:
    """Token-level loss and its perplexity."""
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def is_better(metric: str, candidate: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether `candidate` improves on `best` by more than `min_delta` for this metric."""
    if best is None:
        return not math.isnan(candidate)
    if metric_direction(metric) == "minimize":
        return candidate < best - min_delta
    return candidate > best + min_delta
