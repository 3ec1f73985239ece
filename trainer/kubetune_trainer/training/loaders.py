"""The training and validation DataLoaders of a run, from its prepared rows.

Training batches are drawn length-grouped (rows of similar length together, so little
padding), optionally class-balanced, and packed into sequences of data.maxLength tokens
with data.packing; validation rows are never packed. Loaders draw their worker seeds from
their own generator, not the global one that dropout uses: otherwise the extra loader of a
resumed epoch would shift every dropout mask.

The third loader is the training side of the generalization gap: a fixed sample of the
training rows, drawn once with training.seed and as many as the validation rows (at most
TRAINING_SAMPLE_CAP), batched like the validation rows, so that every evaluation scores
the same training rows in eval mode with the validation's metric code. A running metric
over the batches since the last evaluation would mix weights of different steps and
dropout, and so depend on how often the run evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import (
    IGNORED_LABEL,
    LengthGroupedSampler,
    PackedCollator,
    PreferenceCollator,
    PreparedData,
    pack_rows,
    packing_summary,
)
from kubetune_trainer.data.balance import class_balanced_weights
from kubetune_trainer.data.packing import PAD_MULTIPLE

CUDA_LOADER_WORKERS = 2
"""Loader processes beside a GPU when training.dataLoaderWorkers is not set (none on a CPU)."""
TRAINING_SAMPLE_CAP = 1024
"""The most training rows scored at each evaluation for the training side of the gap."""


def pad_multiple(device: torch.device) -> int:
    """What a batch's width is rounded up to: PAD_MULTIPLE tokens on a GPU, whose tensor
    cores want such shapes, and the longest row on a CPU, where the extra positions are
    only extra work (about 4% more tokens in the chat benchmark's batches; see
    docs/performance.md, LLM objectives against TRL)."""
    return PAD_MULTIPLE if device.type == "cuda" else 1


def training_rows(
    config: TrainingConfig, data: PreparedData, device: torch.device
) -> datasets.Dataset:
    """The rows the training loader draws: with data.packing the training rows packed
    into sequences of data.maxLength tokens (the data report gets the packing's numbers),
    else the training rows as prepared."""
    if not config.data.packing:
        return data.train
    packed = pack_rows(data.train, config.data.max_length)
    training = config.training
    data.report.packing = packing_summary(
        packed, data.train["length"][:], training.batch_size, training.seed, pad_multiple(device)
    )
    return packed.rows


def build_loaders(
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    train_rows: datasets.Dataset,
    device: torch.device,
) -> tuple[DataLoader[Any], DataLoader[Any], DataLoader[Any]]:
    """The training loader over `train_rows`, the validation loader and the loader of the
    training sample (training_sample), for `device`."""
    training = config.training
    workers = data_loader_workers(config, device)
    loading: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    sampler = LengthGroupedSampler(
        train_rows["length"], training.batch_size, training.seed, weights=draw_weights(config, data)
    )
    columns = [c for c in train_rows.column_names if c != "length"]
    train = DataLoader(
        train_rows.select_columns(columns).with_format("torch"),
        batch_size=training.batch_size,
        sampler=sampler,
        collate_fn=_training_collator(config, tokenizer, pad_multiple(device)),
        generator=torch.Generator().manual_seed(training.seed),
        **loading,
    )
    validation, sample = (
        DataLoader(
            rows.select_columns(_evaluated_columns(rows)).with_format("torch"),
            batch_size=config.evaluation.batch_size or 2 * training.batch_size,
            collate_fn=_collator(config, tokenizer, pad_multiple(device)),
            generator=torch.Generator().manual_seed(training.seed),
            **loading,
        )
        for rows in (data.validation, training_sample(data, training.seed))
    )
    return train, validation, sample


def training_sample(data: PreparedData, seed: int) -> datasets.Dataset:
    """The training rows every evaluation scores: as many as the validation rows (at most
    TRAINING_SAMPLE_CAP), drawn without replacement with `seed`, in training order."""
    size = min(len(data.train), len(data.validation), TRAINING_SAMPLE_CAP)
    picked = np.random.default_rng(seed).choice(len(data.train), size=size, replace=False)
    return data.train.select(np.sort(picked))


def _evaluated_columns(rows: datasets.Dataset) -> list[str]:
    """What an evaluation batch holds: not the length, nor a training row's weight."""
    return [c for c in rows.column_names if c not in ("length", "weight")]


def _collator(config: TrainingConfig, tokenizer: PreTrainedTokenizerBase, multiple: int) -> Any:
    """Pads a batch to its longest row, rounded up to `multiple` tokens (a language model's
    labels with IGNORED_LABEL; a preference batch's chosen rows, then its rejected rows)."""
    if config.training.learns_preferences:
        return PreferenceCollator(tokenizer.pad_token_id or 0, multiple)
    rounding = multiple if multiple > 1 else None
    if config.model.task == "causal-lm":
        return DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=IGNORED_LABEL, pad_to_multiple_of=rounding
        )
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=rounding)


def _training_collator(
    config: TrainingConfig, tokenizer: PreTrainedTokenizerBase, multiple: int
) -> Any:
    # Packed sequences bring position_ids and no attention_mask; what pads them is
    # never attended to, so a tokenizer without a pad token may pad with id 0.
    if config.data.packing:
        return PackedCollator(tokenizer.pad_token_id or 0, multiple)
    return _collator(config, tokenizer, multiple)


def steps_per_epoch(config: TrainingConfig, rows: int, processes: int) -> int:
    """Optimizer steps per epoch on each process (batches are sharded across processes)."""
    batches = math.ceil(rows / config.training.batch_size)
    per_process = math.ceil(batches / processes)
    return math.ceil(per_process / config.training.gradient_accumulation_steps)


def endless_batches(loader: Any) -> Iterator[Any]:
    """A prepared loader's batches, epoch after epoch, each epoch in its own order."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def data_loader_workers(config: TrainingConfig, device: torch.device) -> int:
    """training.dataLoaderWorkers, else CUDA_LOADER_WORKERS beside a GPU and none on the CPU."""
    configured = config.training.data_loader_workers
    if configured is not None:
        return configured
    return CUDA_LOADER_WORKERS if device.type == "cuda" else 0


def draw_weights(config: TrainingConfig, data: PreparedData) -> npt.NDArray[np.float64] | None:
    """Per-row draw probabilities for data.balance.sampler class-balanced, else None."""
    if config.data.balance.sampler != "class-balanced":
        return None
    labels = np.asarray(data.train["labels"][:], dtype=np.int64)
    return class_balanced_weights(labels, len(data.labels))
