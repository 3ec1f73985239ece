"""Attributions of a causal LM's response to its prompt tokens (captum's feature ablation),
checked against the response log-probability recomputed with each token ablated."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from kubetune_trainer.config import AttributionSpec
from kubetune_trainer.examine.lm_interpret import explain_generations, greedy_response
from tests.tiny import make_tiny_causal_lm

WORDS = "the quick brown fox jumps over a lazy dog and runs home"


@pytest.fixture(scope="module")
def tiny_lm(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    path = make_tiny_causal_lm(tmp_path_factory.mktemp("lm"), [WORDS], seed=3)
    return GPT2LMHeadModel.from_pretrained(path).eval(), PreTrainedTokenizerFast.from_pretrained(
        path
    )


def response_log_prob(model: GPT2LMHeadModel, prompt: list[int], response: list[int]) -> float:
    """log P(response | prompt), from one plain forward pass."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    start = len(prompt)
    return float(sum(log_probs[start + i - 1, token] for i, token in enumerate(response)))


def test_each_prompt_token_is_scored_by_the_fall_of_the_response_log_prob(tiny_lm: tuple) -> None:
    model, tokenizer = tiny_lm
    prompts = ["the quick brown fox", "a lazy dog runs", "the fox and the dog"]
    spec = AttributionSpec(sample_size=2, response_tokens=4)
    beats = []
    result = explain_generations(model, tokenizer, prompts, spec, lambda: beats.append(1))
    assert result["kind"] == "causal-lm"
    assert len(result["examples"]) == 2
    assert len(beats) == 2
    for example, prompt in zip(result["examples"], prompts, strict=False):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # as training encodes
        words = prompt.split()
        assert [t["token"] for t in example["tokens"]] == words
        response = greedy_response(model, tokenizer, prompt, 4).tolist()
        assert example["responseTokens"] == len(response) >= 1
        full = response_log_prob(model, ids, response)
        falls = []
        for position in range(len(ids)):
            ablated = ids.copy()
            ablated[position] = tokenizer.pad_token_id
            falls.append(full - response_log_prob(model, ablated, response))
        scores = [t["score"] for t in example["tokens"]]
        assert scores == pytest.approx(falls, abs=1e-4)
        # the token with the largest attribution is the one whose ablation costs most
        assert max(range(len(scores)), key=scores.__getitem__) == max(
            range(len(falls)), key=falls.__getitem__
        )


def test_the_greedy_response_stops_at_the_end_of_text(tiny_lm: tuple) -> None:
    model, tokenizer = tiny_lm
    response = greedy_response(model, tokenizer, "the quick brown fox", 12)
    eos = tokenizer.eos_token_id
    ends = (response == eos).nonzero()
    assert len(ends) == 0 or int(ends[0]) == len(response) - 1
