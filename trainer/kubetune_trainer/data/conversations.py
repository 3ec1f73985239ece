"""Conversations for supervised fine-tuning: rendered with a chat template, loss on the
assistant's tokens only.

Users keep their fine-tuning data in OpenAI's JSONL format, and their files must work
unchanged: one conversation per row, a list of {role, content} messages (content a string
or a list of {type: text, text} parts; extra keys such as name are ignored), with an
optional `weight` of 0 or 1 on assistant messages. A model learns from a conversation what
its chat template makes of it, so a conversation is rendered with that template (the
tokenizer's own, the built-in ChatML, or a Jinja string from the manifest), and its labels
keep the tokens of each assistant message with weight 1 -- the content and the template's
end-of-turn marker after it, so that the model learns to stop -- and mask the rest with
IGNORED_LABEL.

Where an assistant message lies in the rendered text is found by rendering prefixes: the
conversation before the message with the generation prompt (where the model starts to
answer) and up to and including it (where its turn ends). That needs no `{% generation %}`
markers (few templates have them), only a template that renders a prefix of a conversation
as a prefix of its text; one that does not is refused for that conversation. The whole text
is then tokenized once, with offsets, so the model trains on the tokens it sees at
inference, and a token is the assistant's when it starts inside one of those spans.

A conversation that cannot be trained on raises `ConversationError` with the reason; the
data-quality rule malformedConversations counts those rows (chat_pipeline.py).
`render_conversation` is the whole path for one conversation, for callers outside the
pipeline (e.g. conversational preference rows).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.data.language_model import IGNORED_LABEL
from kubetune_trainer.data.rows import DataError
from kubetune_trainer.formatting import first_line

ROLES = ("system", "developer", "user", "assistant")
"""The roles a message may have. Tool and function messages (and assistant tool calls) are
not supported: their rendering differs too much between templates to mask reliably."""
CHATML = "chatml"
"""The data.chatTemplate value that names the built-in ChatML template."""
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as Qwen and many others render it (<|im_start|>role, content, <|im_end|>)."""
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]

Span = tuple[int, int]
"""Characters [start, end) of the rendered text."""


class ConversationError(ValueError):
    """A conversation that cannot be trained on; the message is the reason."""


@dataclass(frozen=True)
class Conversation:
    """A checked conversation: its messages as the template sees them, and which train."""

    messages: list[dict[str, str]]
    """{role, content} per message, content as one string."""
    trained: list[bool]
    """Per message: an assistant message with weight 1, whose tokens the loss counts."""

    def text(self) -> str:
        """The contents as "role: content" lines: what the data-quality rules compare."""
        return _lines(self.messages)

    def prompt_and_response(self) -> tuple[str, str]:
        """The messages before the last trained assistant message, as "role: content" lines,
        and that message's content: what a prompt and its response are to the rules."""
        last = int(np.flatnonzero(self.trained)[-1])
        return _lines(self.messages[:last]), self.messages[last]["content"]


