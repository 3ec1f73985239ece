"""Trainer overhead: the kubetune loop against a bare accelerate loop and the transformers Trainer.

    python bench/trainer_overhead.py [--steps 150] [--repeats 5]

Four variants train the same randomly initialised BERT (4 layers x 256) on the sentiment
example with the same batch size, learning-rate schedule, padding (dynamic, length
grouped) and number of optimizer steps, each in a fresh process:

  (a) kubetune, features off       (b) kubetune with freezing, L1, class weights and
  (c) a bare accelerate loop           Prometheus reporting on
  (d) the transformers Trainer

It prints samples/s (at the median time of the optimizer steps after the 10th, so loading,
warm-up and the final evaluation are left out) and peak RSS, and the ratios a/c, b/c, a/d.
Targets: a/c >= 0.97, b/c >= 0.95, a/d >= 1.0. The variants run in interleaved rounds
(a b c d, a b c d, ...) and each one's median throughput counts, so a machine that slows
down for a while slows every variant alike.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BATCH_SIZE = 32
LEARNING_RATE = 1e-4
WARMUP_STEPS = 10
"""Steps excluded from the throughput (allocator and thread pools warming up)."""
VARIANTS = {
    "a": "kubetune, features off",
    "b": "kubetune, freezing + L1 + class weights + reporting",
    "c": "bare accelerate loop",
    "d": "transformers Trainer",
}


def make_model(folder: Path) -> Path:
    from tests.tiny import make_tiny_model

    with (REPO / "examples/sentiment/data/train.csv").open(encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    return make_tiny_model(folder / "model", texts, layers=4, hidden=256)


def throughput(stamps: list[float]) -> float:
    """Samples per second at the median step time after the warm-up steps.

    The median, not the mean: on a shared machine a few steps stall for reasons that have
    nothing to do with the loop being measured.
    """
    timed = stamps[WARMUP_STEPS:]
    durations = [later - earlier for earlier, later in itertools.pairwise(timed)]
    return BATCH_SIZE / statistics.median(durations)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the variants, each run in its own process -------------------------------------------


def kubetune_variant(model: Path, steps: int, work: Path, features: bool) -> list[float]:
    from rich.console import Console

    from kubetune_trainer.config import TrainingConfig
    from kubetune_trainer.training.recipe import Recipe

    data = REPO / "examples/sentiment/data"
    spec: dict[str, Any] = {
        "model": {"source": str(model), "labels": ["negative", "positive"]},
        "data": {
            "train": {"source": str(data / "train.csv")},
            "validation": {"source": str(data / "validation.csv")},
            "maxLength": 64,
        },
        "training": {"maxSteps": steps, "batchSize": BATCH_SIZE, "learningRate": LEARNING_RATE},
        "regularization": {"maxGradNorm": None},
        "evaluation": {"strategy": "steps", "everySteps": steps},
        "output": {"saveModel": False},
    }
    env: dict[str, str] = {}
    if features:
        spec["freezing"] = {"freezeEmbeddings": True, "freezeLayers": 1, "layerwiseLrDecay": 0.8}
        spec["regularization"]["l1"] = 1e-6
        spec["data"]["balance"] = {"classWeights": "inverse-frequency"}
        env = {"KUBETUNE_METRICS_PORT": "0"}
    config = TrainingConfig.model_validate(spec, by_name=False)
    stamps: list[float] = []

    class TimedRecipe(Recipe):
        def _after_optimizer_step(self) -> str | None:
            stamps.append(time.perf_counter())
            return super()._after_optimizer_step()

    with open(os.devnull, "w") as quiet:
        recipe = TimedRecipe(config, work, job_name="bench", env=env, console=Console(file=quiet))
        recipe.setup()
        recipe.train()
        recipe.cleanup()
    return stamps


def _loaders(model: Path) -> tuple[Any, Any]:
    """The same tokenized rows, collator and length-grouped order kubetune uses."""
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from kubetune_trainer.config import TrainingConfig
    from kubetune_trainer.data import LengthGroupedSampler, prepare_data

    data = REPO / "examples/sentiment/data"
    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "labels": ["negative", "positive"]},
            "data": {
                "train": {"source": str(data / "train.csv")},
                "validation": {"source": str(data / "validation.csv")},
                "maxLength": 64,
            },
            "training": {"batchSize": BATCH_SIZE},
        },
        by_name=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(model)
    prepared = prepare_data(config, tokenizer)
    rows = prepared.train.remove_columns(["length"])
    sampler = LengthGroupedSampler(prepared.train["length"], BATCH_SIZE, 42)
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    return DataLoader(
        rows.with_format("torch"), batch_size=BATCH_SIZE, sampler=sampler, collate_fn=collator
    ), (rows, sampler, collator, tokenizer)


def bare_accelerate_variant(model: Path, steps: int) -> list[float]:
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForSequenceClassification, get_scheduler

    accelerator = Accelerator()
    loader, _ = _loaders(model)
    network = AutoModelForSequenceClassification.from_pretrained(model, num_labels=2)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=LEARNING_RATE, weight_decay=0.01, fused=True
    )
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=steps)
    network, optimizer, loader, scheduler = accelerator.prepare(
        network, optimizer, loader, scheduler
    )
    network.train()
    stamps: list[float] = []
    epoch = 0
    while len(stamps) < steps:
        loader.set_epoch(epoch)
        for batch in loader:
            loss = network(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            stamps.append(time.perf_counter())
            if len(stamps) == steps:
                break
        epoch += 1
    return stamps


def trainer_variant(model: Path, steps: int, work: Path) -> list[float]:
    from transformers import (
        AutoModelForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    _, (rows, sampler, collator, _) = _loaders(model)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return sampler

    arguments = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=BATCH_SIZE,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    network = AutoModelForSequenceClassification.from_pretrained(model, num_labels=2)
    trainer = SameOrderTrainer(
        model=network,
        args=arguments,
        train_dataset=rows,
        data_collator=collator,
        callbacks=[Stamp()],
    )
    trainer.train()
    return stamps


def run_variant(name: str, model: Path, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        if name in ("a", "b"):
            stamps = kubetune_variant(model, steps, Path(work), features=name == "b")
        elif name == "c":
            stamps = bare_accelerate_variant(model, steps)
        else:
            stamps = trainer_variant(model, steps, Path(work))
    return {
        "samples_per_second": throughput(stamps),
        "peak_rss_mib": peak_rss_mib(),
        "steps": len(stamps),
    }


# --- the driver ---------------------------------------------------------------------------


def measure(name: str, model: Path, steps: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--variant",
        name,
        "--model",
        str(model),
        "--steps",
        str(steps),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    last: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.model, args.steps)))
        return
    with tempfile.TemporaryDirectory() as folder:
        model = make_model(Path(folder))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            for name in VARIANTS:
                runs[name].append(measure(name, model, args.steps))
    results = {name: median_run(measured) for name, measured in runs.items()}
    report(results, args.steps, args.repeats)


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    ordered = sorted(runs, key=lambda r: r["samples_per_second"])
    return ordered[len(ordered) // 2]


def report(results: dict[str, dict[str, float]], steps: int, repeats: int) -> None:
    print(
        f"trainer overhead: {steps} steps of {BATCH_SIZE} rows, median of {repeats}, "
        f"{os.cpu_count()} CPUs, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    for name, label in VARIANTS.items():
        result = results[name]
        print(
            f"  ({name}) {label:<52} {result['samples_per_second']:8.1f} samples/s"
            f"  peak RSS {result['peak_rss_mib']:7.0f} MiB"
        )
    speed = {name: r["samples_per_second"] for name, r in results.items()}
    for numerator, denominator, target in (("a", "c", 0.97), ("b", "c", 0.95), ("a", "d", 1.0)):
        ratio = speed[numerator] / speed[denominator]
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"  {numerator}/{denominator} = {ratio:.3f}  ({verdict} the target {target})")


if __name__ == "__main__":
    main()
