"""Record the objective surface that bench/search_efficiency.py searches over.

    python bench/make_search_surface.py [--out bench/data/search_surface.csv]

Comparing search algorithms needs many searches (20 seeds x 2 algorithms x up to the whole
grid), far too many to train for. So the surface is trained once, here: the tiny random
BERT from tests/tiny.py is fine-tuned on CPU on the first 320 training and 80 validation
rows of the sentiment example (no repeated text, nothing shared between the splits) for
every cell of learningRate x warmupRatio x dropout, each run from the same initial weights,
data order and seed, and each cell's validation metric is written to a CSV with the exact
values used. The metric is the final validation loss: accuracy on 80 rows moves in steps of
1/80 and is flat over much of the grid, while the loss varies in every cell.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
"""Log-spaced, from too slow to learn in three epochs to fast enough to overshoot. A random
tiny model needs higher rates than a pretrained one: below 3e-3 it stays at the majority
class (a first surface over 1e-5..3e-3 was flat, every cell within 4% of the best loss)."""
WARMUP_RATIOS = [0.0, 0.1, 0.3]
DROPOUTS = [0.0, 0.1, 0.3]
TRAIN_ROWS, VALIDATION_ROWS = 320, 80
METRIC = "loss"
COLUMNS = ["learningRate", "warmupRatio", "dropout", METRIC, "accuracy"]
"""The CSV's header: the three spec fields (their camelCase names) and the two metrics."""


def sentiment_rows(count: int, split: str, seen: set[str]) -> list[dict[str, str]]:
    """The first `count` rows of a sentiment split whose text is not in `seen` (updated)."""
    kept: list[dict[str, str]] = []
    with (REPO / f"examples/sentiment/data/{split}.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["text"].lower() not in seen and len(kept) < count:
                seen.add(row["text"].lower())
                kept.append(row)
    return kept


def write_data(folder: Path) -> tuple[Path, Path]:
    seen: set[str] = set()
    paths = []
    for split, count in (("train", TRAIN_ROWS), ("validation", VALIDATION_ROWS)):
        rows = sentiment_rows(count, split, seen)
        path = folder / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        paths.append(path)
    return paths[0], paths[1]


def make_model(folder: Path, train: Path) -> Path:
    from tests.tiny import make_tiny_model

    with train.open(encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    return make_tiny_model(folder / "model", texts, seed=0)


def cell_config(
    model: Path, data: tuple[Path, Path], lr: float, warmup: float, dropout: float
) -> Any:
    from kubetune_trainer.config import TrainingConfig

    spec = {
        "model": {"source": str(model), "labels": ["negative", "positive"]},
        "data": {
            "train": {"source": str(data[0])},
            "validation": {"source": str(data[1])},
            "maxLength": 32,
        },
        "training": {
            "epochs": 3,
            "batchSize": 16,
            "learningRate": lr,
            "warmupRatio": warmup,
            "seed": 3,
        },
        "regularization": {"dropout": dropout},
    }
    return TrainingConfig.model_validate(spec, by_name=False)


def train_cell(
    model: Path, data: tuple[Path, Path], cell: tuple[float, float, float], output: Path
) -> dict[str, float]:
    """Fine-tune one cell and return its final validation metrics (NaN if it failed)."""
    from rich.console import Console

    from kubetune_trainer.__main__ import run_training

    config = cell_config(model, data, *cell)
    result = run_training(config, output, job_name="surface", env={}, console=Console(quiet=True))
    if not result.succeeded:
        return {METRIC: math.nan, "accuracy": math.nan}
    return {METRIC: result.metrics[METRIC], "accuracy": result.metrics["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench/data/search_surface.csv")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    # One thread: the tiny model gains little from more, and a shared machine's cores
    # oversubscribed by several torch thread pools slow each run several times over.
    torch.set_num_threads(1)
    cells = list(itertools.product(LEARNING_RATES, WARMUP_RATIOS, DROPOUTS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_data(folder)
        model = make_model(folder, data[0])
        with args.out.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(COLUMNS)
            for index, cell in enumerate(cells):
                started = time.perf_counter()
                metrics = train_cell(model, data, cell, folder / f"run-{index}")
                writer.writerow([*cell, f"{metrics[METRIC]:.6f}", f"{metrics['accuracy']:.4f}"])
                out.flush()
                print(
                    f"{index + 1}/{len(cells)} lr={cell[0]:g} warmup={cell[1]:g} "
                    f"dropout={cell[2]:g}: {METRIC} {metrics[METRIC]:.4f} "
                    f"accuracy {metrics['accuracy']:.4f} ({time.perf_counter() - started:.1f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
