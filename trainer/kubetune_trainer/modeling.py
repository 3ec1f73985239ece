"""Load the pre-trained model and tokenizer a config names, shaped for its task.

Hugging Face configs name their dropout settings differently per architecture, so the
regularization section's dropout is written to every name the model actually has, and a
model with none of them is an error rather than a silently ignored setting. LoRA
(through peft) and gradient checkpointing are switched on here too, so the recipe sees one
ready model whatever the options.

QLoRA (training.lora.quantization) loads the frozen base weights through bitsandbytes: 4bit
as the QLoRA paper does (NF4, double quantization, computing in bf16 where the GPU has it),
8bit as LLM.int8. bitsandbytes' CPU backend runs 4bit, so the same manifest trains on a
laptop, slowly (8bit there cannot load its own checkpoints back, so it needs a GPU); on a
GPU each process loads its copy onto its own device, as accelerate asks. The merged model
(training/model_export.py) is built on a base loaded again here at full precision: merging
into quantized weights would round the adapter away.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from kubetune_trainer.config import LoraSpec, TrainingConfig, parse_source
from kubetune_trainer.data import PACKED_ARCHITECTURES, named_template
from kubetune_trainer.data.sources import resolve_local

HIDDEN_DROPOUT_NAMES = (
    "hidden_dropout_prob",
    "hidden_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
)
ATTENTION_DROPOUT_NAMES = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


class ModelError(Exception):
    """A model that cannot be loaded or configured as asked (the message names the field)."""


def model_path(config: TrainingConfig) -> Path:
    """The local directory holding the weights and tokenizer."""
    path = resolve_local(config.model.source, "model.source")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise ModelError(
            f"model.source: {config.model.source} ({path}) holds a LoRA adapter, not a model: "
            "use the merged/ of its run (output.mergeAdapter) or the base it names"
        )
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model.source: {config.model.source} ({path}) holds no config.json: "
            "point it at a directory saved with save_pretrained"
        )
    return path


def load_tokenizer(config: TrainingConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer; causal LMs without a padding token pad with end-of-text. With
    data.chatTemplate, that template replaces the tokenizer's own, so the saved model renders
    conversations at inference as it learnt them."""
    tokenizer = AutoTokenizer.from_pretrained(model_path(config))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.data.chat_template is not None:
        tokenizer.chat_template = named_template(config.data.chat_template)
    return tokenizer


def base_model_reference(config: TrainingConfig) -> tuple[str, str | None]:
    """How an adapter names its base model (peft's base_model_name_or_path, revision): the
    hub's ORG/NAME and revision for hf://, else the local directory the weights were read from."""
    source = parse_source(config.model.source)
    if source.scheme == "hf":
        return source.location, source.revision or None
    return str(model_path(config)), None


def load_model(config: TrainingConfig, labels: list[str]) -> nn.Module:
    """The model with its task head, dropout overrides, LoRA and checkpointing applied."""
    lora = config.training.lora
    model = load_base_model(config, labels, lora.quantization if lora else "none")
    if config.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(  # type: ignore[no-untyped-call]
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if lora is not None:
        return _with_lora(model, lora, config.model.task)
    return model


def load_base_model(
    config: TrainingConfig, labels: list[str], quantization: str = "none"
) -> PreTrainedModel:
    """The pre-trained model with its task head for `labels` and the dropout overrides,
    its linear weights quantized as training.lora.quantization says ("none": float32)."""
    path = model_path(config)
    model_config = _model_config(path, config, labels)
    if config.data.packing:
        _check_packing(model_config)
    auto = (
        AutoModelForCausalLM
        if config.model.task == "causal-lm"
        else AutoModelForSequenceClassification
    )
    options = _quantization_options(quantization, config.model.task)
    # A fresh task head is the point of fine-tuning: transformers' report of its "missing"
    # weights would only alarm people, so loading is quiet.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        return _from_pretrained(auto, path, model_config, options)
    finally:
        transformers_logging.set_verbosity(verbosity)


CLASSIFIER_HEADS = ["classifier", "score"]
"""What transformers' sequence classifiers call their head: trained in full, never quantized."""


def check_quantization(config: TrainingConfig) -> None:
    """Refuse a training.lora.quantization that this machine cannot run, before any data is
    read (load_model checks again)."""
    lora = config.training.lora
    if lora is not None and lora.quantization != "none":
        _check_quantization(lora.quantization)


def _check_quantization(quantization: str) -> None:
    if quantization == "8bit" and not torch.cuda.is_available():
        raise ModelError(
            "training.lora.quantization: 8bit needs a CUDA GPU (bitsandbytes' CPU backend "
            "trains in 8bit but cannot load its checkpoints back); use 4bit without a GPU"
        )
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        raise ModelError(
            f"training.lora.quantization: {quantization} needs bitsandbytes, which is not "
            "installed: python -m pip install 'kubetune[qlora]' (or leave quantization out)"
        ) from None


def _quantization_options(quantization: str, task: str) -> dict[str, Any]:
    """from_pretrained's arguments for bitsandbytes' 4bit or 8bit weights ({} for "none")."""
    if quantization == "none":
        return {}
    _check_quantization(quantization)
    from transformers import BitsAndBytesConfig

    # Causal LMs keep transformers' default: every linear layer but the output head.
    skip = CLASSIFIER_HEADS if task == "sequence-classification" else None
    if quantization == "8bit":
        quantized = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_8bit=True, llm_int8_skip_modules=skip
        )
    else:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        quantized = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            llm_int8_skip_modules=skip,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )
    options: dict[str, Any] = {"quantization_config": quantized}
    if torch.cuda.is_available():  # this process's GPU (accelerate has set it)
        options["device_map"] = {"": torch.cuda.current_device()}
    return options


