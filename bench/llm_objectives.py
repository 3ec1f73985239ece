"""LLM objectives against TRL: kubetune's chat SFT and DPO against TRL's SFTTrainer and DPOTrainer.

    python bench/llm_objectives.py [--steps 40] [--repeats 3] [--variants NAME,NAME,...]

One randomly initialised Llama (6 layers x 512 hidden, about 20M parameters, a word-level
vocabulary of 1,000 words and ChatML's tokens, a ChatML template with `{% generation %}`
markers) is saved once and shared by every variant, each run in a fresh process:

  kubetune-sft       kubetune, data.messagesColumn (conversations), assistant-only loss
  trl-sft            TRL's SFTTrainer, the same conversations, assistant_only_loss=True
  kubetune-dpo-lora  kubetune, training.objective dpo, LoRA (reference: adapters disabled)
  trl-dpo-lora       TRL's DPOTrainer with a peft_config (reference: adapters disabled)
  kubetune-sft-lora  kubetune SFT with LoRA on the sequences the DPO forward sees (the
                     prompt with its chosen and with its rejected answer, batch 2 x batch
                     size): the memory baseline of kubetune-dpo-lora
  kubetune-dpo       (not in the default set) full-parameter DPO, kubetune: the reference
                     log-probabilities precomputed in setup
  trl-dpo            (not in the default set) full-parameter DPO, TRL with
                     precompute_ref_log_probs=True (no reference model kept)

Both sides read the same JSONL files (OpenAI `messages` conversations for SFT; TRL's
conversational preference rows, `prompt` / `chosen` / `rejected`, for DPO) and use the same
settings: batch size, maxLength, learning rate, linear schedule, fused AdamW, weight decay
0.01, gradient clipping at 1.0, fp32 and no gradient checkpointing (TRL's defaults, bf16 and
checkpointing on, are switched off), no packing, the
loss on the assistant's tokens (content and <|im_end|>) only, LoRA rank 8 / alpha 16 /
dropout 0.05 on peft's default modules (TRL's DPOTrainer would set it to 0:
disable_dropout=False keeps it), DPO beta 0.1 with the sigmoid loss. TRL draws its
batches through kubetune's length-grouped sampler over the same rows (as
bench/trainer_overhead.py does for the transformers Trainer), so step i of either side
trains on the same rows with the same padding. Every child runs with kubetune's OpenMP spin
count (GOMP_SPINCOUNT, which importing kubetune_trainer sets before torch loads), so a busy
machine does not slow the TRL side's waiting threads more than kubetune's.

Throughput is real (non-padding: the attention mask's ones) tokens per second: for each
optimizer step after the warm-up, the tokens of its batch (for DPO, the chosen and the
rejected sequences) over the time since the step before, and the median of those rates.
Step times are stamped by a subclass of kubetune's Recipe (after each optimizer step) and
by a TrainerCallback (on_step_end) on TRL's side. Peak RSS is the child's ru_maxrss. The
variants run in interleaved rounds and each one's median round counts.

Targets on CPU: kubetune-sft / trl-sft >= 1.0 and kubetune-dpo-lora / trl-dpo-lora >= 1.0 in
tokens/s; peak RSS kubetune-dpo-lora / kubetune-sft-lora <= 1.10 (no second copy of the
weights: the report prints what one would add).
"""

from __future__ import annotations

