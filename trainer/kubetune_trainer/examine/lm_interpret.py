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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import AttributionSpec

METHOD = "feature ablation (captum LLMAttribution): the fall in the response's log-probability"


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
