"""The LM head on the labelled positions only: the same losses and gradients as the full
logits, with the head computing only the positions whose next token carries a label."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from kubetune_trainer.data import IGNORED_LABEL
from kubetune_trainer.training.token_losses import (
    labelled_head,
    mean_token_loss,
    row_token_losses,
    token_losses,
)

VOCABULARY = 61


def gpt2() -> PreTrainedModel:
    torch.manual_seed(0)
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    config = GPT2Config(vocab_size=VOCABULARY, n_embd=32, n_layer=2, n_head=2, **no_dropout)
    return GPT2LMHeadModel(config)


def llama() -> PreTrainedModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCABULARY,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def batch() -> dict[str, torch.Tensor]:
    """Two rows: a prompt whose tokens carry no label, then labelled tokens, then padding."""
    torch.manual_seed(1)
    input_ids = torch.randint(1, VOCABULARY, (2, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    labels = input_ids.clone()
    labels[0, :4] = IGNORED_LABEL
    labels[1, :2] = IGNORED_LABEL
    labels[1, 6:] = IGNORED_LABEL
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def head_inputs(model: torch.nn.Module) -> list[tuple[int, ...]]:
    """The shapes the model's LM head is called with, from here on."""
    shapes: list[tuple[int, ...]] = []
    head = model.get_output_embeddings()  # type: ignore[operator]
    head.register_forward_hook(lambda _m, args, _o: shapes.append(tuple(args[0].shape)))
    return shapes


def inputs_of(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value for name, value in rows.items() if name != "labels"}


@pytest.mark.parametrize("build", [gpt2, llama])
def test_the_losses_and_gradients_equal_the_full_logits_with_the_head_on_labelled_tokens(
    build: Any,
) -> None:
    rows = batch()
    full = build()
    full.train()
    expected_sums, expected_counts = token_losses(full(**inputs_of(rows)).logits, rows["labels"])
    full(**rows).loss.backward()

    model = build()
    model.train()
    shapes = head_inputs(model)
    sums, counts = row_token_losses(model, Accelerator(cpu=True), inputs_of(rows), rows["labels"])
    loss = mean_token_loss(model, Accelerator(cpu=True), rows)
    loss.backward()

    assert counts.tolist() == expected_counts.tolist() == [5, 4]
    assert sums.tolist() == pytest.approx(expected_sums.tolist(), abs=1e-5)
    assert loss.item() == pytest.approx(float(expected_sums.sum() / 9), abs=1e-6)
    # The head ran on the 9 labelled positions (and on an empty slice inside the forward),
    # once for each call, never on all 16.
    assert shapes == [(2, 0, 32), (9, 32)] * 2
    gradients = dict(full.named_parameters())
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad == pytest.approx(gradients[name].grad, abs=1e-5), name


def test_a_lora_model_with_its_adapters_on_and_off_scores_as_the_full_logits() -> None:
    rows = batch()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    model = get_peft_model(llama(), lora).eval()
    shapes = head_inputs(model)
    scores = []
    for adapters in (model.disable_adapter(), contextlib.nullcontext()):
        with adapters, torch.no_grad():
            expected, _ = token_losses(model(**inputs_of(rows)).logits, rows["labels"])
            sums, _ = row_token_losses(
                model, Accelerator(cpu=True), inputs_of(rows), rows["labels"]
            )
        assert sums.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
        scores.append(sums)
    assert shapes.count((9, 32)) == 2
    assert (scores[0] - scores[1]).abs().max() > 1e-3  # the adapters took part


def test_a_model_that_changes_its_logits_after_the_head_gets_the_full_logits() -> None:
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=VOCABULARY,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=5.0,
    )
    model = Gemma2ForCausalLM(config).eval()
    rows = batch()
    shapes = head_inputs(model)
    with torch.no_grad():
        sums, _ = row_token_losses(model, Accelerator(cpu=True), inputs_of(rows), rows["labels"])
        expected, _ = token_losses(model(**inputs_of(rows)).logits, rows["labels"])
    assert labelled_head(model) is None
    assert shapes == [(2, 9, 32), (2, 9, 32)]
    assert sums.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
