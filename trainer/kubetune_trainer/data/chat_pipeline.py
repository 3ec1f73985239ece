"""The pipeline of conversations (data.messagesColumn): a causal LM learning to answer.

Each row is a conversation in OpenAI's fine-tuning format. Every file's conversations are
checked and rendered with the chat template as soon as it is read (conversations.py), and
the data-quality rule malformedConversations drops or fails those that cannot be trained
on, before the validation split, like the other per-file rules (screening.py). The other
rules then see each conversation as "role: content" lines (duplicates, leakage, empty and
garbage text compare what was said, not the template's markup), and the length rule counts
the tokens of the rendered text, which is what the model reads. The rendered texts are
tokenized with the loss on the assistant's tokens, and the rows go on as any causal-LM rows
(packing, LoRA, evaluation are unchanged).

The rendering and the reasons travel as extra columns of the rows (`CONVERSATION_TEXT`,
`_RENDERED`, ...), so that the splits and the rules' drops keep them aligned for free.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import datasets
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import DataSource, TrainingConfig
from kubetune_trainer.data.batching import check_batch_size
from kubetune_trainer.data.cleaning import apply_quality_rules, quality_failure
from kubetune_trainer.data.columns import check_columns
from kubetune_trainer.data.conversations import (
    ConversationError,
    assistant_labels,
    chat_template,
    check_turns,
    parse_conversation,
    render,
)
from kubetune_trainer.data.groups import present_sensitive_groups
from kubetune_trainer.data.language_model import ENCODED_COLUMNS, IGNORED_LABEL
from kubetune_trainer.data.loading import read_source
from kubetune_trainer.data.prepared import PreparedData
from kubetune_trainer.data.quality import (
    QualityError,
    QualityReport,
    RuleResult,
    SplitInput,
    rule_result,
)
from kubetune_trainer.data.report import DataReport, length_summary
from kubetune_trainer.data.rows import DataError, Rows, row_count
from kubetune_trainer.data.screening import rows_read
from kubetune_trainer.data.splits import stratified_split
from kubetune_trainer.data.token_budget import run_tokens, split_tokens, truncated

CONVERSATION_TEXT = "kubetune:conversation"
"""The column of each conversation as "role: content" lines, the text the rules check."""
_RENDERED = "kubetune:rendered"
_SPANS = "kubetune:spans"
"""The trained assistant messages' [start, end) characters in the rendered text, flat."""
_PROBLEM = "kubetune:problem"
"""Why a conversation cannot be trained on; null for those that can."""
PROMPT_TEXT = "kubetune:prompt"
RESPONSE_TEXT = "kubetune:response"
"""The columns of each conversation's prompt (the messages before its last trained assistant
message, as "role: content" lines) and response (that message): what conflictingResponses,
nearDuplicates and leakage compare."""
_MESSAGES = "kubetune:messages"
_TRAINED = "kubetune:trained"
_TURNS = "kubetune:turns"
"""Assistant messages per conversation (each answers a turn), trained or not."""
_RULE = "malformedConversations"


def prepare_conversation_data(
    config: TrainingConfig, tokenizer: PreTrainedTokenizerBase
) -> PreparedData:
    """Load, check, render, split and tokenize the conversations of a causal-LM run."""
    data = config.data
    template = chat_template(tokenizer, data.chat_template)
    screened: list[RuleResult] = []
    train = _read(data.train, "data.train", "train", config, tokenizer, template, screened)
    if data.validation is None:
        kept, held_out = stratified_split(
            np.zeros(train.table.num_rows, dtype=np.int64),
            data.validation_split,
            config.training.seed,
        )
        train, validation = train.take(kept), train.take(held_out)
    else:
        validation = _read(
            data.validation, "data.validation", "validation", config, tokenizer, template, screened
        )
    rows_in = rows_read(train, validation, screened)
    train, validation, quality = apply_quality_rules(
        train,
        validation,
        _on_conversation_text(config),
        tokenizer,
        screened=screened,
        token_counts=_rendered_token_counts(tokenizer),
        prompts=(PROMPT_TEXT, RESPONSE_TEXT),
    )
    check_batch_size(config.training.batch_size, train)
    train_set, train_tokens = _tokenize(train, tokenizer, data.max_length, "training")
    validation_set, validation_tokens = _tokenize(
        validation, tokenizer, data.max_length, "validation"
    )
    splits = (("train", train, train_set), ("validation", validation, validation_set))
    figures = {"train": train_tokens, "validation": validation_tokens}
    report = DataReport(
        quality=quality,
        labels=[],
        classes={},
        lengths={
            split: length_summary(np.asarray(encoded["length"][:]), data.max_length)
            for split, _, encoded in splits
        },
        conversations={split: _figures(rows, encoded) for split, rows, encoded in splits},
        tokens=run_tokens(figures, config.training.epochs, config.training.max_steps),
    )
    return PreparedData(
        train=train_set,
        validation=validation_set,
        labels=[],
        train_class_counts={},
        class_weights=None,
        train_texts=_texts(train),
        train_groups=present_sensitive_groups(train, data.sensitive_columns),
        train_sources=np.arange(len(train_set), dtype=np.int64),
        validation_texts=_texts(validation),
        validation_groups=present_sensitive_groups(validation, data.sensitive_columns),
        rows={**rows_in, "train_out": len(train_set), "validation_out": len(validation_set)},
        majority_rate=0.0,
        report=report,
    )


