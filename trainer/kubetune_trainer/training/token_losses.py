"""A language model's next-token loss per row, with the LM head run on the labelled positions only.

A causal LM's forward projects every position's hidden state onto the whole vocabulary: a
[batch, length, vocabulary] tensor of logits (for a 150k-token vocabulary and a batch of
8 x 2,048 tokens, 9.8 GB in fp32) of which the loss reads only the positions whose next
token carries a label, the assistant's tokens of a chat row, often half of them or fewer.
Here the forward stops before the head (a forward pre-hook hands the head an empty slice
and keeps its input), the hidden states of the labelled positions are taken out, and the
head runs on those alone: the same losses and log-probabilities with less memory and
compute, as TRL's fused LM head and Liger's fused linear cross-entropy do.

Only where that is exact: a model type whose logits are its head's output unchanged (no
final soft-capping or logit scaling: LABELLED_HEAD_ARCHITECTURES), not compiled (a hook
would break the graph) and not sharded with FSDP (whose root parameters are gathered only
inside the forward). Everywhere else the full logits, as before. The head is called as a
module, so a LoRA adapter or a quantized layer on it takes part.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch.distributed.fsdp import FSDPModule

from kubetune_trainer.data import IGNORED_LABEL

LABELLED_HEAD_ARCHITECTURES = frozenset(
    {
        "gemma",
        "gpt2",
        "gpt_neox",
        "llama",
        "mistral",
        "olmo2",
        "phi",
        "phi3",
        "qwen2",
        "qwen3",
        "smollm3",
        "starcoder2",
    }
)
"""model_type values whose causal-LM forward returns `lm_head(hidden_states)` as its logits,
with nothing applied after the head (read in each one's modeling code)."""


def row_token_losses(
    model: torch.nn.Module,
    accelerator: Accelerator,
    inputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed next-token loss over its labelled tokens, and how many there are.

    `model` is the prepared model (wrapped for distributed runs, or a PEFT model), `inputs`
    what it is called with (no labels)."""
    head = labelled_head(model)
    if head is None:
        return token_losses(model(**inputs).logits, labels)
    hidden = _hidden_states(model, head, inputs)
    next_labels = labels[:, 1:]
    labelled = next_labels != IGNORED_LABEL
    with accelerator.autocast():
        logits = head(hidden[:, :-1][labelled])
    per_token = F.cross_entropy(logits.float(), next_labels[labelled], reduction="none")
    rows = labelled.nonzero(as_tuple=True)[0]
    sums = per_token.new_zeros(labels.shape[0]).index_add(0, rows, per_token)
    return sums, labelled.sum(dim=1)


def mean_token_loss(
    model: torch.nn.Module, accelerator: Accelerator, batch: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """A batch's mean loss per labelled token (what the model's own loss computes)."""
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    sums, counts = row_token_losses(model, accelerator, inputs, batch["labels"])
    return sums.sum() / counts.sum().clamp_min(1)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, from the full logits: the summed next-token loss and the tokens it covers."""
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    per_token = F.cross_entropy(
        shifted_logits.flatten(0, 1),
        shifted_labels.flatten(),
        ignore_index=IGNORED_LABEL,
        reduction="none",
    ).view(shifted_labels.shape)
    return per_token.sum(dim=1), (shifted_labels != IGNORED_LABEL).sum(dim=1)


def labelled_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's LM head, where it can run on the labelled positions alone; else None."""
    if isinstance(model, FSDPModule) or hasattr(model, "_orig_mod"):  # sharded, compiled
        return None
    inner: Any = extract_model_from_parallel(model, keep_torch_compile=False)
    if getattr(getattr(inner, "config", None), "model_type", None) not in LABELLED_HEAD_ARCHITECTURES:
        return None
    head = inner.get_output_embeddings()
    return head if isinstance(head, torch.nn.Module) else None


def _hidden_states(
    model: torch.nn.Module, head: torch.nn.Module, inputs: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """What the model hands its head, for every position; the head itself computes nothing."""
    seen: list[torch.Tensor] = []

    def keep_and_skip(_: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        seen.append(args[0])
        return (args[0][:, :0], *args[1:])

    handle = head.register_forward_pre_hook(keep_and_skip)
    try:
        model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return seen[0]
