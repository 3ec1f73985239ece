"""Conversations (data.messagesColumn): the assistant-only loss mask token by token, with
the built-in ChatML and a tokenizer's own template; weights; OpenAI's content parts; every
malformed conversation counted by data.quality.malformedConversations; the settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import IGNORED_LABEL, DataError, prepare_data
from kubetune_trainer.data.conversations import (
    CHATML_TEMPLATE,
    ConversationError,
    chat_template,
    render_conversation,
)
from tests.tiny import make_chat_tokenizer

WORDS = "be brief hi there how are you fine thanks what is two and plus four ok bye :"
TWO_TURNS = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hi there"},
    {"role": "user", "content": "how are you"},
    {"role": "assistant", "content": "fine thanks"},
]
OWN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ '<|im_start|>' + m['content'] + '<|im_end|>' }}"
    "{% else %}{{ m['role'] + ': ' + m['content'] + ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>' }}{% endif %}"
)
"""A template unlike ChatML: plain "role: content" prompts, the answer between the tokens."""


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return make_chat_tokenizer([WORDS])


def tokens_and_loss(
    tokenizer: PreTrainedTokenizerBase, messages: Any, template: str | None
) -> list[tuple[str, bool]]:
    ids, labels = render_conversation(tokenizer, messages, template)
    assert [label for label in labels if label != IGNORED_LABEL] == [
        i for i, label in zip(ids, labels, strict=True) if label != IGNORED_LABEL
    ]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [(token, label != IGNORED_LABEL) for token, label in zip(tokens, labels, strict=True)]


def trained(tokens: list[tuple[str, bool]]) -> list[str]:
    return [token for token, loss in tokens if loss]


def test_chatml_puts_the_loss_on_exactly_the_assistant_tokens(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    s, e = "<|im_start|>", "<|im_end|>"
    assert tokens_and_loss(tokenizer, TWO_TURNS, chat_template(tokenizer, "chatml")) == [
        *[(s, False), ("system", False), ("be", False), ("brief", False), (e, False)],
        *[(s, False), ("user", False), ("hi", False), (e, False)],
        *[(s, False), ("assistant", False), ("hi", True), ("there", True), (e, True)],
        *[(s, False), ("user", False), ("how", False), ("are", False), ("you", False), (e, False)],
        *[(s, False), ("assistant", False), ("fine", True), ("thanks", True), (e, True)],
    ]


def test_the_tokenizers_own_template_masks_the_same_way() -> None:
    tokenizer = make_chat_tokenizer([WORDS], template=OWN_TEMPLATE)
    s, e = "<|im_start|>", "<|im_end|>"
    assert tokens_and_loss(tokenizer, TWO_TURNS, chat_template(tokenizer, None)) == [
        *[("system", False), (":", False), ("be", False), ("brief", False)],
        *[("user", False), (":", False), ("hi", False)],
        *[(s, False), ("hi", True), ("there", True), (e, True)],
        *[("user", False), (":", False), ("how", False), ("are", False), ("you", False)],
        *[(s, False), ("fine", True), ("thanks", True), (e, True)],
    ]


def test_an_assistant_message_of_weight_0_carries_no_loss(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    weighted = [*TWO_TURNS[:2], {**TWO_TURNS[2], "weight": 0}, *TWO_TURNS[3:]]
    weighted[4] = {**weighted[4], "weight": 1}
    tokens = tokens_and_loss(tokenizer, weighted, CHATML_TEMPLATE)
    assert trained(tokens) == ["fine", "thanks", "<|im_end|>"]
    assert ("hi", False) in tokens[-16:]  # the first answer is still read, as context


def test_openai_content_parts_and_extra_keys_render_as_plain_text(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    parts = [
        {**message, "content": [{"type": "text", "text": word} for word in _spaced(message)]}
        for message in TWO_TURNS
    ]
    parts[1]["name"] = "alice"
    plain = render_conversation(tokenizer, TWO_TURNS, CHATML_TEMPLATE)
    assert render_conversation(tokenizer, parts, CHATML_TEMPLATE) == plain
    as_json = json.dumps(TWO_TURNS)  # a CSV cell
    assert render_conversation(tokenizer, as_json, CHATML_TEMPLATE) == plain


def _spaced(message: dict[str, str]) -> list[str]:
    """The content cut into parts that join back to it."""
    first, _, rest = message["content"].partition(" ")
    return [first, f" {rest}"] if rest else [first]


def test_truncation_keeps_the_first_max_length_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    ids, labels = render_conversation(tokenizer, TWO_TURNS, CHATML_TEMPLATE, max_length=14)
    whole_ids, whole_labels = render_conversation(tokenizer, TWO_TURNS, CHATML_TEMPLATE)
    assert (ids, labels) == (whole_ids[:14], whole_labels[:14])


USER = {"role": "user", "content": "hi"}
ANSWER = {"role": "assistant", "content": "fine"}
MALFORMED = {
    "not a list": ("hi there", "not a list of {role, content} messages"),
    "empty list": ([], "not a list of {role, content} messages"),
    "no role": ([{"content": "hi"}, ANSWER], "message 1 is not an object with role and content"),
    "a string message": (["hi", ANSWER], "message 1 is not an object with role and content"),
    "unknown role": (
        [USER, {"role": "tool", "content": "4"}, ANSWER],
        "message 2 has role 'tool', not one of system, developer, user, assistant",
    ),
    "no content": (
        [USER, {"role": "assistant", "content": None}],
        "message 2's content is neither text nor a list of {type: text, text} parts",
    ),
    "an image part": (
        [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}, ANSWER],
        "message 1's content is neither text nor a list of {type: text, text} parts",
    ),
    "no assistant": ([USER], "no assistant message with weight 1 to learn from"),
    "every weight 0": (
        [USER, {**ANSWER, "weight": 0}],
        "no assistant message with weight 1 to learn from",
    ),
    "weight 0.5": (
        [USER, {**ANSWER, "weight": 0.5}],
        "message 2 has weight 0.5; it must be 0 or 1",
    ),
    "weight on user": (
        [{**USER, "weight": 1}, ANSWER],
        "message 1 (user) has a weight; only assistant's do",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_conversation_is_refused_with_its_reason(
    case: str, tokenizer: PreTrainedTokenizerBase
) -> None:
    value, reason = MALFORMED[case]
    with pytest.raises(ConversationError) as refused:
        render_conversation(tokenizer, value, CHATML_TEMPLATE)
    assert str(refused.value) == reason


def test_a_template_that_fails_on_a_conversation_is_its_reason(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system messages') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(ConversationError) as refused:
        render_conversation(tokenizer, TWO_TURNS, strict)
    assert str(refused.value) == "the chat template fails: no system messages"


def test_a_template_that_rewrites_earlier_turns_is_refused(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    # Each message is rendered with how many follow it: a prefix renders differently.
    shifting = "{% for m in messages %}{{ m['content'] }}{{ messages|length }} {% endfor %}"
    with pytest.raises(ConversationError) as refused:
        render_conversation(tokenizer, TWO_TURNS, shifting)
    assert "up to message 3 other than as the start of its whole text" in str(refused.value)


def test_a_tokenizer_without_a_template_needs_one_named() -> None:
    with pytest.raises(DataError) as refused:
        chat_template(make_chat_tokenizer([WORDS]), None)
    assert str(refused.value) == (
        "data.chatTemplate: the model's tokenizer has no chat template; name one: 'chatml' "
        "for the built-in ChatML, or a Jinja template"
    )


def test_a_broken_template_is_refused_before_any_row(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(DataError) as refused:
        chat_template(tokenizer, "{% for m in messages %}{{ m['content'] }}")
    assert str(refused.value).startswith(
        "data.chatTemplate: fails to render a two-message conversation: "
    )


# --- the pipeline -------------------------------------------------------------------------


def write_jsonl(path: Path, conversations: list[Any]) -> Path:
    lines = "".join(json.dumps({"messages": messages}) + "\n" for messages in conversations)
    path.write_text(lines, encoding="utf-8")
    return path


def config_of(train: Path, validation: Path, **data: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": "unused", "task": "causal-lm"},
            "data": {
                "train": {"source": str(train)},
                "validation": {"source": str(validation)},
                "messagesColumn": "messages",
                "chatTemplate": "chatml",
                "maxLength": 64,
                **data,
            },
            "training": {"batchSize": 2},
        }
    )


def conversation(question: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


GOOD = [
    conversation("hi", "hi there"),
    conversation("how are you", "fine thanks"),
    conversation("what is two plus two", "four"),
    [{"role": "system", "content": "be brief"}, *conversation("bye", "bye")],
]


def test_malformed_conversations_are_dropped_and_counted_with_examples(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    bad = [conversation("hi", "ok")[:1], [USER, {"role": "tool", "content": "ok"}, ANSWER]]
    train = write_jsonl(tmp_path / "train.jsonl", [*GOOD, *GOOD[:1], *bad])
    validation = write_jsonl(tmp_path / "validation.jsonl", [conversation("ok", "ok")])
    rules = {"malformedConversations": {"mode": "drop"}, "maxDroppedFraction": 0.5}
    prepared = prepare_data(config_of(train, validation, quality=rules), tokenizer)
    quality = prepared.report.to_report()["quality"]
    assert quality["dropped"] == {"malformedConversations": 2, "duplicates": 1}
    malformed = next(r for r in quality["results"] if r["rule"] == "malformedConversations")
    assert [(e["row"], e["problem"]) for e in malformed["examples"]] == [
        (5, "no assistant message with weight 1 to learn from"),
        (6, "message 2 has role 'tool', not one of system, developer, user, assistant"),
    ]
    duplicate = next(r for r in quality["results"] if r["rule"] == "duplicates")
    assert duplicate["examples"][0]["text"] == "user: hi\nassistant: hi there"
    assert prepared.rows["train_out"] == 4
    assert prepared.report.to_report()["conversations"]["train"] == {
        "rows": 4,
        "messages": 9,
        "turns": 4,
        "trainedMessages": 4,
        "assistantTokenShare": pytest.approx(10 / 45, abs=1e-4),  # 45 tokens, 10 answers,
    }
    train_tokens = prepared.report.to_report()["tokens"]["splits"]["train"]
    assert (train_tokens["tokensPerEpoch"], train_tokens["lossTokensPerEpoch"]) == (45, 10)
    assert train_tokens["responseTokens"]["total"] == 10
    assert train_tokens["promptTokens"]["total"] == 35


def test_a_file_mixing_text_and_content_parts_reads_back(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, ANSWER]
    train = write_jsonl(tmp_path / "train.jsonl", [*GOOD, parts])
    validation = write_jsonl(tmp_path / "validation.jsonl", [conversation("ok", "ok")])
    prepared = prepare_data(config_of(train, validation), tokenizer)
    assert prepared.train_texts[-1] == "user: hi\nassistant: fine"
    assert prepared.rows["train_out"] == 5


def test_malformed_conversations_fail_the_job_by_default(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [*GOOD, [USER, {**ANSWER, "weight": 2}]])
    validation = write_jsonl(tmp_path / "validation.jsonl", GOOD[:1])
    with pytest.raises(DataError) as refused:
        prepare_data(config_of(train, validation), tokenizer)
    assert str(refused.value) == (
        f"data.messagesColumn: {train} has 1 row that cannot be trained on (data row 5; the "
        "first: message 2 has weight 2; it must be 0 or 1); "
        "data.quality.malformedConversations.mode is fail: fix them, or set it to drop to "
        "leave them out"
    )


def test_the_length_rule_counts_the_rendered_tokens(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", GOOD)
    validation = write_jsonl(tmp_path / "validation.jsonl", GOOD[:1])
    rules = {"length": {"mode": "warn", "maxTokens": 10}}
    prepared = prepare_data(config_of(train, validation, quality=rules), tokenizer)
    length = next(
        r for r in prepared.report.quality.results if r.rule == "length" and r.split == "train"
    )
    # "<|im_start|> user how are you <|im_end|> <|im_start|> assistant fine thanks <|im_end|>"
    assert [(e["row"], e["tokens"]) for e in length.examples] == [(1, 11), (2, 12), (3, 13)]


def test_max_length_that_cuts_off_every_answer_is_refused(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [[TWO_TURNS[0], *c] for c in GOOD])
    validation = write_jsonl(tmp_path / "validation.jsonl", GOOD[:1])
    with pytest.raises(DataError) as refused:
        prepare_data(config_of(train, validation, maxLength=8), tokenizer)
    assert str(refused.value) == (
        "data.maxLength: 8 tokens hold no assistant token of any training conversation, so "
        "there is nothing to learn from; raise data.maxLength or shorten the conversations"
    )


def test_a_messages_column_of_plain_text_is_named(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", GOOD)
    validation = write_jsonl(tmp_path / "validation.jsonl", GOOD[:1])
    with pytest.raises(DataError) as refused:
        prepare_data(config_of(train, validation, messagesColumn="chat"), tokenizer)
    assert str(refused.value) == (
        f"data.messagesColumn: column 'chat' is not in {train} (columns: messages)"
    )


# --- the settings -------------------------------------------------------------------------


def settings_error(task: str = "causal-lm", **data: Any) -> str:
    with pytest.raises(ValidationError) as refused:
        TrainingConfig.model_validate(
            {
                "model": {"source": "m", "task": task},
                "data": {"train": {"source": "t.jsonl"}, **data},
            }
        )
    return str(refused.value)


def test_conversation_settings_are_checked() -> None:
    assert "data.messagesColumn applies to causal-lm only, not sequence-classification" in (
        settings_error("sequence-classification", messagesColumn="messages")
    )
    assert "data.messagesColumn and data.textPairColumn exclude each other" in settings_error(
        messagesColumn="messages", textPairColumn="answer"
    )
    assert "data.chatTemplate renders conversations: set data.messagesColumn" in (
        settings_error(chatTemplate="chatml")
    )
    assert "malformedConversations.mode: warn cannot keep a conversation" in settings_error(
        messagesColumn="messages", quality={"malformedConversations": {"mode": "warn"}}
    )


def test_the_text_column_is_not_read_beside_a_messages_column() -> None:
    config = TrainingConfig.model_validate(
        {
            "model": {"source": "m", "task": "causal-lm"},
            "data": {"train": {"source": "t.jsonl"}, "messagesColumn": "text"},
        }
    )
    assert config.data.column_roles(with_label=False) == [("data.messagesColumn", "text")]


def test_conversations_out_of_turn_or_with_an_empty_message_are_malformed(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    bad = [
        [USER, {"role": "user", "content": "again"}, ANSWER],
        [USER, ANSWER, {"role": "system", "content": "be brief"}, USER, ANSWER],
        [{"role": "user", "content": "  "}, ANSWER],
    ]
    train = write_jsonl(tmp_path / "train.jsonl", [*GOOD, *bad])
    validation = write_jsonl(tmp_path / "validation.jsonl", [conversation("ok", "ok")])
    rules = {"malformedConversations": {"mode": "drop"}, "maxDroppedFraction": 0.5}
    prepared = prepare_data(config_of(train, validation, quality=rules), tokenizer)
    assert prepared.rows["train_out"] == 4
    malformed = next(r for r in prepared.quality.results if r.rule == "malformedConversations")
    assert [(e["row"], e["problem"]) for e in malformed.examples] == [
        (4, "messages 1 and 2 are both user's; user and assistant take turns"),
        (
            5,
            "message 3 (system) comes after the conversation started; system and developer "
            "messages open it",
        ),
        (6, "message 1 (user) is empty"),
    ]


def test_conversation_rules_compare_the_prompt_before_the_last_answer(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [*GOOD, conversation("hi", "hello"), conversation("is it ok", "yes")],
    )
    validation = write_jsonl(tmp_path / "validation.jsonl", [conversation("is it ok", "no")])
    rules = {
        "conflictingResponses": {"mode": "drop"},
        "leakage": {"mode": "warn"},
        "maxDroppedFraction": 0.5,
    }
    prepared = prepare_data(config_of(train, validation, quality=rules), tokenizer)
    report = prepared.report.to_report()["quality"]
    assert report["dropped"] == {"conflictingResponses": 2}  # "hi there" and "hello"
    assert report["flagged"] == {"leakage": 1}  # "user: is it ok", answered otherwise
    assert prepared.train_texts == [
        "user: how are you\nassistant: fine thanks",
        "user: what is two plus two\nassistant: four",
        "system: be brief\nuser: bye\nassistant: bye",
        "user: is it ok\nassistant: yes",
    ]