def state_load_options(config: TrainingConfig) -> dict[str, Any]:
    """accelerator.load_state's options for this run's checkpoints. A quantized base saves
    bitsandbytes' quantization state beside each weight, keys that loading does not take
    back; the base is frozen and quantized afresh from the same weights at every start, so
    those keys are skipped, and only for such a run."""
    lora = config.training.lora
    return {"strict": False} if lora is not None and lora.quantization != "none" else {}


def _from_pretrained(
    auto: Any, path: Path, model_config: PretrainedConfig, extra: dict[str, Any]
) -> PreTrainedModel:
    """Fused scaled-dot-product attention where the architecture has it, else the eager one.

    A classifier saved with another number of classes gets a fresh head of the right size
    (the only weights whose shape the labels change); a causal LM must match exactly.
    """
    options = {
        "config": model_config,
        "dtype": torch.float32,
        "ignore_mismatched_sizes": auto is AutoModelForSequenceClassification,
        **extra,
    }
    try:
        model: PreTrainedModel = auto.from_pretrained(path, attn_implementation="sdpa", **options)
    except ValueError as error:
        if not any(name in str(error).lower() for name in ("sdpa", "scaled_dot_product")):
            raise
        model = auto.from_pretrained(path, attn_implementation="eager", **options)
    return model


def _model_config(path: Path, config: TrainingConfig, labels: list[str]) -> PretrainedConfig:
    overrides: dict[str, Any] = {}
    if config.model.task == "sequence-classification":
        overrides |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    model_config: PretrainedConfig = AutoConfig.from_pretrained(path, **overrides)
    _set_dropout(model_config, config.regularization.dropout, HIDDEN_DROPOUT_NAMES, "dropout")
    _set_dropout(
        model_config,
        config.regularization.attention_dropout,
        ATTENTION_DROPOUT_NAMES,
        "attentionDropout",
    )
    return model_config


def _check_packing(model_config: PretrainedConfig) -> None:
    """Refuse an architecture that would let packed rows attend to each other; run the
    others without a KV cache, which would switch transformers' packed-row masks off."""
    if model_config.model_type not in PACKED_ARCHITECTURES:
        raise ModelError(
            f"data.packing: the {model_config.model_type} architecture does not keep packed "
            "rows apart by their position_ids (packed rows would attend to each other); "
            f"leave data.packing out, or use one of {', '.join(sorted(PACKED_ARCHITECTURES))}"
        )
    model_config.use_cache = False


def _set_dropout(
    model_config: PretrainedConfig, value: float | None, names: tuple[str, ...], field: str
) -> None:
    if value is None:
        return
    present = [name for name in names if isinstance(getattr(model_config, name, None), float)]
    if not present:
        raise ModelError(
            f"regularization.{field}: the {model_config.model_type} config has no dropout "
            f"setting ({', '.join(names)}); leave {field} out for this model"
        )
    for name in present:
        setattr(model_config, name, value)


def _with_lora(model: PreTrainedModel, spec: LoraSpec, task: str) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if spec.quantization != "none":  # norms and heads in float32, the base frozen
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=False
        )

    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS,
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules or None,
    )
    try:
        wrapped: nn.Module = get_peft_model(model, lora)
    except ValueError as error:
        raise ModelError(f"training.lora: {error}; set training.lora.targetModules") from None
    return wrapped
