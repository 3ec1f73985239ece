"""Sharded training (training.sharding: fsdp): accelerate's FSDP plugin, built from the config.

A model past one GPU's memory trains when its parameters, gradients and optimizer state are
split across every process of the job (FSDP2, torch's `fully_shard`, through accelerate).
Everything stays accelerate's: `prepare` shards the model block by block (its
`transformer_based_wrap`, given the model's `_no_split_modules` by `wrap_blocks`),
`save_state` / `load_state` write and read sharded checkpoints (torch.distributed.checkpoint,
one file per process, so a restarted group resumes exactly), and `get_state_dict` gathers
the full weights on rank 0 for the final `save_pretrained` directory, which loads like the
model of an unsharded run. The pods need nothing more: the plugin is built in each process
from the config, over the same process group and rendezvous as data parallelism.

accelerate 1.16 takes the plugin only on GPU-like devices: on CPU processes (gloo) its
state keeps MULTI_CPU and ignores the plugin (accelerate/state.py, AcceleratorState's
`distributed_type in [MULTI_GPU, ...]` gate), so the run would silently be data parallel.
torch's FSDP2 does run on CPU with gloo, so `shard_on_cpu` sets the distributed type that
gate would have set; accelerate's own FSDP2 code then prepares, saves and loads as on GPUs.
That is how the CPU tests (and a laptop's `kubetune run` with several processes) shard.

training.gradientCheckpointing stays transformers' own (modeling.py): transformers 5
checkpoints each block's `forward` inside FSDP2's hooks, as FSDP2 needs. The plugin's
`activation_checkpointing` (torch's checkpoint_wrapper around each block) fails on
transformers 5's GPT-2 blocks with a mismatched attention-mask size, so it stays off.

What reads parameters directly cannot see sharded ones: the config refuses the options
that would (config.py, `_sharding_fits_the_recipe`), and the layer gradient norms are not
measured (`layer_grad_norms`).
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from kubetune_trainer.config import TrainingSpec
from kubetune_trainer.training.layer_grad_norms import LayerGradNorms


class ShardingError(ValueError):
    """A sharded run that cannot start as configured (the message names the field)."""


def fsdp_plugin(training: TrainingSpec) -> FullyShardedDataParallelPlugin | None:
    """accelerate's FSDP2 plugin for training.sharding: fsdp; None for an unsharded run."""
    if training.sharding == "none":
        return None
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=training.fsdp.strategy == "full",
        auto_wrap_policy="transformer_based_wrap",
        state_dict_type="SHARDED_STATE_DICT",
        # training.gradientCheckpointing stays transformers' own (see the module's note).
        activation_checkpointing=False,
        cpu_ram_efficient_loading=False,
    )


def check_processes(training: TrainingSpec, processes: int) -> None:
    """Refuse sharding over one process: there is nothing to shard across."""
    if training.sharding == "fsdp" and processes < 2:
        raise ShardingError(
            "training.sharding: fsdp needs two or more processes (workers x GPUs per worker, "
            f"or `kubetune run --processes`), this run has {processes}; "
            "set training.sharding: none to train on one"
        )


def shard_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin | None) -> None:
    """Make CPU processes (gloo) shard as accelerate shards on GPUs (see the module's note)."""
    if plugin is None or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def wrap_blocks(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Before `prepare`: shard the model by its transformer blocks (`block_classes`)."""
    if is_sharded(accelerator):
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = block_classes(model)


def block_classes(model: torch.nn.Module) -> list[str]:
    """The classes of the model's `_no_split_modules` that it has, but the one holding the
    input embeddings (BERT's BertEmbeddings): accelerate shards the embeddings as a unit
    of their own, and sharding them twice fails."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    present = {type(module).__name__: module for module in model.modules()}
    return [
        name
        for name in getattr(model, "_no_split_modules", None) or []
        if name in present and not any(inner is embeddings for inner in present[name].modules())
    ]


def layer_grad_norms(model: torch.nn.Module, accelerator: Accelerator) -> LayerGradNorms:
    """The layer gradient norms of `model`: none measured when it is sharded (no process
    holds whole gradients)."""
    return LayerGradNorms(model, accelerator.device, enabled=not is_sharded(accelerator))


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether the prepared model is sharded (FSDP)."""
    return bool(accelerator.distributed_type == DistributedType.FSDP)


def full_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, Any] | None:
    """The whole model's weights on rank 0, gathered from every process's shards, for
    `save_pretrained(state_dict=...)`; None for an unsharded model, which holds them all.
    Every process must call it (the gathering is collective)."""
    if not is_sharded(accelerator):
        return None
    state: dict[str, Any] = accelerator.get_state_dict(model)
    return state
