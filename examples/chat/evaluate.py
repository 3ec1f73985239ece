"""Score a model on the chat example's held-out prompts: before and after fine-tuning.

A run's validation loss says the model fits the training distribution better; it does
not say the model now does the task. This asks it: greedy generation on the held-out
prompts of data/test.jsonl (names, jobs, cities and wordings no training row has), with
the model's own chat template, and two scores per model:

- exact match: the answer is the expected JSON line, character for character;
- right shape: the answer is one JSON object with the keys name, age, job, city in that
  order and the age a number (or null), whatever the values (the format learnt, apart
  from copying each word right);
- values right: the answer parses as JSON with the expected values, however laid out.

With --preferences FILE (preference rows: messages, chosen, rejected) it also gives the
share of rows where the model finds the chosen answer likelier than the rejected one
(summed log-probabilities of the answer's tokens): a DPO run's reward accuracy measures
the same preference, relative to its reference model.

    python examples/chat/evaluate.py base runs/chat-sft/merged
    python examples/chat/evaluate.py base runs/chat-sft/model    # the adapter on the base

`base` is make_model.py's converted SmolLM2; any other argument is a model folder (or a
hub model id), and a folder with adapter_config.json is a LoRA adapter, put on the base
it names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

Message = dict[str, str]
"""One {role, content} message of a conversation."""

TEST = Path(__file__).parent / "data" / "test.jsonl"
MAX_NEW_TOKENS = 48
BATCH = 10


def load(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (folder / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def held_out(path: Path) -> list[tuple[list[Message], str]]:
    """(the conversation up to the answer, the expected answer) per test row."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        out.append((messages[:-1], messages[-1]["content"]))
    return out


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[list[Message]]) -> list[str]:
    answers = []
    for start in range(0, len(prompts), BATCH):
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + BATCH]
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(
            **batch,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = output[:, batch["input_ids"].shape[1] :]
        answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


@torch.no_grad()
def answer_logprob(model: Any, tokenizer: Any, prompt: list[Message], answer: str) -> float:
    """log p(answer | prompt) under the chat template, summed over the answer's tokens."""
    context = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ids = tokenizer(context + answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    logprobs = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    return float(logprobs[start - 1 :].gather(1, targets[start - 1 :, None]).sum())


def preference_accuracy(model: Any, tokenizer: Any, path: Path) -> float:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    wins = 0
    for row in rows:
        chosen, rejected = (row[key][0]["content"] for key in ("chosen", "rejected"))
        chosen_lp = answer_logprob(model, tokenizer, row["messages"], chosen)
        wins += chosen_lp > answer_logprob(model, tokenizer, row["messages"], rejected)
    return wins / len(rows)


def values_right(answer: str, expected: str) -> bool:
    try:
        return bool(json.loads(answer) == json.loads(expected))
    except json.JSONDecodeError:
        return False


def right_shape(answer: str) -> bool:
    try:
        parsed = json.loads(answer)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(parsed, dict)
        and list(parsed) == ["name", "age", "job", "city"]
        and (parsed["age"] is None or isinstance(parsed["age"], int))
    )


def score(
    folder: Path, rows: list[tuple[list[Message], str]], preferences: Path | None
) -> dict[str, Any]:
    model, tokenizer = load(folder)
    answers = generate(model, tokenizer, [prompt for prompt, _ in rows])
    prefers = preference_accuracy(model, tokenizer, preferences) if preferences else None
    expected = [answer for _, answer in rows]
    wrong = [a for a, e in zip(answers, expected, strict=True) if a != e]
    return {
        "model": str(folder),
        "exactMatch": 1 - len(wrong) / len(rows),
        "rightShape": sum(map(right_shape, answers)) / len(rows),
        "valuesRight": sum(map(values_right, answers, expected)) / len(rows),
        "firstWrong": wrong[0] if wrong else None,
        "prefersChosen": prefers,
    }


def folder(argument: str) -> Path:
    if argument != "base":
        return Path(argument)
    from make_model import converted_model  # beside this script

    return converted_model()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=folder, help="base, or model/adapter folders")
    parser.add_argument("--test", type=Path, default=TEST)
    parser.add_argument("--preferences", type=Path, help="preference rows to score")
    args = parser.parse_args()
    rows = held_out(args.test)
    print(f"{len(rows)} held-out prompts; the first: {rows[0][0][-1]['content']!r}")
    print(f"expects {rows[0][1]}")
    for model in args.models:
        result = score(model, rows, args.preferences)
        print(
            f"{result['model']}: exact match {result['exactMatch']:.0%}, "
            f"right shape {result['rightShape']:.0%}, values right {result['valuesRight']:.0%}; "
            f"first wrong answer: {result['firstWrong']!r}"
        )
        if result["prefersChosen"] is not None:
            print(f"  prefers the chosen answer in {result['prefersChosen']:.0%} of the rows")


if __name__ == "__main__":
    main()
