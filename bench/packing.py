"""Packing: one epoch of a causal LM on long-tailed rows, padded (length grouped) vs packed.

    python bench/packing.py [--rows 800] [--max-length 256] [--median-words 30] [--repeats 2]
    python bench/packing.py --model llama-1.1b     # on a GPU: TinyLlama's shape, bf16, 2048

Chat and instruction data have long-tailed lengths: most rows are short, a few are long.
The script writes such rows (lognormal word counts, like chat turns), saves a small
random-init GPT-2 (2 layers x 512; or with --model llama-1.1b a Llama of TinyLlama-1.1B's
shape, bench/gpu_throughput.py's, for a GPU), and trains one epoch through the real recipe twice:
with data.packing off (batches of length-grouped rows padded to their longest) and on
(rows packed best-fit decreasing into sequences of maxLength tokens). The two variants
alternate for --repeats rounds and each one's median counts, so a machine that slows down
for a while slows both alike.

It prints, per variant, the real (non-padding) tokens per second of the training loop
(the epoch's time less its evaluation) and the share of padding tokens in the epoch's
batches, and the ratio packed / padded, all measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = [f"w{i}" for i in range(200)]


def write_rows(path: Path, rows: int, median_words: int, max_words: int, seed: int) -> Path:
    """Rows of random words with lognormal lengths (sigma 0.9 around the median, a tail to
    max_words)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_words), 0.9, rows).astype(int), 2, max_words)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        for length in lengths.tolist():
            writer.writerow([" ".join(rng.choice(WORDS, length).tolist())])
    return path


@dataclass(frozen=True)
class Preset:
    """A model and the run settings that suit it."""

    max_length: int
    batch_size: int
    median_words: int
    rows: int


PRESETS = {
    "tiny-gpt2": Preset(max_length=256, batch_size=16, median_words=30, rows=800),
    "llama-1.1b": Preset(max_length=2048, batch_size=8, median_words=300, rows=2000),
}


def make_model(folder: Path, name: str) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from gpu_throughput import TINYLLAMA
    from tests.tiny import make_tokenizer

    tokenizer = make_tokenizer(WORDS)
    tokenizer.eos_token = "[SEP]"
    torch.manual_seed(0)
    if name == "llama-1.1b":  # the vocabulary of TinyLlama: its head's FLOPs are real
        LlamaForCausalLM(LlamaConfig(**TINYLLAMA)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=512,
        n_layer=2,
        n_head=8,
        n_positions=1024,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def one_epoch(
    model: Path, data: tuple[Path, Path], max_length: int, batch_size: int, packing: bool
) -> dict[str, Any]:
    """Train one epoch; the training loop's seconds and the report's data section."""
    from kubetune_trainer.__main__ import run_training
    from kubetune_trainer.config import TrainingConfig

    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "task": "causal-lm"},
            "data": {
                "train": {"source": str(data[0])},
                "validation": {"source": str(data[1])},
                "maxLength": max_length,
                "packing": packing,
            },
            "training": {"epochs": 1, "batchSize": batch_size, "learningRate": 1e-3},
            "output": {"saveModel": False},
        },
        by_name=False,
    )
    with tempfile.TemporaryDirectory() as output:
        result = run_training(
            config, Path(output), job_name="bench", env={}, console=Console(quiet=True)
        )
    timings = result.report["timings"]
    seconds = timings["trainSeconds"] - timings.get("evaluationSeconds", 0.0)
    return {"seconds": seconds, "data": result.report["data"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=PRESETS, default="tiny-gpt2")
    parser.add_argument("--rows", type=int, help="training rows (default: the model's preset)")
    parser.add_argument("--max-length", type=int, help="data.maxLength (default: the preset's)")
    parser.add_argument("--median-words", type=int, help="median row length (the preset's)")
    parser.add_argument("--batch-size", type=int, help="training.batchSize (the preset's)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    preset = PRESETS[args.model]
    max_length = args.max_length or preset.max_length
    batch_size = args.batch_size or preset.batch_size
    median_words = args.median_words or preset.median_words
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        model = make_model(folder / "model", args.model)
        words = max_length - 1  # one token per word, and the end of text
        data = (
            write_rows(folder / "train.csv", args.rows or preset.rows, median_words, words, 0),
            write_rows(folder / "validation.csv", 50, median_words, words, seed=1),
        )
        seconds: dict[bool, list[float]] = {False: [], True: []}
        packed_data: dict[str, Any] = {}
        for _ in range(args.repeats):
            for packing in (False, True):
                run = one_epoch(model, data, max_length, batch_size, packing)
                seconds[packing].append(run["seconds"])
                packed_data = run["data"] if packing else packed_data
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    report(packed_data["packing"], medians, args.model, batch_size)


def report(packing: dict[str, Any], seconds: dict[bool, float], model: str, batch: int) -> None:
    tokens = packing["tokens"]
    padded, packed = tokens / seconds[False], tokens / seconds[True]
    print(
        f"{model}: {packing['rows']} rows, {tokens} real tokens, maxLength "
        f"{packing['maxLength']}, batch {batch}: packed into {packing['sequences']} sequences, "
        f"fill {packing['fill']:.3f}"
    )
    print(f"{'variant':<26}{'real tokens/s':>15}{'padding':>10}")
    print(f"{'padded (length grouped)':<26}{padded:>15,.0f}{packing['paddingBefore']:>10.1%}")
    print(f"{'packed':<26}{packed:>15,.0f}{packing['paddingAfter']:>10.1%}")
    print(f"ratio packed/padded: {packed / padded:.2f}")


if __name__ == "__main__":
    main()
