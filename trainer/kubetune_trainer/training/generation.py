"""Evaluation by generation (evaluation.generation): what a causal LM answers, not only
how likely it finds the answers.

A seeded sample of validation rows is drawn once. Each row's prompt and reference are cut
from its tokenized form, so that both formats work alike and the model is asked exactly
what it was trained on: the reference is the row's last run of trained tokens (the
response of a prompt/response row; the last trained assistant message of a conversation,
with its end-of-turn marker), the prompt is everything before it (for a conversation, the
dialogue up to that message rendered with the chat template and its generation prompt).

Completions are greedy, at most maxNewTokens long, and end at the end of text or at the
special tokens the references hold (a chat template's end of turn). Prompts are
generated in batches, left-padded so that every row's next token follows its own prompt;
each process completes its share of the sample, and the completions are gathered on every
process, which all score them alike (generation_metrics.py), so that the best checkpoint
and early stopping agree everywhere. The recipe asks for the metrics at every evaluation,
and for a first pass on the starting model before training; the completions of the best
evaluation and of that first pass are kept in the training state (so a resumed run keeps
them) and become report.json's `generation` section: the prompts with their reference, and
their completions before and after fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import GenerationConfig, PreTrainedTokenizerBase

from kubetune_trainer.checkpoints import checkpoint_name
from kubetune_trainer.config import GenerationSpec, TrainingConfig
from kubetune_trainer.data import IGNORED_LABEL, DataError, PreparedData
from kubetune_trainer.generation_metrics import generation_metrics, row_scores
from kubetune_trainer.training.training_state import TrainingState


@dataclass(frozen=True)
class Sample:
    """The validation rows that are completed, in the order they were drawn."""

    rows: list[int]
    """Each one's index in the validation rows."""
    prompts: list[list[int]]
    """Token ids the model continues."""
    references: list[str]
    """The responses the completions are scored against, as text."""
    prompt_texts: list[str]
    """The prompts as text (special tokens shown), for the report."""
    stop_ids: list[int]
    """Tokens that end a completion: the end of text, and the special tokens of the
    references (a chat template's end of turn)."""
    pad_id: int


def prompt_and_reference(
    input_ids: Sequence[int], labels: Sequence[int]
) -> tuple[list[int], list[int]] | None:
    """A tokenized row's prompt (the tokens before its last run of trained tokens) and
    reference (that run); None for a row with no trained token or no prompt before it."""
    trained = np.flatnonzero(np.asarray(labels) != IGNORED_LABEL)
    if trained.size == 0:
        return None
    end = int(trained[-1]) + 1
    start = end - 1
    while start > 0 and labels[start - 1] != IGNORED_LABEL:
        start -= 1
    if start == 0:
        return None
    return list(input_ids[:start]), list(input_ids[start:end])


def draw_sample(
    spec: GenerationSpec, validation: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
) -> Sample:
    """`spec.samples` validation rows with a prompt and a reference, drawn with `spec.seed`;
    a DataError when the validation rows cannot give that many."""
    available = len(validation)
    if spec.samples > available:
        raise DataError(
            f"evaluation.generation.samples: {spec.samples} is more than the {available} "
            f"validation rows; lower it to at most {available}, or add validation rows"
        )
    pairs: list[tuple[int, list[int], list[int]]] = []
    for row in np.random.default_rng(spec.seed).permutation(available).tolist():
        found = prompt_and_reference(validation[row]["input_ids"], validation[row]["labels"])
        if found is not None:
            pairs.append((row, *found))
        if len(pairs) == spec.samples:
            return _sample(pairs, tokenizer)
    raise DataError(
        f"evaluation.generation.samples: {spec.samples} asked, but only {len(pairs)} of the "
        f"{available} validation rows keep both a prompt and a response within "
        "data.maxLength; lower samples or raise data.maxLength"
    )


def _sample(
    pairs: list[tuple[int, list[int], list[int]]], tokenizer: PreTrainedTokenizerBase
) -> Sample:
    stop_ids = stop_tokens(tokenizer, [reference for _, _, reference in pairs])
    end_of_text = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    pad_id = tokenizer.pad_token_id
    return Sample(
        rows=[row for row, _, _ in pairs],
        prompts=[prompt for _, prompt, _ in pairs],
        references=[as_text(tokenizer, reference, stop_ids) for _, _, reference in pairs],
        prompt_texts=[str(tokenizer.decode(prompt)) for _, prompt, _ in pairs],
        stop_ids=stop_ids,
        pad_id=int(pad_id if pad_id is not None else (end_of_text or [0])[0]),
    )


def stop_tokens(
    tokenizer: PreTrainedTokenizerBase, references: Sequence[Sequence[int]]
) -> list[int]:
    """The tokens that end a completion: the end of text, and the special tokens that the
    references hold (a chat template's end of turn is special; what follows it, a newline,
    may not be)."""
    special = set(tokenizer.all_special_ids)
    end_of_text = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    ends = {token for reference in references for token in reference if token in special}
    return sorted({*end_of_text, *ends})