def _read(
    source: DataSource,
    field: str,
    split: str,
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    template: str | None,
    screened: list[RuleResult],
) -> Rows:
    """One file's rows with their conversations rendered, the malformed ones settled."""
    column = config.data.messages_column
    assert column is not None
    rows = read_source(source, field)
    check_columns(rows, [("data.messagesColumn", column)])
    values = rows.table.column(column).to_pylist()
    columns = _rendered_columns([_render_row(tokenizer, value, template) for value in values])
    table = rows.table
    for name, values in columns.items():
        table = table.append_column(name, values)
    rows = Rows(table, rows.origin, rows.positions, rows.files)
    return _settle_malformed(rows, split, config, screened)


class _RowFacts(NamedTuple):
    """One row's conversation as the columns hold it."""

    text: str
    prompt: str
    response: str
    rendered: str | None
    spans: list[int]
    problem: str | None
    messages: int
    trained: int
    turns: int


def _render_row(tokenizer: PreTrainedTokenizerBase, value: Any, template: str | None) -> _RowFacts:
    try:
        conversation = parse_conversation(value)
        check_turns(conversation)
        rendered = render(tokenizer, conversation, template)
    except ConversationError as error:
        shown = json.dumps(value, ensure_ascii=False, default=str)  # the examples' text
        return _RowFacts(shown, "", "", None, [], str(error), 0, 0, 0)
    return _RowFacts(
        conversation.text(),
        *conversation.prompt_and_response(),
        rendered.text,
        [bound for span in rendered.spans for bound in span],
        None,
        len(conversation.messages),
        sum(conversation.trained),
        sum(message["role"] == "assistant" for message in conversation.messages),
    )


def _rendered_columns(facts: list[_RowFacts]) -> dict[str, pa.Array]:
    return {
        CONVERSATION_TEXT: pa.array([f.text for f in facts], pa.large_string()),
        PROMPT_TEXT: pa.array([f.prompt for f in facts], pa.large_string()),
        RESPONSE_TEXT: pa.array([f.response for f in facts], pa.large_string()),
        _RENDERED: pa.array([f.rendered for f in facts], pa.large_string()),
        _SPANS: pa.array([f.spans for f in facts], pa.list_(pa.int64())),
        _PROBLEM: pa.array([f.problem for f in facts], pa.string()),
        _MESSAGES: pa.array([f.messages for f in facts], pa.int64()),
        _TRAINED: pa.array([f.trained for f in facts], pa.int64()),
        _TURNS: pa.array([f.turns for f in facts], pa.int64()),
    }


def _settle_malformed(
    rows: Rows, split: str, config: TrainingConfig, screened: list[RuleResult]
) -> Rows:
    """data.quality.malformedConversations on one file: fail, or count and drop the rows."""
    spec = config.data.quality
    problems = rows.table.column(_PROBLEM)
    matched = np.asarray(pc.is_valid(problems).to_numpy(zero_copy_only=False), dtype=np.bool_)
    mode = spec.malformed_conversations.mode
    if mode == "fail" and matched.any():
        raise DataError(_failure(rows, problems, matched))
    result = rule_result(
        _RULE,
        split,
        mode,
        matched,
        SplitInput(rows.table, rows.positions, origin=rows.origin, files=rows.files),
        text_column=CONVERSATION_TEXT,
        label_column=None,
        limit=spec.examples_per_rule,
        details={"problem": np.asarray(problems.to_pylist(), dtype=object)},
    )
    screened.append(result)
    kept = rows.take(np.flatnonzero(~matched))
    report = QualityReport({split: rows.table.num_rows}, {split: kept.table.num_rows}, [result])
    try:
        report.refuse_excess_drops(split, spec.max_dropped_fraction, rows.origin)
    except QualityError as error:
        raise DataError(quality_failure(error)) from None
    if not kept.table.num_rows:
        raise DataError(f"data.quality: no row of {rows.origin} is left ({_RULE})")
    return kept


