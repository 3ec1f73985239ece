"""Conversational preference rows (data.messagesColumn with training.objective dpo): each
answer rendered after its prompt with the chat template, the loss on the answer only, and
the rows that cannot be rendered counted by malformedConversations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import IGNORED_LABEL, DataError, prepare_data
from tests.tiny import make_chat_tokenizer

WORDS = ["hi", "how", "are", "you", "fine", "thanks", "go", "away", "be", "brief", "well"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return make_chat_tokenizer(WORDS)


def said(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def row(prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "prompt": [said("system", "be brief"), said("user", prompt)],
        "chosen": [said("assistant", chosen)],
        "rejected": [said("assistant", rejected)],
    }


GOOD = [row("how are you", "fine thanks", "go away"), row("hi", "hi how are you", "go away")]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config_of(train: Path, validation: Path, **quality: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": "unused", "task": "causal-lm"},
            "data": {
                "train": {"source": str(train)},
                "validation": {"source": str(validation)},
                "messagesColumn": "prompt",
                "chatTemplate": "chatml",
                "quality": {"duplicates": {"mode": "warn"}, "leakage": {"mode": "warn"}} | quality,
            },
            "training": {"objective": "dpo", "batchSize": 2},
        },
        by_name=False,
    )


def matched(prepared: Any, rule: str) -> dict[str, int]:
    return {r.split: r.matched for r in prepared.quality.results if r.rule == rule}


def test_each_answer_is_rendered_after_its_prompt_and_only_the_answer_is_learnt(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", GOOD * 3)
    validation = write_jsonl(tmp_path / "validation.jsonl", GOOD)
    prepared = prepare_data(config_of(train, validation), tokenizer)
    first = prepared.train[0]
    for side, answer in (("chosen", "fine thanks"), ("rejected", "go away")):
        ids, labels = first[f"{side}_input_ids"], first[f"{side}_labels"]
        text = tokenizer.decode(ids)
        assert text.startswith("<|im_start|> system")
        assert text.endswith(f"<|im_start|> assistant {answer} <|im_end|>")
        learnt = [token for token, label in zip(ids, labels, strict=True) if label != -100]
        assert tokenizer.decode(learnt).split()[:2] == answer.split()
        assert labels[: len(labels) - len(learnt)] == [IGNORED_LABEL] * (len(ids) - len(learnt))
    assert prepared.train_texts[0] == "system: be brief\nuser: how are you"


def test_rows_that_cannot_be_rendered_are_malformed_conversations_with_counts(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    not_assistant = {**GOOD[0], "rejected": [said("user", "go away")]}
    not_a_list = {**GOOD[1], "prompt": "how are you"}
    same = row("hi", "fine", "fine")
    train = write_jsonl(tmp_path / "train.jsonl", GOOD * 6 + [not_assistant, not_a_list, same])
    validation = write_jsonl(tmp_path / "validation.jsonl", GOOD * 2)
    dropping = config_of(train, validation, malformedConversations={"mode": "drop"})
    prepared = prepare_data(dropping, tokenizer)
    assert matched(prepared, "malformedConversations") == {"train": 2, "validation": 0}
    assert matched(prepared, "identicalPreferences") == {"train": 1, "validation": 0}
    assert prepared.rows["train_out"] == 12
    with pytest.raises(DataError) as refused:  # fail is the rule's default
        prepare_data(config_of(train, validation), tokenizer)
    message = str(refused.value)
    assert message.startswith("data.quality.malformedConversations: ")
    assert "has 2 rows that cannot be trained on (data rows 13, 14; the first: " in message
    assert "data.rejectedColumn: not a list of assistant messages" in message


def test_a_missing_answer_column_names_its_field(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"]} for r in GOOD * 3]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(tmp_path / "validation.jsonl", rows)
    with pytest.raises(DataError) as refused:
        prepare_data(config_of(train, validation), tokenizer)
    assert str(refused.value).startswith("data.rejectedColumn: column 'rejected' is not in ")
