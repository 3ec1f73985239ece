"""Conversational preference rows (training.objective dpo with data.messagesColumn): TRL's
conversational preference format.

Each row holds a prompt conversation in data.messagesColumn (OpenAI-format messages, as
conversations.py reads them) and, in data.chosenColumn and data.rejectedColumn, the
assistant's preferred and worse answers, each a list of assistant messages. Each answer is
rendered after its prompt with the chat template, and only the answer's tokens (with the
template's end-of-turn marker) carry labels: the prompt's own assistant messages are
context, never trained on.

Every file is rendered as it is read, and a row that cannot be (a prompt that is not a
list of messages, an answer that is not a list of assistant messages, a template that
fails) is data.quality.malformedConversations', counted like the other per-file rules.
The rest of the rows then go the way of text preference rows (preferences.py): the rules
see the prompt as "role: content" lines and each answer's text, so missingValues counts a
blank answer, identicalPreferences two equal ones, and duplicates, leakage, empty and
garbage compare prompts; the length rule counts the tokens of the longer rendered answer
with its prompt, which data.maxLength truncates.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import datasets
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import DataSource, TrainingConfig
from kubetune_trainer.data.columns import check_columns
from kubetune_trainer.data.conversations import (
    ConversationError,
    chat_template,
    parse_conversation,
    render_conversation,
)
from kubetune_trainer.data.language_model import CheckedRows, checked_rows
from kubetune_trainer.data.loading import read_source
from kubetune_trainer.data.preferences import TOKEN_COLUMNS, preference_rows
from kubetune_trainer.data.prepared import PreparedData
from kubetune_trainer.data.quality import RuleResult
from kubetune_trainer.data.rows import Rows, row_count
from kubetune_trainer.data.screening import settle
from kubetune_trainer.data.token_budget import preference_tokens, run_tokens, truncated

PROMPT_TEXT = "kubetune:prompt"
CHOSEN_TEXT = "kubetune:chosen"
REJECTED_TEXT = "kubetune:rejected"
"""The texts the rules read: the prompt as "role: content" lines, each answer's content."""
_PROBLEM = "kubetune:problem"
"""Why a row cannot be trained on; null for those that can."""
_RULE = "malformedConversations"
SIDES = ("chosen", "rejected")


class _Rendered(NamedTuple):
    """One row: the texts the rules read, each answer's untruncated tokens, or a problem."""

    texts: tuple[str, str, str]
    tokens: tuple[list[int], list[int], list[int], list[int]]
    problem: str | None


def prepare_conversational_preference_data(
    config: TrainingConfig, tokenizer: PreTrainedTokenizerBase
) -> PreparedData:
    """Load, check, render, split and tokenize the conversational preference rows."""
    template = chat_template(tokenizer, config.data.chat_template)

    def read(source: DataSource, field: str, split: str) -> tuple[Rows, list[RuleResult]]:
        rows = read_source(source, field)
        check_columns(rows, _columns(config))
        return _settle_malformed(_with_renderings(rows, config, tokenizer, template), split, config)

    on_texts = _on_texts(config)
    checked = checked_rows(on_texts, tokenizer, [], read=read, token_counts=_longer_answer)
    return _prepared(checked, on_texts)


def _columns(config: TrainingConfig) -> list[tuple[str, str]]:
    data = config.data
    assert data.messages_column is not None
    return [
        ("data.messagesColumn", data.messages_column),
        ("data.chosenColumn", data.chosen_column),
        ("data.rejectedColumn", data.rejected_column),
    ]


def _on_texts(config: TrainingConfig) -> TrainingConfig:
    """The config the rules read: the prompt and answer columns are the rendered texts."""
    data = config.data.model_copy(
        update={
            "text_column": PROMPT_TEXT,
            "chosen_column": CHOSEN_TEXT,
            "rejected_column": REJECTED_TEXT,
        }
    )
    return config.model_copy(update={"data": data})


def _with_renderings(
    rows: Rows, config: TrainingConfig, tokenizer: PreTrainedTokenizerBase, template: str | None
) -> Rows:
    data = config.data
    columns = [
        rows.table.column(column).to_pylist()
        for column in (data.messages_column, data.chosen_column, data.rejected_column)
    ]
    rendered = [_render(tokenizer, template, *row) for row in zip(*columns, strict=True)]
    table = rows.table
    for index, name in enumerate((PROMPT_TEXT, CHOSEN_TEXT, REJECTED_TEXT)):
        table = table.append_column(name, pa.array([r.texts[index] for r in rendered]))
    for index, name in enumerate(TOKEN_COLUMNS):
        values = [r.tokens[index] for r in rendered]
        table = table.append_column(name, pa.array(values, pa.list_(pa.int64())))
    table = table.append_column(_PROBLEM, pa.array([r.problem for r in rendered], pa.string()))
    return Rows(table, rows.origin, rows.positions, rows.files)


