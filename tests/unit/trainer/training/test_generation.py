"""Evaluation by generation: prompts and references cut from tokenized rows, the seeded
sample and its refusals, and batched left-padded greedy generation equal to generating
each prompt alone, on a tiny random GPT-2."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune_trainer.config import GenerationSpec
from kubetune_trainer.data import IGNORED_LABEL, DataError
from kubetune_trainer.training.generation import (
    as_text,
    draw_sample,
    generate,
    prompt_and_reference,
)
from tests.tiny import make_tiny_causal_lm

WORDS = [f"w{i}" for i in range(30)]
X = IGNORED_LABEL


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("gen") / "gpt", [" ".join(WORDS)])


def test_the_reference_is_the_last_run_of_trained_tokens() -> None:
    # prompt/response row: prompt 3 tokens, response 2 + end of text
    assert prompt_and_reference([5, 6, 7, 8, 9, 2], [X, X, X, 8, 9, 2]) == ([5, 6, 7], [8, 9, 2])
    # a conversation with two trained answers: the last one, the first stays in the prompt
    ids = [1, 10, 11, 12, 1, 13, 14, 12]
    assert prompt_and_reference(ids, [X, X, 11, 12, X, X, 14, 12]) == (ids[:6], [14, 12])
    assert prompt_and_reference([5, 6], [X, X]) is None  # response cut off by maxLength
    assert prompt_and_reference([5, 6], [5, 6]) is None  # no prompt before it


def rows(tokenizer: AutoTokenizer, pairs: list[tuple[str, str]]) -> datasets.Dataset:
    ids, labels = [], []
    for prompt, response in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + r)
        labels.append([X] * len(p) + r)
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})


def test_the_sample_is_seeded_and_its_texts_drop_special_tokens(gpt: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gpt)
    pairs = [(f"w{i} w{i + 1}", f"W{i + 2} w{i + 3}") for i in range(10)]
    validation = rows(tokenizer, pairs)
    sample = draw_sample(GenerationSpec(samples=4, seed=7), validation, tokenizer)
    again = draw_sample(GenerationSpec(samples=4, seed=7), validation, tokenizer)
    other = draw_sample(GenerationSpec(samples=4, seed=8), validation, tokenizer)
    assert sample == again
    assert sample.rows != other.rows
    assert len(set(sample.rows)) == 4
    for row, prompt, reference in zip(sample.rows, sample.prompts, sample.references, strict=True):
        assert reference == pairs[row][1].lower()  # the word-level tokenizer lower-cases
        assert tokenizer.decode(prompt) == pairs[row][0]
    assert sample.stop_ids == [tokenizer.eos_token_id]
    assert (
        as_text(tokenizer, [*prompt, tokenizer.eos_token_id, *prompt], sample.stop_ids)
        == (pairs[sample.rows[-1]][0])
    )


def test_a_sample_larger_than_the_validation_rows_is_refused(gpt: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gpt)
    validation = rows(tokenizer, [("w1", "w2"), ("w3", "w4"), ("w5", "w6")])
    with pytest.raises(DataError, match=r"evaluation.generation.samples: 4 is more than the 3"):
        draw_sample(GenerationSpec(samples=4), validation, tokenizer)
    cut = validation.map(lambda row: {"labels": [X] * len(row["labels"])}).select([0, 1])
    with pytest.raises(DataError, match=r"only 0 of the 2 validation rows keep both"):
        draw_sample(GenerationSpec(samples=1), cut, tokenizer)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(gpt: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(gpt)
    tokenizer = AutoTokenizer.from_pretrained(gpt)
    torch.manual_seed(0)
    prompts = [
        torch.randint(5, len(tokenizer), (length,)).tolist() for length in (1, 7, 3, 12, 5, 2)
    ]
    stop, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    model.train()
    batched = generate(model, prompts, max_new_tokens=8, batch_size=4, stop_ids=stop, pad_id=pad)
    assert model.training  # restored
    alone = [
        generate(model, [p], max_new_tokens=8, batch_size=1, stop_ids=stop, pad_id=pad)[0]
        for p in prompts
    ]
    assert [as_text(tokenizer, ids, stop) for ids in batched] == [
        as_text(tokenizer, ids, stop) for ids in alone
    ]
    greedy = []  # and both are the argmax continuation, computed step by step here
    with torch.no_grad():
        model.eval()
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(8):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            greedy.append(ids[len(prompt) :])
    assert [as_text(tokenizer, ids, stop) for ids in alone] == [
        as_text(tokenizer, ids, stop) for ids in greedy
    ]
    assert len({tuple(ids) for ids in greedy}) > 1  # the prompts lead to different texts


def test_a_special_token_inside_the_references_ends_the_completions(gpt: Path) -> None:
    """ChatML's turn ends with <|im_end|> and a newline: the special token stops generation
    and cuts the reference, wherever it lies in it."""
    tokenizer = AutoTokenizer.from_pretrained(gpt)
    w = tokenizer.convert_tokens_to_ids(["w1", "w2", "w3"])
    end_of_turn = tokenizer.mask_token_id  # a special token that is not the end of text
    validation = datasets.Dataset.from_dict(
        {"input_ids": [[w[0], w[1], end_of_turn, w[2]]], "labels": [[X, w[1], end_of_turn, w[2]]]}
    )
    sample = draw_sample(GenerationSpec(samples=1), validation, tokenizer)
    assert sample.stop_ids == sorted([tokenizer.eos_token_id, end_of_turn])
    assert sample.references == ["w2"]
    assert sample.prompts == [[w[0]]]
