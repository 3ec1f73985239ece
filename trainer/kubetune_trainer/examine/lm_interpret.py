"""Which prompt tokens drove a causal LM's response (evaluation.attributions for causal-lm).

A classifier's attributions explain one class's score (interpret.py); a language model's
output is a generated response, so what is explained is the log-probability of that
response. For each sampled validation prompt the fine-tuned model generates its greedy
response, and captum's `LLMAttribution` with `FeatureAblation` replaces one prompt token
at a time by the baseline token (the pad token, else id 0) and measures how far the
response's log-probability falls: a token's attribution is that fall (positive: the token
made the response likelier). Prompts are encoded as training encodes them (no special
tokens); special tokens in the text are not ablated.
Forward passes: one per prompt token and prompt, in one pass over prompt and response
(captum's `forward_in_tokens=False`), so the sample stays small (attributions.sampleSize).
Rank 0 computes them, like the classifier's.

Conversations (data.messagesColumn) are explained at their last trained assistant message:
the prompt is the conversation before it with the chat template's generation prompt, cut
from the tokenized validation row as evaluation by generation cuts it (generation.py), so
the model is asked exactly what it was trained on. A chat prompt is long, and a token of it
says little, so its features are its turns, not its tokens: the runs of tokens between the
template's special tokens (ChatML's <|im_start|> and <|im_end|>), each with its role
header, a run of whitespace joined to the turn before it. A turn is ablated whole (captum's
feature mask), the special tokens never, so a conversation costs one forward pass per turn;
a template without special tokens between turns leaves the prompt as a single feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

import datasets
import torch
from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import AttributionSpec
from kubetune_trainer.training.generation import generate, prompt_and_reference, stop_tokens

METHOD = "feature ablation (captum LLMAttribution): the fall in the response's log-probability"
TURN_METHOD = f"{METHOD}, one conversation turn ablated at a time"


def greedy_response(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int,
) -> torch.Tensor:
    """The model's greedy continuation of `prompt` (token ids, up to and including the first
    end-of-text token)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False, return_tensors="pt")
    ids = ids.to(_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        generated = model.generate(  # type: ignore[operator]
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    response: torch.Tensor = generated[0, ids.shape[1] :]
    eos = tokenizer.eos_token_id
    ends = (response == eos).nonzero() if eos is not None else response[:0]
    return response[: int(ends[0]) + 1] if len(ends) else response


def explain_prompt(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: torch.Tensor,
) -> dict[str, Any]:
    """Each prompt token's attribution to the log-probability of `response` (one example
    of the report)."""
    baseline = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    plain = _AsTrained(tokenizer)
    text = TextTokenInput(prompt, plain, baselines=baseline, skip_tokens=_specials(tokenizer))
    ablation = LLMAttribution(FeatureAblation(model), tokenizer)
    result = ablation.attribute(text, target=response, forward_in_tokens=False)
    scores = result.seq_attr.detach().float().cpu().tolist()
    return {
        "prompt": prompt,
        "response": tokenizer.decode(response, skip_special_tokens=True),
        "responseTokens": int(response.numel()),
        "tokens": [
            {"token": token, "score": score}
            for token, score in zip(result.input_tokens, scores, strict=True)
        ],
    }


def explain_generations(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    spec: AttributionSpec,
    after_prompt: Any,
) -> dict[str, Any]:
    """The attributions section of a causal LM: the first attributions.sampleSize prompts,
    each with its response and its tokens' attributions; `after_prompt` is called after each
    (a heartbeat)."""
    was_training = model.training
    model.eval()
    examples = []
    for prompt in prompts[: spec.sample_size]:
        response = greedy_response(model, tokenizer, prompt, spec.response_tokens)
        if response.numel():
            examples.append(explain_prompt(model, tokenizer, prompt, response))
        after_prompt()
    model.train(was_training)
    return {"kind": "causal-lm", "method": METHOD, "examples": examples}


def prompt_turns(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """The positions of each turn of a chat prompt: the runs of non-special tokens, a run
    that decodes to whitespace only joined to the turn before it (or, first, after it)."""
    special = set(tokenizer.all_special_ids)
    runs: list[list[int]] = []
    for position, token in enumerate(ids):
        if token in special:
            continue
        if runs and runs[-1][-1] == position - 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    turns: list[list[int]] = []
    joining = False  # the last turn is whitespace only so far: the next run joins it
    for run in runs:
        blank = not str(tokenizer.decode([ids[p] for p in run])).strip()
        if turns and (blank or joining):
            turns[-1] += run
            joining = joining and blank
        else:
            turns.append(run)
            joining = blank
    return turns


def explain_turns(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[int],
    turns: Sequence[Sequence[int]],
    response: torch.Tensor,
) -> dict[str, Any]:
    """Each turn's attribution to the log-probability of `response` after the chat prompt
    `prompt` (token ids; `turns` from `prompt_turns`): the fall when the turn's tokens are
    all the baseline token (the pad token, else id 0)."""
    baseline = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    text = TextTokenInput(
        "", _Encoded(tokenizer, prompt), baselines=baseline, skip_tokens=_specials(tokenizer)
    )
    # The interpretable features are the non-special tokens in order; each gets its turn.
    mask = [turn for turn, positions in enumerate(turns) for _ in positions]
    ablation = LLMAttribution(FeatureAblation(model), tokenizer)
    result = ablation.attribute(
        text,
        target=response,
        forward_in_tokens=False,
        feature_mask=torch.tensor([mask], device=_device(model)),
    )
    scores = result.seq_attr.detach().float().cpu().tolist()
    return {
        "prompt": tokenizer.decode(list(prompt)),
        "response": tokenizer.decode(response, skip_special_tokens=True),
        "responseTokens": int(response.numel()),
        "tokens": [
            {
                "token": str(tokenizer.decode([prompt[p] for p in positions])).strip(),
                "score": scores[mask.index(turn)],
            }
            for turn, positions in enumerate(turns)
        ],
    }


def explain_conversations(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    validation: datasets.Dataset,
    spec: AttributionSpec,
    after_prompt: Any,
) -> dict[str, Any]:
    """The attributions section for conversations: the first attributions.sampleSize
    validation conversations with a prompt before their last trained assistant message,
    each with the model's greedy response there and its prompt turns' attributions."""
    was_training = model.training
    model.eval()
    examples = []
    for prompt, reference in _chat_prompts(validation, spec.sample_size):
        turns = prompt_turns(prompt, tokenizer)
        response = _chat_response(model, tokenizer, prompt, reference, spec.response_tokens)
        if turns and response.numel():
            examples.append(explain_turns(model, tokenizer, prompt, turns, response))
        after_prompt()
    model.train(was_training)
    return {"kind": "causal-lm", "method": TURN_METHOD, "features": "turns", "examples": examples}


def _chat_prompts(validation: datasets.Dataset, count: int) -> list[tuple[list[int], list[int]]]:
    """The prompt and reference of the first `count` rows that have both."""
    rows = (validation[row] for row in range(len(validation)))
    pairs = (prompt_and_reference(row["input_ids"], row["labels"]) for row in rows)
    return list(islice((pair for pair in pairs if pair is not None), count))


def _chat_response(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[int],
    reference: list[int],
    max_new_tokens: int,
) -> torch.Tensor:
    """The greedy response to a chat prompt, up to and including its end of turn (the stop
    tokens of evaluation by generation)."""
    stops = stop_tokens(tokenizer, [reference])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
    (tokens,) = generate(
        model, [prompt], max_new_tokens=max_new_tokens, batch_size=1, stop_ids=stops, pad_id=pad
    )
    ends = [position for position, token in enumerate(tokens) if token in stops]
    return torch.tensor(tokens[: ends[0] + 1] if ends else tokens, device=_device(model))


class _Encoded:
    """The tokenizer, encoding any text as the given prompt's token ids (captum's
    TextTokenInput encodes its text; a chat prompt is kept as it was tokenized)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(ids)

    def encode(self, text: str, return_tensors: str | None = None) -> torch.Tensor:
        return torch.tensor([self._ids])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


class _AsTrained:
    """The tokenizer, encoding a prompt as training does (no special tokens: captum's
    TextTokenInput would otherwise end the prompt with an end-of-text token)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str, return_tensors: str | None = None) -> Any:
        return self._tokenizer.encode(text, add_special_tokens=False, return_tensors=return_tensors)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _specials(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return [int(token) for token in tokenizer.all_special_ids]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