import argparse
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

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BATCH_SIZE = 8
MAX_LENGTH = 256
LEARNING_RATE = 1e-4
WARMUP_STEPS = 5
"""Steps excluded from the throughput (allocator and thread pools warming up)."""
ROWS = 400
SEED = 42
"""kubetune's default training.seed: the sampler's order on both sides."""
LORA = {"rank": 8, "alpha": 16, "dropout": 0.05}
BETA = 0.1
WORDS = [f"w{i}" for i in range(1000)]
TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else %}{{ message['content'] + '<|im_end|>' + '\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)
"""ChatML, with TRL's generation markers around what the assistant says and its end of
turn (the tokens kubetune's assistant-only loss counts too)."""
VARIANTS = {
    "kubetune-sft": "kubetune, chat SFT",
    "trl-sft": "TRL SFTTrainer",
    "kubetune-dpo-lora": "kubetune, DPO + LoRA",
    "trl-dpo-lora": "TRL DPOTrainer + LoRA",
    "kubetune-sft-lora": "kubetune, SFT + LoRA on DPO's sequences",
    "kubetune-dpo": "kubetune, full DPO (precomputed reference)",
    "trl-dpo": "TRL DPOTrainer, full (precompute_ref_log_probs)",
}
DEFAULT_VARIANTS = list(VARIANTS)[:5]


# --- the model and the data, made once ----------------------------------------------------


def make_model(folder: Path) -> Path:
    """A random-init Llama of about 20M parameters and a ChatML word-level tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import make_chat_tokenizer

    tokenizer = make_chat_tokenizer(WORDS, TEMPLATE)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _words(rng: np.random.Generator, median: int) -> str:
    count = int(np.clip(rng.lognormal(np.log(median), 0.5), 3, 4 * median))
    return " ".join(rng.choice(WORDS, count).tolist())


def write_data(folder: Path, rows: int, seed: int) -> dict[str, Path]:
    """Preference rows (a user turn, a chosen and a rejected answer) and the conversations
    made of them: for SFT each prompt with its chosen answer, for the memory baseline each
    prompt with its chosen and with its rejected answer."""
    rng = np.random.default_rng(seed)
    preference, sft, both = [], [], []
    for _ in range(rows):
        prompt = [{"role": "user", "content": _words(rng, 25)}]
        chosen = [{"role": "assistant", "content": _words(rng, 40)}]
        rejected = [{"role": "assistant", "content": _words(rng, 40)}]
        preference.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        sft.append({"messages": prompt + chosen})
        both += [{"messages": prompt + chosen}, {"messages": prompt + rejected}]
    paths = {}
    for name, lines in (("preference", preference), ("sft", sft), ("sft-pairs", both)):
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(line) + "\n" for line in lines), "utf-8")
    return paths


def make_data(folder: Path) -> dict[str, Path]:
    train, validation = folder / "train", folder / "validation"
    train.mkdir()
    validation.mkdir()
    files = write_data(train, ROWS, seed=0)
    files |= {f"{k}-validation": v for k, v in write_data(validation, 8, seed=1).items()}
    return files


# --- measuring ----------------------------------------------------------------------------


def tokens_per_second(stamps: list[float], tokens: list[int]) -> float:
    """The median over the steps after the warm-up of the step's real tokens over its time.

    tokens[i] is the batch of step i, stamps[i] the moment step i ended; the median, not
    the mean: on a shared machine a few steps stall for reasons that have nothing to do
    with the loop being measured.
    """
    rates = [tokens[i] / (stamps[i] - stamps[i - 1]) for i in range(WARMUP_STEPS + 1, len(stamps))]
    return statistics.median(rates)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_tokens(batch: dict[str, Any]) -> int:
    return int(batch["attention_mask"].sum())


# --- kubetune -----------------------------------------------------------------------------


def kubetune_spec(name: str, model: Path, data: dict[str, Path], steps: int) -> dict[str, Any]:
    dpo = "dpo" in name
    kind = "preference" if dpo else "sft-pairs" if name == "kubetune-sft-lora" else "sft"
    training: dict[str, Any] = {
        "maxSteps": steps,
        "batchSize": 2 * BATCH_SIZE if name == "kubetune-sft-lora" else BATCH_SIZE,
        "learningRate": LEARNING_RATE,
        "precision": "fp32",
        "seed": SEED,
    }
    if name.endswith("-lora"):
        training["lora"] = LORA
    if dpo:
        training["objective"] = "dpo"
        training["preference"] = {"beta": BETA, "loss": "sigmoid"}
    return {
        "model": {"source": str(model), "task": "causal-lm"},
        "data": {
            "train": {"source": str(data[kind])},
            "validation": {"source": str(data[f"{kind}-validation"])},
            "messagesColumn": "prompt" if dpo else "messages",
            "maxLength": MAX_LENGTH,
        },
        "training": training,
        "regularization": {"maxGradNorm": 1.0, "weightDecay": 0.01},
        "evaluation": {"strategy": "steps", "everySteps": steps},
        "output": {"saveModel": False},
    }


def kubetune_config(name: str, model: Path, data: dict[str, Path], steps: int) -> Any:
    from kubetune_trainer.config import TrainingConfig

    spec = kubetune_spec(name, model, data, steps)
    return TrainingConfig.model_validate(spec, by_name=False)


def kubetune_variant(
    name: str, model: Path, data: dict[str, Path], steps: int, work: Path
) -> tuple[list[float], list[int]]:
    from rich.console import Console

    from kubetune_trainer.training.recipe import Recipe

    config = kubetune_config(name, model, data, steps)
    stamps: list[float] = []
    tokens: list[int] = []

    class TimedRecipe(Recipe):
        def _loss(self, batch: dict[str, Any]) -> Any:
            if self.model.training:  # not the learning-rate finder's or evaluation's
                tokens.append(real_tokens(batch))
            return super()._loss(batch)

        def _after_optimizer_step(self) -> str | None:
            stamps.append(time.perf_counter())
            return super()._after_optimizer_step()

    with open(os.devnull, "w") as quiet:
        recipe = TimedRecipe(config, work, job_name="bench", env={}, console=Console(file=quiet))
        recipe.setup()
        recipe.train()
        recipe.cleanup()
    return stamps, tokens


# --- TRL ----------------------------------------------------------------------------------


def kubetune_sampler(name: str, model: Path, data: dict[str, Path]) -> Any:
    """kubetune's length-grouped order over the same rows, for TRL's loader."""
    from kubetune_trainer.data import LengthGroupedSampler, prepare_data
    from kubetune_trainer.modeling import load_tokenizer

    config = kubetune_config(name.replace("trl", "kubetune"), model, data, 1)
    prepared = prepare_data(config, load_tokenizer(config))
    if len(prepared.train) != ROWS:
        raise SystemExit(f"kubetune kept {len(prepared.train)} of {ROWS} rows: not the same data")
    return LengthGroupedSampler(prepared.train["length"], BATCH_SIZE, SEED)


def trl_variant(
    name: str, model: Path, data: dict[str, Path], steps: int, work: Path
) -> tuple[list[float], list[int]]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    dpo = "dpo" in name
    sampler = kubetune_sampler(name, model, data)
    kind = "preference" if dpo else "sft"
    rows = datasets.load_dataset("json", data_files=str(data[kind]), split="train")
    stamps: list[float] = []
    tokens: list[int] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    common: dict[str, Any] = {
        "output_dir": str(work),
        "per_device_train_batch_size": BATCH_SIZE,
        "max_steps": steps,
        "learning_rate": LEARNING_RATE,
        "lr_scheduler_type": "linear",
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "max_length": MAX_LENGTH,
        "bf16": False,  # TRL's default on a CPU; kubetune trains in fp32 there
        "fp16": False,
        "gradient_checkpointing": False,  # TRL's default is on, kubetune's off
        "use_cpu": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": SEED,
    }
    peft_config = (
        LoraConfig(
            r=LORA["rank"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            task_type="CAUSAL_LM",
        )
        if name.endswith("-lora")
        else None
    )
    network = AutoModelForCausalLM.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    base = DPOTrainer if dpo else SFTTrainer

    class SameOrder(base):  # type: ignore[misc,valid-type]  (a class chosen at run time)
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return sampler

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any) -> Any:
            tokens.append(real_tokens(inputs))
            return super().training_step(model, inputs, *args)

    if dpo:
        arguments: Any = DPOConfig(
            **common,
            beta=BETA,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=peft_config is None,
            # TRL's default sets every dropout to 0, the LoRA adapters' too; kubetune keeps
            # the configured LoRA dropout, so this keeps it on TRL's side as well.
            disable_dropout=False,
        )
    else:
        arguments = SFTConfig(**common, assistant_only_loss=True, packing=False)
    trainer = SameOrder(
        model=network,
        args=arguments,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Stamp()],
    )
    trainer.train()
    return stamps, tokens


# --- the driver ---------------------------------------------------------------------------


def run_variant(name: str, model: Path, data: dict[str, Path], steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        side = kubetune_variant if name.startswith("kubetune") else trl_variant
        stamps, tokens = side(name, model, data, steps, Path(work))
    if len(stamps) != steps or len(tokens) != steps:
        raise SystemExit(f"{name}: {len(stamps)} steps stamped, {len(tokens)} batches counted")
    return {
        "tokens_per_second": tokens_per_second(stamps, tokens),
        "peak_rss_mib": peak_rss_mib(),
        "tokens": sum(tokens),
        "step_seconds": statistics.median(b - a for a, b in itertools.pairwise(stamps)),
    }


def measure(name: str, model: Path, data: Path, steps: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--variant",
        name,
        "--model",
        str(model),
        "--data",
        str(data),
        "--steps",
        str(steps),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=child_environment())
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"{name} failed with exit code {result.returncode}")
    last: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return last


def child_environment() -> dict[str, str]:
    """This environment, with kubetune's OpenMP spin count for every side.

    Importing kubetune_trainer before torch shortens how long waiting OpenMP threads spin
    (threads.quiet_openmp_waits); a TRL process would keep GNU OpenMP's long spins, which
    on a busy machine cost it 2x and more (docs/performance.md, CPU threads). Every child
    gets the same setting, so the ratios compare the training loops, not the spin counts;
    a GOMP_SPINCOUNT or OMP_WAIT_POLICY set by hand is kept.
    """
    from kubetune_trainer.threads import OPENMP_SPIN_COUNT

    env = dict(os.environ)
    if "GOMP_SPINCOUNT" not in env and "OMP_WAIT_POLICY" not in env:
        env["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)}; 'all' for every one",
    )
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS + 1:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps by 2 or more")
    if args.variant:
        data = {k: Path(v) for k, v in json.loads(args.data.read_text()).items()}
        print(json.dumps(run_variant(args.variant, args.model, data, args.steps)))
        return
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = make_model(root / "model")
        files = make_data(root)
        index = root / "data.json"
        index.write_text(json.dumps({k: str(v) for k, v in files.items()}))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for _ in range(args.repeats):
            for name in names:
                runs[name].append(measure(name, model, index, args.steps))
        weights = model_mib(model)
    results = {name: median_run(measured) for name, measured in runs.items()}
    report(results, args.steps, args.repeats, weights)


def model_mib(model: Path) -> float:
    return sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**20


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    ordered = sorted(runs, key=lambda r: r["tokens_per_second"])
    return ordered[len(ordered) // 2]


RATIOS = (
    ("kubetune-sft", "trl-sft", "tokens_per_second", ">=", 1.0),
    ("kubetune-dpo-lora", "trl-dpo-lora", "tokens_per_second", ">=", 1.0),
    ("kubetune-dpo", "trl-dpo", "tokens_per_second", ">=", 1.0),
    ("kubetune-dpo-lora", "kubetune-sft-lora", "peak_rss_mib", "<=", 1.10),
)


def report(results: dict[str, dict[str, float]], steps: int, repeats: int, weights: float) -> None:
    print(
        f"LLM objectives: {steps} steps of {BATCH_SIZE} rows (DPO: {BATCH_SIZE} pairs), "
        f"median of {repeats}, warm-up {WARMUP_STEPS} steps, {os.cpu_count()} CPUs, "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}; "
        f"model weights {weights:.0f} MiB"
    )
    for name, result in results.items():
        print(
            f"  {name:<18} {VARIANTS[name]:<48} {result['tokens_per_second']:8.0f} tokens/s"
            f"  step {result['step_seconds']:6.3f} s  tokens {result['tokens']:7.0f}"
            f"  peak RSS {result['peak_rss_mib']:6.0f} MiB"
        )
    for numerator, denominator, key, sense, target in RATIOS:
        if numerator not in results or denominator not in results:
            continue
        ratio = results[numerator][key] / results[denominator][key]
        meets = ratio >= target if sense == ">=" else ratio <= target
        what = "tokens/s" if key == "tokens_per_second" else "peak RSS"
        verdict = "meets" if meets else "MISSES"
        print(
            f"  {what} {numerator}/{denominator} = {ratio:.3f}  "
            f"({verdict} the target {sense} {target})"
        )
        if key == "peak_rss_mib":  # what the target can tell apart on this model
            share = weights / results[denominator][key]
            print(
                f"    a second copy of the weights would add {weights:.0f} MiB, "
                f"{share:.1%} of {denominator}'s peak RSS"
            )


if __name__ == "__main__":
    main()