def _failure(rows: Rows, problems: pa.ChunkedArray, matched: npt.NDArray[np.bool_]) -> str:
    first = problems.filter(pa.array(matched))[0].as_py()
    return (
        f"data.messagesColumn: {rows.origin} has {row_count(int(matched.sum()))} that cannot "
        f"be trained on ({rows.row_numbers(pa.chunked_array([matched]))}; the first: {first}); "
        f"data.quality.{_RULE}.mode is fail: fix them, or set it to drop to leave them out"
    )


def _on_conversation_text(config: TrainingConfig) -> TrainingConfig:
    """The config the quality rules read: the text column is the conversations' text."""
    data = config.data.model_copy(
        update={"text_column": CONVERSATION_TEXT, "text_pair_column": None}
    )
    return config.model_copy(update={"data": data})


def _rendered_token_counts(
    tokenizer: PreTrainedTokenizerBase,
) -> Callable[[Rows], npt.NDArray[np.int64]]:
    """Tokens of each rendered conversation, untruncated: what the length rule counts."""

    def count(rows: Rows) -> npt.NDArray[np.int64]:
        texts = rows.table.column(_RENDERED).to_pylist()
        if not texts:
            return np.zeros(0, dtype=np.int64)
        encoded = tokenizer(texts, add_special_tokens=False, return_length=True, verbose=False)
        return np.asarray(encoded["length"], dtype=np.int64)

    return count


def _tokenize(
    rows: Rows, tokenizer: PreTrainedTokenizerBase, max_length: int, split: str
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """The split's conversations tokenized and cut to max_length, and its token figures
    (counted before the cut)."""
    table = rows.table.select([_RENDERED, _SPANS])
    whole = datasets.Dataset(InMemoryTable(table)).map(
        _encoder(tokenizer),
        batched=True,
        remove_columns=table.column_names,
        desc=f"Tokenizing the {split} conversations",
    )
    figures = split_tokens(whole.data.table.column("labels"), max_length)
    encoded = truncated(whole, ENCODED_COLUMNS, max_length)
    _check_answers_fit(encoded, max_length, split)
    lengths = pc.list_value_length(encoded.data.table.column("input_ids"))
    with_lengths = encoded.data.table.append_column("length", lengths)
    return datasets.Dataset(InMemoryTable(with_lengths)), figures


def _encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[Any], dict[str, Any]]:
    """The rendered texts' token ids, whole, labels on the assistant's tokens."""

    def encode(batch: Any) -> dict[str, Any]:
        encoded = tokenizer(batch[_RENDERED], add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        labels = [
            assistant_labels(row_ids, offsets, list(zip(flat[::2], flat[1::2], strict=True)))
            for row_ids, offsets, flat in zip(
                ids, encoded["offset_mapping"], batch[_SPANS], strict=True
            )
        ]
        return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids], "labels": labels}

    return encode


def _check_answers_fit(encoded: datasets.Dataset, max_length: int, split: str) -> None:
    """Refuse a split whose every assistant message is cut off by data.maxLength: its loss
    would be 0/0 (NaN) at every step, which would read as a divergence."""
    # The first label is never a target (the model predicts the token after each).
    answers = pc.list_flatten(pc.list_slice(encoded.data.table.column("labels"), 1))
    if not pc.any(pc.not_equal(answers, IGNORED_LABEL)).as_py():
        raise DataError(
            f"data.maxLength: {max_length} tokens hold no assistant token of any {split} "
            "conversation, so there is nothing to learn from; raise data.maxLength or "
            "shorten the conversations"
        )


def _figures(rows: Rows, encoded: datasets.Dataset) -> dict[str, Any]:
    """A split's conversations in numbers, for the data report."""
    labels = pc.list_flatten(encoded.data.table.column("labels"))
    trained_tokens = pc.sum(pc.not_equal(labels, IGNORED_LABEL)).as_py() or 0
    return {
        "rows": rows.table.num_rows,
        "messages": pc.sum(rows.table.column(_MESSAGES)).as_py() or 0,
        "trainedMessages": pc.sum(rows.table.column(_TRAINED)).as_py() or 0,
        "turns": pc.sum(rows.table.column(_TURNS)).as_py() or 0,
        "assistantTokenShare": round(trained_tokens / max(len(labels), 1), 4),
    }


def _texts(rows: Rows) -> list[str]:
    texts: list[str] = rows.table.column(CONVERSATION_TEXT).to_pylist()
    return texts
