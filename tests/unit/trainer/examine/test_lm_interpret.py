"""Attributions of a causal LM's response to its prompt tokens (captum's feature ablation),
checked against the response log-probability recomputed with each token ablated; for a
conversation, with each turn ablated."""

from __future__ import annotations

from typing import Any

import datasets
import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from kubetune_trainer.config import AttributionSpec
from kubetune_trainer.data.conversations import CHATML_TEMPLATE, render_conversation
from kubetune_trainer.examine.lm_interpret import (
    explain_conversations,
    explain_generations,
    greedy_response,
    prompt_turns,
)
from kubetune_trainer.training.generation import prompt_and_reference
from tests.tiny import make_tiny_causal_lm, make_tiny_chat_lm

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


CHAT_WORDS = "be kind hi how are you fine thanks bye hello"


@pytest.fixture(scope="module")
def tiny_chat(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    path = make_tiny_chat_lm(tmp_path_factory.mktemp("chat"), [CHAT_WORDS], CHATML_TEMPLATE)
    return GPT2LMHeadModel.from_pretrained(path).eval(), PreTrainedTokenizerFast.from_pretrained(
        path
    )


def message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def greedy(model: GPT2LMHeadModel, prompt: list[int], stop: int, most: int) -> list[int]:
    """The greedy continuation, token by token, up to and including `stop`."""
    response: list[int] = []
    while len(response) < most and (not response or response[-1] != stop):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, -1]
        response.append(int(logits.argmax()))
    return response


def test_a_conversation_is_explained_turn_by_turn_at_its_last_trained_answer(
    tiny_chat: tuple,
) -> None:
    model, tokenizer = tiny_chat
    conversations = [
        [
            message("system", "be kind"),
            message("user", "hi how are you"),
            message("assistant", "fine thanks"),
            message("user", "bye"),
            message("assistant", "bye"),
        ],
        [message("user", "hello"), message("assistant", "hi")],
    ]
    rendered = [render_conversation(tokenizer, c, None) for c in conversations]
    validation = datasets.Dataset.from_dict(
        {"input_ids": [ids for ids, _ in rendered], "labels": [labels for _, labels in rendered]}
    )
    beats: list[int] = []
    spec = AttributionSpec(sample_size=2, response_tokens=4)
    result = explain_conversations(model, tokenizer, validation, spec, lambda: beats.append(1))
    assert (result["kind"], result["features"], len(beats)) == ("causal-lm", "turns", 2)
    first = result["examples"][0]
    # the prompt ends with the generation prompt of the last answer: its header is a turn
    assert [t["token"] for t in first["tokens"]] == [
        "system be kind",
        "user hi how are you",
        "assistant fine thanks",
        "user bye",
        "assistant",
    ]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for example, (ids, labels) in zip(result["examples"], rendered, strict=True):
        found = prompt_and_reference(ids, labels)
        assert found is not None
        prompt = found[0]
        assert example["prompt"] == tokenizer.decode(prompt)
        response = greedy(model, prompt, end_of_turn, 4)
        assert example["responseTokens"] == len(response)
        full = response_log_prob(model, prompt, response)
        falls = []
        for turn in prompt_turns(prompt, tokenizer):
            ablated = [tokenizer.pad_token_id if p in turn else t for p, t in enumerate(prompt)]
            falls.append(full - response_log_prob(model, ablated, response))
        assert max(abs(fall) for fall in falls) > 1e-3  # the turns do move the response
        assert [t["score"] for t in example["tokens"]] == pytest.approx(falls, abs=1e-4)


SPACED_WORDS = {2: "\n", 3: "user", 4: "hi", 5: "assistant"}


class SpacedTokenizer:
    """Ids 0 and 1 are special; the others decode to SPACED_WORDS (2: a newline)."""

    all_special_ids = (0, 1)

    def decode(self, ids: list[int]) -> str:
        return "".join(SPACED_WORDS[i] for i in ids)


def test_turns_are_the_runs_between_special_tokens_with_whitespace_joined() -> None:
    tokenizer: Any = SpacedTokenizer()
    # <s> user hi </s> \n <s> assistant \n: the newline after </s> joins the first turn
    assert prompt_turns([0, 3, 4, 1, 2, 0, 5, 2], tokenizer) == [[1, 2, 4], [6, 7]]
    # a leading newline joins the turn after it
    assert prompt_turns([2, 0, 3, 4], tokenizer) == [[0, 2, 3]]
    assert prompt_turns([0, 1], tokenizer) == []