def _render(
    tokenizer: PreTrainedTokenizerBase, template: str | None, prompt: Any, *answers: Any
) -> _Rendered:
    """A row's texts and each answer's tokens after its prompt, or why it has none."""
    try:
        context = _as_context(_messages(prompt, "data.messagesColumn"))
        texts = [_prompt_text(context)]
        tokens: list[list[int]] = []
        for side, answer in zip(SIDES, answers, strict=True):
            messages = _answer(answer, f"data.{side}Column")
            said = parse_conversation(context + messages).messages[len(context) :]
            texts.append("\n".join(message["content"] for message in said))
            tokens += render_conversation(tokenizer, context + messages, template)
    except ConversationError as error:
        shown = json.dumps(prompt, ensure_ascii=False, default=str)  # the examples' text
        return _Rendered((shown, "", ""), ([], [], [], []), str(error))
    return _Rendered(
        (texts[0], texts[1], texts[2]), (tokens[0], tokens[1], tokens[2], tokens[3]), None
    )


def _messages(value: Any, field: str) -> list[dict[str, Any]]:
    """A list of message objects (a JSON string, as a CSV cell holds it, is read first)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise ConversationError(f"{field}: not a list of {{role, content}} messages")
    return value


def _as_context(prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt's messages, its assistant messages left out of the loss (weight 0)."""
    return [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in prompt]


def _prompt_text(context: list[dict[str, Any]]) -> str:
    """The prompt as "role: content" lines, its messages checked as conversations.py does."""
    probe = [*context, {"role": "assistant", "content": ""}]
    messages = parse_conversation(probe).messages[:-1]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _answer(value: Any, field: str) -> list[dict[str, Any]]:
    messages = _messages(value, field)
    if any(m.get("role") != "assistant" for m in messages):
        raise ConversationError(f"{field}: not a list of assistant messages")
    return messages


def _settle_malformed(
    rows: Rows, split: str, config: TrainingConfig
) -> tuple[Rows, list[RuleResult]]:
    """data.quality.malformedConversations on one file: fail, or count and drop the rows."""
    problems = rows.table.column(_PROBLEM)
    matched = np.asarray(pc.is_valid(problems).to_numpy(zero_copy_only=False), dtype=np.bool_)
    failure = ""
    if matched.any():
        first = problems.filter(pa.array(matched))[0].as_py()
        failure = (
            f"data.quality.{_RULE}: {rows.origin} has {row_count(int(matched.sum()))} that "
            f"cannot be trained on ({rows.row_numbers(pa.chunked_array([matched]))}; the "
            f"first: {first}); data.quality.{_RULE}.mode is fail: fix them, or set it to drop "
            "to leave them out"
        )
    results: list[RuleResult] = []
    mode = config.data.quality.malformed_conversations.mode
    on_texts = _on_texts(config)
    kept = settle(rows, split, _RULE, mode, matched, failure, on_texts, results)
    return kept, results


def _longer_answer(rows: Rows) -> npt.NDArray[np.int64]:
    """Tokens of each row's longer rendered answer with its prompt: what data.maxLength cuts."""
    chosen = pc.list_value_length(rows.table.column("chosen_input_ids"))
    rejected = pc.list_value_length(rows.table.column("rejected_input_ids"))
    longer = pc.max_element_wise(chosen, rejected).to_numpy(zero_copy_only=False)
    return np.asarray(longer, dtype=np.int64)


def _prepared(checked: CheckedRows, on_texts: TrainingConfig) -> PreparedData:
    max_length = on_texts.data.max_length
    whole = {
        split: datasets.Dataset(InMemoryTable(rows.table.select(list(TOKEN_COLUMNS))))
        for split, rows in (("train", checked.train), ("validation", checked.validation))
    }
    train_set, validation_set = (
        preference_rows(truncated(rows, TOKEN_COLUMNS, max_length), max_length, split)
        for split, rows in (("training", whole["train"]), ("validation", whole["validation"]))
    )
    figures = {split: preference_tokens(rows, max_length) for split, rows in whole.items()}
    training = on_texts.training
    tokens = run_tokens(figures, training.epochs, training.max_steps)
    return checked.prepared(train_set, validation_set, on_texts.data, tokens)
