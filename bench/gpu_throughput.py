"""GPU throughput: tokens/s, samples/s, peak memory and MFU of the kubetune trainer, against
a bare accelerate loop and the transformers Trainer on the same data and settings.

    python bench/gpu_throughput.py                            # on a GPU: every row, bf16
    python bench/gpu_throughput.py --rows llama-1.1b/2048     # one row
    python bench/gpu_throughput.py --device cpu --tiny        # smoke run of the script on a CPU
    python bench/gpu_throughput.py ... --json results.json    # also write the figures as JSON

Rows (models are random-initialised from configs: no hub access is needed or used):
  minilm-l6/128   BERT-style, 6 layers x 384 (MiniLM-L6's shape), sequence classification
  bert-base/128   BERT-base (12 x 768), sequence classification, 128 tokens
  bert-base/512   the same at 512 tokens
  llama-1.1b/2048 a Llama-style causal LM of TinyLlama-1.1B's shape (22 x 2048, GQA 32/4)

Each row trains three ways, each in a fresh process, with the same rows (every one exactly
the row's sequence length, so there is no padding), the same length-grouped order, batch
size, learning-rate schedule, gradient clipping (1.0), fused AdamW, SDPA attention,
bf16 autocast on a GPU (fp32 on the CPU), and data-loader workers:
  kubetune  the kubetune recipe (kubetune_trainer.training.recipe.Recipe)
  bare      a bare accelerate loop written here
  trainer   the transformers Trainer
Throughput is taken between the end of the warm-up steps and the last step (the device is
synchronised at both ends), so loading, compilation warm-up and the final evaluation are
left out. MFU uses kubetune_trainer.flops (PaLM appendix B) against the device's dense bf16
peak; on a CPU, or a GPU not in the table, it is not given.
Targets: kubetune/trainer >= 1.0 and kubetune/bare >= 0.97 in tokens/s; MFU >= 45% for
llama-1.1b/2048 on an H100.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LOOPS = ("kubetune", "bare", "trainer")
LEARNING_RATE = 1e-4
MAX_GRAD_NORM = 1.0
VOCABULARY = 4000
"""Distinct words of the generated rows (each word is one token)."""
VALIDATION_ROWS = 8


@dataclass(frozen=True)
class Row:
    """One model at one sequence length."""

    name: str
    task: str
    """sequence-classification or causal-lm (kubetune's model.task)."""
    model_config: dict[str, Any]
    """BertConfig or LlamaConfig arguments."""
    seq_len: int
    batch_size: int


def bert(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    return {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "max_position_embeddings": 512,
    }


TINYLLAMA = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
ROWS = {
    row.name: row
    for row in (
        Row("minilm-l6/128", "sequence-classification", bert(6, 384, 12), 128, 64),
        Row("bert-base/128", "sequence-classification", bert(12, 768, 12), 128, 64),
        Row("bert-base/512", "sequence-classification", bert(12, 768, 12), 512, 16),
        Row("llama-1.1b/2048", "causal-lm", TINYLLAMA, 2048, 8),
    )
}
TINY_ROWS = {
    row.name: row
    for row in (
        Row("tiny-bert/32", "sequence-classification", bert(2, 64, 2), 32, 8),
        Row(
            "tiny-llama/64",
            "causal-lm",
            {
                "vocab_size": VOCABULARY + 8,
                "hidden_size": 64,
                "intermediate_size": 176,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 128,
            },
            64,
            4,
        ),
    )
}


@dataclass(frozen=True)
class Settings:
    """What every loop of a row shares."""

    row: Row
    model_dir: Path
    data_dir: Path
    steps: int
    warmup: int
    device: str
    workers: int

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


# --- the model and the data, made once per row -------------------------------------------


def make_row_inputs(row: Row, folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    """A random-initialised model with a word-level tokenizer, and CSV rows of random words
    long enough that each is cut to exactly the row's sequence length."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from tests.tiny import make_tokenizer

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(VOCABULARY)]
    texts = [" ".join(rng.choices(words, k=row.seq_len + 8)) for _ in range(rows)]
    tokenizer = make_tokenizer(words)
    tokenizer.model_max_length = row.seq_len
    model_dir = folder / "model"
    torch.manual_seed(seed)
    if row.task == "causal-lm":
        tokenizer.eos_token = "[SEP]"
        model: Any = LlamaForCausalLM(LlamaConfig(**row.model_config))
    else:
        config = BertConfig(vocab_size=len(tokenizer), **row.model_config)
        config.num_labels = 2
        model = BertForSequenceClassification(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data_dir = folder / "data"
    data_dir.mkdir()
    for name, part in (("train", texts[VALIDATION_ROWS:]), ("validation", texts[:VALIDATION_ROWS])):
        with (data_dir / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([text, ("negative", "positive")[i % 2]] for i, text in enumerate(part))
    return model_dir, data_dir


def training_config(settings: Settings) -> Any:
    from kubetune_trainer.config import TrainingConfig

    row = settings.row
    model: dict[str, Any] = {"source": str(settings.model_dir), "task": row.task}
    if row.task == "sequence-classification":
        model["labels"] = ["negative", "positive"]
    return TrainingConfig.model_validate(
        {
            "model": model,
            "data": {
                "train": {"source": str(settings.data_dir / "train.csv")},
                "validation": {"source": str(settings.data_dir / "validation.csv")},
                "maxLength": row.seq_len,
            },
            "training": {
                "maxSteps": settings.steps,
                "batchSize": row.batch_size,
                "learningRate": LEARNING_RATE,
                "precision": "bf16" if settings.cuda else "fp32",
                "dataLoaderWorkers": settings.workers,
            },
            "regularization": {"maxGradNorm": MAX_GRAD_NORM},
            "evaluation": {"strategy": "steps", "everySteps": settings.steps},
            "output": {"saveModel": False},
        },
        by_name=False,
    )


# --- timing -------------------------------------------------------------------------------


class StepClock:
    """Marks the end of the warm-up and of the last step, the device synchronised at both."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.steps = 0
        self.marks: dict[str, float] = {}

    def step_done(self) -> None:
        self.steps += 1
        if self.steps in (self.settings.warmup, self.settings.steps):
            if self.settings.cuda:
                import torch

                torch.cuda.synchronize()
            self.marks["warm" if self.steps == self.settings.warmup else "end"] = (
                time.perf_counter()
            )

    def seconds(self) -> float:
        return self.marks["end"] - self.marks["warm"]


# --- the three loops, each run in its own process -----------------------------------------


def kubetune_loop(settings: Settings, work: Path) -> StepClock:
    from rich.console import Console

    from kubetune_trainer.training.recipe import Recipe

    clock = StepClock(settings)

    class TimedRecipe(Recipe):
        def _after_optimizer_step(self) -> str | None:
            clock.step_done()
            return super()._after_optimizer_step()

    with open(os.devnull, "w") as quiet:
        recipe = TimedRecipe(
            training_config(settings), work, job_name="bench", env={}, console=Console(file=quiet)
        )
        recipe.setup()
        recipe.train()
        recipe.cleanup()
    return clock


def shared_data(settings: Settings) -> tuple[Any, Any, Any]:
    """kubetune's prepared rows, length-grouped sampler and collator, for the other loops."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithPadding

    from kubetune_trainer.data import IGNORED_LABEL, LengthGroupedSampler, prepare_data

    config = training_config(settings)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prepared = prepare_data(config, tokenizer)
    columns = [c for c in prepared.train.column_names if c != "length"]
    rows = prepared.train.select_columns(columns)
    sampler = LengthGroupedSampler(prepared.train["length"], settings.row.batch_size, 42)
    collator: Any = (
        DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORED_LABEL, pad_to_multiple_of=8)
        if settings.row.task == "causal-lm"
        else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    )
    return rows, sampler, collator


def load_model(settings: Settings) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto: Any = (
        AutoModelForCausalLM
        if settings.row.task == "causal-lm"
        else AutoModelForSequenceClassification
    )
    return auto.from_pretrained(settings.model_dir, attn_implementation="sdpa", dtype=torch.float32)


def bare_loop(settings: Settings, work: Path) -> StepClock:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    accelerator = Accelerator(
        mixed_precision="bf16" if settings.cuda else "no",
        dataloader_config=DataLoaderConfiguration(non_blocking=settings.cuda),
    )
    rows, sampler, collator = shared_data(settings)
    loader = DataLoader(
        rows.with_format("torch"),
        batch_size=settings.row.batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=settings.workers,
        pin_memory=settings.cuda,
        persistent_workers=settings.workers > 0,
    )
    model = load_model(settings)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, weight_decay=0.01, fused=True
    )
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=0, num_training_steps=settings.steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    clock = StepClock(settings)
    epoch = 0
    while clock.steps < settings.steps:
        loader.set_epoch(epoch)
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            clock.step_done()
            if clock.steps == settings.steps:
                break
        epoch += 1
    return clock


def trainer_loop(settings: Settings, work: Path) -> StepClock:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    rows, sampler, collator = shared_data(settings)
    clock = StepClock(settings)

    class Stamp(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock.step_done()

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return sampler

    arguments = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=settings.row.batch_size,
        max_steps=settings.steps,
        learning_rate=LEARNING_RATE,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch_fused",
        bf16=settings.cuda,
        use_cpu=not settings.cuda,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=settings.workers,
        dataloader_pin_memory=settings.cuda,
        dataloader_persistent_workers=settings.workers > 0,
    )
    trainer = SameOrderTrainer(
        model=load_model(settings),
        args=arguments,
        train_dataset=rows,
        data_collator=collator,
        callbacks=[Stamp()],
    )
    trainer.train()
    return clock


LOOP_FUNCTIONS: dict[str, Callable[[Settings, Path], StepClock]] = {
    "kubetune": kubetune_loop,
    "bare": bare_loop,
    "trainer": trainer_loop,
}


def peak_memory_mib(cuda: bool) -> float:
    """Peak GPU memory allocated by torch, or on the CPU the process's peak RSS."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_loop(loop: str, settings: Settings) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        clock = LOOP_FUNCTIONS[loop](settings, Path(work))
    timed_steps = settings.steps - settings.warmup
    samples_per_second = timed_steps * settings.row.batch_size / clock.seconds()
    return {
        "samples_per_second": samples_per_second,
        "tokens_per_second": samples_per_second * settings.row.seq_len,
        "peak_memory_mib": peak_memory_mib(settings.cuda),
    }


# --- the driver ---------------------------------------------------------------------------


def measure(loop: str, settings: Settings) -> dict[str, float | None]:
    command = [
        sys.executable,
        __file__,
        "--loop",
        loop,
        "--settings",
        json.dumps({**asdict(settings), "model_dir": str(settings.model_dir)}, default=str),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the {loop} loop failed:\n{result.stderr[-4000:]}")
    measured: dict[str, float | None] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def settings_from_json(text: str) -> Settings:
    fields = json.loads(text)
    return Settings(
        row=Row(**fields["row"]),
        model_dir=Path(fields["model_dir"]),
        data_dir=Path(fields["data_dir"]),
        steps=fields["steps"],
        warmup=fields["warmup"],
        device=fields["device"],
        workers=fields["workers"],
    )


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return str(torch.cuda.get_device_name())
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def row_results(row: Row, settings: Settings, name: str) -> dict[str, Any]:
    """The three loops of one row, with MFU and the ratios."""
    from transformers import AutoConfig

    from kubetune_trainer.flops import (
        device_peak,
        model_flops_utilization,
        shape_from_config,
        training_flops_per_token,
    )

    loops = {loop: measure(loop, settings) for loop in LOOPS}
    config = AutoConfig.from_pretrained(settings.model_dir)
    shape = shape_from_config(config, causal_lm=row.task == "causal-lm")
    flops_per_token = training_flops_per_token(shape, row.seq_len)
    peak = device_peak(name) if settings.cuda else None
    tokens = {loop: float(measured["tokens_per_second"] or 0) for loop, measured in loops.items()}
    for loop, measured in loops.items():
        measured["mfu"] = (
            None
            if peak is None
            else model_flops_utilization(tokens[loop], flops_per_token, peak.bf16_flops)
        )
    return {
        "row": row.name,
        "seqLen": row.seq_len,
        "batchSize": row.batch_size,
        "flopsPerToken": flops_per_token,
        "loops": loops,
        "kubetuneOverTrainer": tokens["kubetune"] / tokens["trainer"],
        "kubetuneOverBare": tokens["kubetune"] / tokens["bare"],
    }


def commit() -> str:
    """HEAD's short hash, or KUBETUNE_COMMIT in a copy without .git (a GPU machine's)."""
    if os.environ.get("KUBETUNE_COMMIT"):
        return os.environ["KUBETUNE_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
    except FileNotFoundError:  # no git at all
        return "unknown"
    return result.stdout.strip() or "unknown"


def print_table(results: dict[str, Any]) -> None:
    print(
        f"gpu throughput on {results['device']}, commit {results['commit']}, "
        f"{results['steps']} steps ({results['warmup']} warm-up), precision {results['precision']}"
    )
    for row in results["rows"]:
        print(f"  {row['row']} (batch {row['batchSize']}, {row['flopsPerToken']:.3g} FLOPs/token)")
        for loop, measured in row["loops"].items():
            mfu = "n/a" if measured["mfu"] is None else f"{100 * measured['mfu']:.1f}%"
            print(
                f"    {loop:<9} {measured['tokens_per_second']:12.1f} tokens/s"
                f" {measured['samples_per_second']:9.2f} samples/s"
                f"  peak {measured['peak_memory_mib']:8.0f} MiB  MFU {mfu}"
            )
        print(
            f"    kubetune/trainer {row['kubetuneOverTrainer']:.3f} (target 1.0)"
            f"  kubetune/bare {row['kubetuneOverBare']:.3f} (target 0.97)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (a smoke run)")
    parser.add_argument("--rows", nargs="*", help="row names (default: all)")
    parser.add_argument("--steps", type=int, help="optimizer steps per loop")
    parser.add_argument("--warmup", type=int, help="steps left out of the timing")
    parser.add_argument("--workers", type=int, help="data-loader workers (default: 2 on a GPU)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--loop", choices=LOOPS, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        print(json.dumps(run_loop(args.loop, settings_from_json(args.settings))))
        return
    table = TINY_ROWS if args.tiny else ROWS
    unknown = set(args.rows or ()) - set(table)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(table)}")
    steps = args.steps or (12 if args.tiny else 60)
    warmup = args.warmup if args.warmup is not None else (4 if args.tiny else 10)
    workers = args.workers if args.workers is not None else (2 if args.device == "cuda" else 0)
    name = device_name(args.device)
    results: dict[str, Any] = {
        "device": name,
        "commit": commit(),
        "steps": steps,
        "warmup": warmup,
        "precision": "bf16" if args.device == "cuda" else "fp32",
        "rows": [],
    }
    for row_name in args.rows or table:
        row = table[row_name]
        with tempfile.TemporaryDirectory() as folder:
            rows_needed = steps * row.batch_size + VALIDATION_ROWS
            model_dir, data_dir = make_row_inputs(row, Path(folder), rows_needed)
            settings = Settings(row, model_dir, data_dir, steps, warmup, args.device, workers)
            results["rows"].append(row_results(row, settings, name))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
