"""Search efficiency: how many trials random and Bayesian (TPE) search need on a real surface.

    python bench/search_efficiency.py [--seeds 20] [--space values|ranges]
                                      [--surface bench/data/search_surface.csv]

The surface is bench/data/search_surface.csv (made by bench/make_search_surface.py): the
final validation loss of the tiny BERT fine-tuned over learningRate x warmupRatio x
dropout. For each seed, a random and a bayesian (TPE) search run through kubetune's own
engine exactly as the operator drives it: `next_trials` on a parent FineTuneJob with
parallelism 1, the study rebuilt from status.trials on every ask, each finished trial
recorded Complete with its objective looked up in the table. A search stops when its best
loss is within 1% of the table's best (loss <= 1.01 x best), or after maxTrials = the
table's size; one that never gets there counts as maxTrials and is reported as a miss.
It prints the median trials-to-target of each and the ratio TPE/random, with PASS or MISS
against the target "Bayesian needs at most half of random's trials" (a benchmark, so it
reports and never fails).

Two ways to put the table's axes into the search space (--space):

  values  each parameter lists the table's values (`values: [...]`), so every proposal is
          a table cell. This is what a user with a discrete grid writes. The engine hands
          listed values to Optuna as an int over their sorted index, so TPE sees an
          ordered axis (neighbouring rates are alike) and random search picks every cell
          with the same chance.
  ranges  float ranges over the same span (learning rate on a log scale), each proposal
          snapped to the nearest cell (nearest in log10 for the learning rate) for its
          objective; the trial records the sampled values, so TPE models an ordered axis.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kubetune_operator.api.v1alpha1 import FineTuneJob  # noqa: E402
from kubetune_operator.search import next_trials  # noqa: E402
from tests.conftest import load_example  # noqa: E402

AXES = ["training.learningRate", "training.warmupRatio", "regularization.dropout"]
COLUMN_OF_AXIS = dict(zip(AXES, ["learningRate", "warmupRatio", "dropout"], strict=True))
METRIC = "loss"
TOLERANCE = 0.01
TARGET_RATIO = 0.5
LOG_AXES = {"training.learningRate"}

Cell = tuple[float, ...]
Surface = dict[Cell, float]


def load_surface(path: Path) -> Surface:
    """The table as {(learningRate, warmupRatio, dropout): loss}, failed cells left out."""
    surface: Surface = {}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            value = float(row[METRIC])
            if math.isfinite(value):
                surface[tuple(float(row[COLUMN_OF_AXIS[a]]) for a in AXES)] = value
    return surface


def axis_values(surface: Surface) -> list[list[float]]:
    return [sorted({cell[i] for cell in surface}) for i in range(len(AXES))]


def search_parameters(surface: Surface, space: str) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    for axis, values in zip(AXES, axis_values(surface), strict=True):
        if space == "values":
            parameters.append({"path": axis, "type": "float", "values": values})
        else:
            parameters.append(
                {
                    "path": axis,
                    "type": "float",
                    "min": values[0],
                    "max": values[-1],
                    "log": axis in LOG_AXES,
                }
            )
    return parameters


def parent_job(surface: Surface, space: str, algorithm: str, seed: int) -> FineTuneJob:
    """The sentiment example turned into a parent that searches the table's axes."""
    manifest = load_example("sentiment/job.yaml")
    manifest["spec"]["search"] = {
        "algorithm": algorithm,
        "bayesianSampler": "tpe",
        "parameters": search_parameters(surface, space),
        "objective": {"metric": METRIC, "direction": "minimize"},
        "maxTrials": len(surface),
        "parallelism": 1,
        "seed": seed,
    }
    return FineTuneJob.model_validate(manifest)


def nearest(value: float, values: list[float], log: bool) -> float:
    def distance(v: float) -> float:
        return abs(math.log10(v) - math.log10(value)) if log else abs(v - value)

    return min(values, key=distance)


def snap(params: Mapping[str, Any], axes: list[list[float]]) -> Cell:
    """The table cell nearest a proposal (an exact cell when the space lists the values)."""
    return tuple(
        nearest(float(params[axis]), values, axis in LOG_AXES)
        for axis, values in zip(AXES, axes, strict=True)
    )


def trials_to_target(
    job: FineTuneJob, objective: Callable[[Mapping[str, Any]], float], target: float
) -> int | None:
    """Trials a sequential search runs until one reaches `target`; None if none does."""
    trials: list[dict[str, Any]] = []
    while plans := next_trials(job, trials):
        (plan,) = plans
        value = objective(plan.params)
        trials.append(
            {
                "number": plan.number,
                "name": plan.name,
                "state": "Complete",
                "params": plan.params,
                "objective": value,
            }
        )
        if value <= target:
            return len(trials)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--space", choices=["values", "ranges"], default="values")
    parser.add_argument("--surface", type=Path, default=REPO / "bench/data/search_surface.csv")
    args = parser.parse_args()
    surface = load_surface(args.surface)
    axes = axis_values(surface)
    best = min(surface.values())
    target = best * (1 + TOLERANCE)
    hits = sum(v <= target for v in surface.values())
    print(
        f"surface: {len(surface)} cells, best {METRIC} {best:.4f}, "
        f"{hits} cells within {TOLERANCE:.0%} of it; space: {args.space}"
    )

    def objective(params: Mapping[str, Any]) -> float:
        return surface[snap(params, axes)]

    results: dict[str, list[int | None]] = {"random": [], "bayesian": []}
    for seed in range(args.seeds):
        for algorithm, counts in results.items():
            job = parent_job(surface, args.space, algorithm, seed)
            counts.append(trials_to_target(job, objective, target))
        shown = {name: counts[-1] or "not reached" for name, counts in results.items()}
        print(f"seed {seed}: random {shown['random']}, tpe {shown['bayesian']}")
    report(results, len(surface))
    if args.space == "values":
        report_expected_random(results, hits, len(surface))


def report(results: dict[str, list[int | None]], max_trials: int) -> None:
    """Medians with a search that never reached the target counted as maxTrials."""
    counted = {n: [max_trials if c is None else c for c in cs] for n, cs in results.items()}
    medians = {name: statistics.median(counts) for name, counts in counted.items()}
    for name, counts in counted.items():
        misses = results[name].count(None)
        label = "tpe" if name == "bayesian" else name
        print(
            f"{label:>7}: median {medians[name]:g} trials to target "
            f"(min {min(counts)}, max {max(counts)}, {misses} never reached it)"
        )
    ratio = medians["bayesian"] / medians["random"]
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    print(f"tpe/random: {ratio:.2f} (target <= {TARGET_RATIO}): {verdict}")


def report_expected_random(results: dict[str, list[int | None]], hits: int, cells: int) -> None:
    """TPE against random's exact median: with listed values each random trial is a uniform cell.

    A few seeds leave random's measured median far from its expectation either way.
    """
    # The smallest k with P(one of k uniform draws hits) = 1 - (1 - hits/cells)^k >= 1/2.
    expected = min(cells, math.ceil(math.log(0.5) / math.log(1 - hits / cells)))
    counted = [cells if c is None else c for c in results["bayesian"]]
    ratio = statistics.median(counted) / expected
    print(f"random's exact median on this table: {expected}; tpe/that: {ratio:.2f}")


if __name__ == "__main__":
    main()