def _lines(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


OPENING_ROLES = ("system", "developer")
"""The roles that set a conversation up: they come before its first user or assistant message."""


def check_turns(conversation: Conversation) -> None:
    """ConversationError when a message is empty, a system or developer message comes after
    the conversation started, or user or assistant speaks twice in a row (what a chat
    template renders, but no chat the model will see looks like)."""
    messages = conversation.messages
    for number, message in enumerate(messages, 1):
        if not message["content"].strip():
            raise ConversationError(f"message {number} ({message['role']}) is empty")
    talk = [(n, m["role"]) for n, m in enumerate(messages, 1) if m["role"] not in OPENING_ROLES]
    for number, message in enumerate(messages, 1):
        if message["role"] in OPENING_ROLES and talk and number > talk[0][0]:
            raise ConversationError(
                f"message {number} ({message['role']}) comes after the conversation started; "
                f"{' and '.join(OPENING_ROLES)} messages open it"
            )
    for (number, role), (next_number, next_role) in pairwise(talk):
        if role == next_role:
            raise ConversationError(
                f"messages {number} and {next_number} are both {role}'s; user and assistant "
                "take turns"
            )


@dataclass(frozen=True)
class Rendered:
    """A conversation as text, and where its trained assistant messages are in it."""

    text: str
    spans: list[Span]


def chat_template(tokenizer: PreTrainedTokenizerBase, named: str | None) -> str | None:
    """The template for data.chatTemplate `named` (None: the tokenizer's own), checked on a
    two-message conversation; a DataError naming the field when there is none or it fails."""
    if not tokenizer.is_fast:
        raise DataError(
            "data.messagesColumn: conversations need a fast tokenizer (one that reports "
            f"each token's characters); {type(tokenizer).__name__} is not"
        )
    template = None if named is None else named_template(named)
    if template is None and not tokenizer.chat_template:
        raise DataError(
            "data.chatTemplate: the model's tokenizer has no chat template; name one: "
            f"{CHATML!r} for the built-in ChatML, or a Jinja template"
        )
    try:
        tokenizer.apply_chat_template(_PROBE, chat_template=template, tokenize=False)
    except Exception as error:  # Jinja and the template's own raise_exception
        where = "data.chatTemplate" if template is not None else "the tokenizer's chat template"
        raise DataError(
            f"{where}: fails to render a two-message conversation: {first_line(error)}"
        ) from None
    return template


def named_template(named: str) -> str:
    """The Jinja text of data.chatTemplate: the built-in ChatML for "chatml"."""
    return CHATML_TEMPLATE if named == CHATML else named


def parse_conversation(value: Any) -> Conversation:
    """A row's messages checked; ConversationError with the reason when they are not a list
    of {role, content} messages with known roles, weights of 0 or 1, and an assistant
    message to learn from. A JSON string (a CSV cell) is read first."""
    if isinstance(value, str):
        value = _json(value)
    if not isinstance(value, list) or not value:
        raise ConversationError("not a list of {role, content} messages")
    messages, trained = [], []
    for number, message in enumerate(value, 1):
        role, content, weight = _message(message, number)
        messages.append({"role": role, "content": content})
        trained.append(role == "assistant" and weight != 0)
    if not any(trained):
        raise ConversationError("no assistant message with weight 1 to learn from")
    return Conversation(messages, trained)


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        raise ConversationError("not a list of {role, content} messages") from None


def _message(message: Any, number: int) -> tuple[str, str, Any]:
    """A message's role, content (parts joined) and weight, each checked."""
    if not isinstance(message, dict) or message.get("role") is None:
        raise ConversationError(f"message {number} is not an object with role and content")
    role = message["role"]
    if role not in ROLES:
        raise ConversationError(
            f"message {number} has role {role!r}, not one of {', '.join(ROLES)}"
        )
    content = _content(message.get("content"), number)
    weight = message.get("weight")
    if weight is not None and role != "assistant":
        raise ConversationError(f"message {number} ({role}) has a weight; only assistant's do")
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        raise ConversationError(f"message {number} has weight {weight!r}; it must be 0 or 1")
    return role, content, weight


def _content(content: Any, number: int) -> str:
    """Text content, or OpenAI's list of {type: text, text} parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(_is_text_part(part) for part in content):
        return "".join(part["text"] for part in content)
    raise ConversationError(
        f"message {number}'s content is neither text nor a list of {{type: text, text}} parts"
    )


def _is_text_part(part: Any) -> bool:
    return (
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
    )


def render(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, template: str | None
) -> Rendered:
    """The conversation's text and the spans of its trained assistant messages."""
    messages = conversation.messages
    text = _render(tokenizer, messages, template, prompt=False)
    spans = []
    for index in np.flatnonzero(conversation.trained).tolist():
        opening = _render(tokenizer, messages[:index], template, prompt=True)
        through = _render(tokenizer, messages[: index + 1], template, prompt=False)
        if not (text.startswith(through) and through.startswith(opening)):
            raise ConversationError(
                f"the chat template renders the conversation up to message {index + 1} other "
                "than as the start of its whole text, so the assistant's tokens cannot be found"
            )
        spans.append((len(opening), len(through)))
    return Rendered(text, spans)


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    template: str | None,
    *,
    prompt: bool,
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
        )
    except Exception as error:  # Jinja and the template's own raise_exception
        raise ConversationError(f"the chat template fails: {first_line(error)}") from None
    return str(text)


def assistant_labels(
    input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[Span]
) -> list[int]:
    """`input_ids` where a token starts inside a span, IGNORED_LABEL elsewhere."""
    starts = np.asarray([start for start, _ in offsets], dtype=np.int64)[:, None]
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    inside = ((starts >= bounds[:, 0]) & (starts < bounds[:, 1])).any(axis=1)
    labels = np.where(inside, np.asarray(input_ids, dtype=np.int64), IGNORED_LABEL)
    return [int(label) for label in labels]


def render_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: Any,
    template: str | None,
    max_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """One conversation's token ids and labels (IGNORED_LABEL but on the trained assistant
    tokens), cut to `max_length`; `template` as `chat_template` resolves it (None: the
    tokenizer's own). Raises ConversationError for a conversation that cannot be trained on."""
    rendered = render(tokenizer, parse_conversation(messages), template)
    encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    labels = assistant_labels(ids, encoded["offset_mapping"], rendered.spans)
    return ids[:max_length], labels[:max_length]