def as_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Token ids up to the first stop token, as text without special tokens or outer spaces."""
    stops = [position for position, token in enumerate(ids) if token in stop_ids]
    kept = list(ids[: stops[0]] if stops else ids)
    return str(tokenizer.decode(kept, skip_special_tokens=True)).strip()


def left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of `prompts`, padded on the left to the longest."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_ids: Sequence[int],
    pad_id: int,
    batch_done: Callable[[], None] = lambda: None,
) -> list[list[int]]:
    """Greedy continuations of `prompts` (new token ids only, padding included), generated
    `batch_size` prompts at a time; the model's train/eval mode is restored after."""
    device = next(model.parameters()).device
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
    )
    was_training = model.training
    model.eval()
    completions: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_padded(prompts[start : start + batch_size], pad_id, device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        completions += out[:, ids.shape[1] :].cpu().tolist()
        batch_done()
    model.train(was_training)
    return completions


class GenerationEvaluation:
    """evaluation.generation for one run: its sample, its passes and what they keep; inert
    (no metrics, nothing kept) when the config has no generation section."""

    def __init__(
        self,
        spec: GenerationSpec | None,
        sample: Sample | None,
        tokenizer: PreTrainedTokenizerBase,
        accelerator: Accelerator,
        batch_done: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.sample = sample
        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.batch_done = batch_done
        self.latest: tuple[dict[str, float], list[str]] | None = None
        """The last pass's metrics and completions."""

    def metrics(self, model: torch.nn.Module) -> dict[str, float]:
        """exactMatch, tokenF1 and rougeL of the model's completions now ({} when inert)."""
        if self.sample is None:
            return {}
        completions = self._completions(model)
        scores = [
            row_scores(completion, reference)
            for completion, reference in zip(completions, self.sample.references, strict=True)
        ]
        self.latest = (generation_metrics(scores), completions)
        return self.latest[0]

    def before(self, model: torch.nn.Module, state: TrainingState) -> None:
        """The pass on the starting model, once, before the first training step."""
        if self.sample is None or state.step != 0 or state.generation is not None:
            return
        self.metrics(model)
        state.generation = self._kept(None, "before", {})

    def keep_if_best(self, state: TrainingState) -> None:
        """Keep the last pass's completions when its evaluation is the best so far (the
        model that is saved), in the training state."""
        if self.latest is None or state.best_checkpoint != checkpoint_name(state.step):
            return
        where = {"step": state.step, "checkpoint": state.best_checkpoint}
        state.generation = self._kept(state.generation, "after", where)

    def _kept(
        self, kept: dict[str, Any] | None, when: str, where: dict[str, Any]
    ) -> dict[str, Any]:
        """The report's table (`kept`, or a new one) with the last pass as its `when` column
        (before or after) and its metrics."""
        assert self.spec is not None
        assert self.sample is not None
        assert self.latest is not None
        metrics, completions = self.latest
        table = kept or {
            "samples": len(self.sample.rows),
            "maxNewTokens": self.spec.max_new_tokens,
            "before": None,
            "after": None,
            "rows": [
                {
                    "row": row,
                    "prompt": prompt,
                    "reference": reference,
                    "before": None,
                    "after": None,
                }
                for row, prompt, reference in zip(
                    self.sample.rows, self.sample.prompt_texts, self.sample.references, strict=True
                )
            ],
        }
        rows = [{**row, when: text} for row, text in zip(table["rows"], completions, strict=True)]
        return {**table, when: {**where, "metrics": metrics}, "rows": rows}

    def _completions(self, model: torch.nn.Module) -> list[str]:
        """Every sampled prompt's completion as text: each process generates its share."""
        assert self.spec is not None
        assert self.sample is not None
        processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = list(range(len(self.sample.prompts)))[rank::processes]
        tokens = generate(
            self.accelerator.unwrap_model(model),
            [self.sample.prompts[position] for position in mine],
            max_new_tokens=self.spec.max_new_tokens,
            batch_size=self.spec.batch_size,
            stop_ids=self.sample.stop_ids,
            pad_id=self.sample.pad_id,
            batch_done=self.batch_done,
        )
        texts = [as_text(self.tokenizer, ids, self.sample.stop_ids) for ids in tokens]
        gathered: list[tuple[int, str]] = gather_object(list(zip(mine, texts, strict=True)))
        return [text for _, text in sorted(gathered)]


def generation_evaluation(
    config: TrainingConfig,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    batch_done: Callable[[], None],
) -> GenerationEvaluation:
    """The run's evaluation by generation: its sample drawn now (a DataError when the
    validation rows cannot give it), or an inert one without evaluation.generation."""
    spec = config.evaluation.generation
    sample = None if spec is None else draw_sample(spec, data.validation, tokenizer)
    return GenerationEvaluation(spec, sample, tokenizer, accelerator, batch_done)
