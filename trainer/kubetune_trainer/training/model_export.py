"""The final model on disk: model/, and for a LoRA run asked to merge, merged/.

The layout is the one Axolotl users know (its output directory holds the adapter, its
merge writes `merged/` beside it) and the one TRL and peft write: a full fine-tune saves
the whole model to model/; a LoRA run saves its adapter there (adapter_config.json and
adapter_model.safetensors, with the tokenizer), which `PeftModel.from_pretrained` puts on
the base model that the adapter names. Megabytes instead of the base's gigabytes, and one
base serves many adapters. With output.mergeAdapter the base with the adapter folded into
its weights goes to merged/ as well, for servers and users who want one plain model that
`from_pretrained` loads alone.

The merged model is built from the adapter just saved and a base loaded afresh at full
precision, not by merging the training model in place: a QLoRA base is quantized (merging
there would round the adapter away), a sharded model is not whole in any one process, and
the training model stays as it was.

Each directory is written as a partial one and published (file_modes.publish) only when
complete, so a save that is killed leaves nothing that looks like a result; a partial
directory left by one is removed by the next save. Only the main process calls
`export_model`; the others wait for it. (transformers 5 writes safetensors itself: the
save_function that accelerate's examples pass is no longer used, so none is passed.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.file_modes import publish
from kubetune_trainer.modeling import base_model_reference, load_base_model
from kubetune_trainer.training.checkpoint_store import PARTIAL_PREFIX

MODEL_DIR = "model"
"""The fine-tuned model, or with LoRA its adapter."""
MERGED_DIR = "merged"
"""With output.mergeAdapter: the base model with the adapter merged in."""


@dataclass(frozen=True)
class ModelExport:
    """Where and how the final model is written."""

    output_dir: Path
    tokenizer: PreTrainedTokenizerBase
    base_reference: tuple[str, str | None] | None
    """The adapter's base_model_name_or_path and revision (modeling.base_model_reference);
    None for a run without LoRA, which saves no adapter."""
    load_base: Callable[[], PreTrainedModel] | None
    """The base model at full precision, for merged/; None: no merged model."""
    beat: Callable[[], None] = lambda: None
    """Called between the long parts (the heartbeat)."""


def run_export(
    config: TrainingConfig,
    output_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str],
    beat: Callable[[], None],
) -> ModelExport:
    """The export of a run of `config` (its classes: `labels`) into `output_dir`."""
    return ModelExport(
        output_dir,
        tokenizer,
        base_model_reference(config) if config.training.lora is not None else None,
        (lambda: load_base_model(config, labels)) if config.output.merge_adapter else None,
        beat,
    )


def export_model(
    export: ModelExport, model: nn.Module, state_dict: dict[str, Any] | None = None
) -> None:
    """Write `model` (unwrapped; a peft model for LoRA) to model/, and merged/ if asked.

    `state_dict`: the model's full state dict where the model itself is sharded (peft keeps
    the adapter's entries of it); None: the model's own.
    """
    stale = export.output_dir / MERGED_DIR  # an earlier save's: it never outlives its model/
    if stale.exists():
        shutil.rmtree(stale)
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and export.base_reference is not None:
        name, revision = export.base_reference
        for adapter in peft_config.values():
            adapter.base_model_name_or_path = name
            adapter.revision = revision
    adapter_dir = _write(export, MODEL_DIR, lambda path: _save(model, path, state_dict))
    if export.load_base is not None:  # output.mergeAdapter, which needs training.lora
        load_base = export.load_base
        _write(export, MERGED_DIR, lambda path: _save_merged(export, load_base, adapter_dir, path))


def _write(export: ModelExport, name: str, save: Callable[[Path], None]) -> Path:
    """`save` into a partial directory, then published as output_dir/name."""
    final = export.output_dir / name
    partial = export.output_dir / f"{PARTIAL_PREFIX}{name}"
    if partial.exists():  # left by a save that was killed: none of it may stay
        shutil.rmtree(partial)
    export.beat()
    save(partial)
    export.tokenizer.save_pretrained(partial)
    publish(partial, final)
    export.beat()
    return final


def _save(model: nn.Module, path: Path, state_dict: dict[str, Any] | None) -> None:
    """save_pretrained: a PreTrainedModel writes its weights, a peft model its adapter."""
    save_pretrained: Callable[..., None] = model.save_pretrained  # type: ignore[assignment]
    save_pretrained(path, state_dict=state_dict)


def _save_merged(
    export: ModelExport, load_base: Callable[[], PreTrainedModel], adapter_dir: Path, path: Path
) -> None:
    """The adapter at `adapter_dir` merged into a fresh base, saved as a plain model."""
    from peft import PeftModel

    with_adapter = PeftModel.from_pretrained(load_base(), adapter_dir)
    export.beat()
    merged: PreTrainedModel = with_adapter.merge_and_unload()
    merged.save_pretrained(path)
