"""Conversations end to end on CPU: a tiny GPT-2 trains on an OpenAI-format JSONL file
(system messages, multi-turn dialogues, weights) as the user has it, with the tokenizer's
own chat template, and with the built-in ChatML under packing and LoRA; the loss falls and
the report counts the conversations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubetune_trainer.__main__ import run_training
from kubetune_trainer.config import EvaluationSpec, TrainingConfig
from kubetune_trainer.data.conversations import CHATML_TEMPLATE
from tests.tiny import make_tiny_chat_lm

WORDS = [f"w{i}" for i in range(24)]
SYSTEM = {"role": "system", "content": "answer with the next word"}
OWN_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' + m['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}"
)
"""The tokenizer's own template: ChatML without its newlines."""


def dialogue(rng: np.random.Generator) -> list[dict[str, Any]]:
    """A system message (half the time), then one to three turns: the user says a word,
    the assistant the next one. A first answer of a multi-turn dialogue weighs 0."""
    messages: list[dict[str, Any]] = [SYSTEM] if rng.random() < 0.5 else []
    turns = int(rng.integers(1, 4))
    for turn in range(turns):
        word = int(rng.integers(0, len(WORDS)))
        answer: dict[str, Any] = {"role": "assistant", "content": WORDS[(word + 1) % len(WORDS)]}
        if turn == 0 and turns > 1:
            answer["weight"] = 0
        messages += [{"role": "user", "content": WORDS[word]}, answer]
    return messages


def write_openai_jsonl(path: Path, conversations: list[list[dict[str, Any]]]) -> Path:
    lines = "".join(json.dumps({"messages": messages}) + "\n" for messages in conversations)
    path.write_text(lines, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A causal-lm job over 160 training and 24 validation dialogues, one of them with a
    tool message (dropped by malformedConversations), and a model whose tokenizer has a
    template of its own."""
    folder = tmp_path_factory.mktemp("chat")
    rng = np.random.default_rng(0)
    train = [dialogue(rng) for _ in range(160)]
    train[7] = [*train[7], {"role": "tool", "content": "w1"}]
    validation = [dialogue(rng) for _ in range(24)]
    texts = [" ".join(WORDS), SYSTEM["content"]]
    return {
        "model": {
            "source": str(make_tiny_chat_lm(folder / "gpt", texts, OWN_TEMPLATE)),
            "task": "causal-lm",
        },
        "data": {
            "train": {"source": str(write_openai_jsonl(folder / "train.jsonl", train))},
            "validation": {"source": str(write_openai_jsonl(folder / "val.jsonl", validation))},
            "messagesColumn": "messages",
            "maxLength": 64,
            "quality": {
                "malformedConversations": {"mode": "drop"},
                # Short dialogues over 24 words repeat: keep them, as a user would.
                "duplicates": {"mode": "warn"},
                "leakage": {"mode": "warn"},
            },
        },
        "training": {"epochs": 3, "batchSize": 8, "learningRate": 1e-2, "seed": 3},
        "expected": {
            "messages": sum(len(m) for m in train) - len(train[7]),
            "turns": sum(m["role"] == "assistant" for c in train[:7] + train[8:] for m in c),
            "trained": sum(
                m["role"] == "assistant" and m.get("weight", 1) == 1
                for c in train[:7] + train[8:]
                for m in c
            ),
            "validationRoles": [[m["role"] for m in c] for c in validation],
        },
    }


def config_of(job: dict[str, Any], **data: Any) -> TrainingConfig:
    manifest = {key: value for key, value in job.items() if key != "expected"}
    return TrainingConfig.model_validate(
        {**manifest, "data": {**manifest["data"], **data}}, by_name=False
    )


def assert_learns(result: Any, by: float) -> None:
    """The run succeeded, its training loss fell below `by` times its start, and every
    evaluation's loss is below the one before."""
    assert result.succeeded
    train_losses = [loss for _, loss in result.report["curves"]["trainLoss"]]
    assert all(np.isfinite(train_losses))
    assert np.mean(train_losses[-3:]) < by * np.mean(train_losses[:3])
    losses = [e["metrics"]["loss"] for e in result.report["curves"]["evaluations"]]
    assert losses == sorted(losses, reverse=True)


def test_an_openai_jsonl_file_trains_unchanged(tmp_path: Path, chat_job: dict[str, Any]) -> None:
    """... and is evaluated by generation, with exactMatch as its primary metric, and its
    last answers explained turn by turn."""
    generation = {"samples": 12, "maxNewTokens": 4, "batchSize": 5, "seed": 1}
    attributions = {"sampleSize": 2, "responseTokens": 2}
    evaluation = {
        "evaluation": {
            "metric": "exactMatch",
            "generation": generation,
            "attributions": attributions,
        }
    }
    config = TrainingConfig.model_validate(
        {**config_of(chat_job).model_dump(exclude_none=True), **evaluation}, by_name=False
    )
    result = run_training(config, tmp_path, job_name="chat", env={})
    assert_learns(result, by=0.7)
    assert_generation_evaluated(result.report, tmp_path)
    assert_turns_explained(result.report["attributions"], chat_job["expected"]["validationRoles"])
    data = result.report["data"]
    assert data["quality"]["dropped"] == {"malformedConversations": 1}
    train = data["conversations"]["train"]
    assert train["rows"] == data["rows"]["train_out"] == 159
    assert train["messages"] == chat_job["expected"]["messages"]
    assert train["trainedMessages"] == chat_job["expected"]["trained"]
    assert train["turns"] == chat_job["expected"]["turns"]
    assert 0.1 < train["assistantTokenShare"] < 0.3  # a word and <|im_end|> per answer
    assert data["conversations"]["validation"]["rows"] == 24
    tokens = data["tokens"]["splits"]["train"]
    lengths = data["lengths"]["train"]
    assert tokens["tokensPerEpoch"] == round(lengths["mean"] * lengths["count"])
    assert tokens["responseTokens"]["total"] / tokens["tokensPerEpoch"] == pytest.approx(
        train["assistantTokenShare"], abs=1e-4
    )
    assert data["tokens"]["tokensPerRun"] == 3 * tokens["tokensPerEpoch"]
    assert (tokens["responsesCut"], tokens["responseTokensCut"]) == (0, 0)  # maxLength holds all
    saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert saved["data"]["conversations"] == data["conversations"]
    assert (tmp_path / "model/chat_template.jinja").read_text(encoding="utf-8") == OWN_TEMPLATE
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<th>assistant messages trained</th>" in page
    assert f"<td>{train['turns']:,}</td>" in page  # the conversations table's turns
    assert f">{train['trainedMessages']}</td>" in page
    assert "<h3>Tokens</h3>" in page


def test_conversations_pack_and_train_a_lora_adapter_with_chatml_named(
    tmp_path: Path, chat_job: dict[str, Any]
) -> None:
    # Adapters on a random model (embeddings and head frozen) learn slowly: a higher
    # rate, as LoRA usually takes, and a smaller fall of the loss in 21 steps.
    lora = {**chat_job["training"], "learningRate": 5e-2, "lora": {"rank": 8, "alpha": 32}}
    config = config_of({**chat_job, "training": lora}, packing=True, chatTemplate="chatml")
    generation = {"generation": {"samples": 6, "maxNewTokens": 3}}  # the adapted model's
    config = config.model_copy(update={"evaluation": EvaluationSpec.model_validate(generation)})
    result = run_training(config, tmp_path, job_name="chat-packed", env={})
    assert_learns(result, by=0.97)
    table = result.report["generation"]  # validation rows stay unpacked
    assert table["after"]["checkpoint"] == result.report["bestCheckpoint"]  # by the loss
    assert all(row["reference"] in WORDS for row in table["rows"])
    assert all(row["prompt"].endswith("<|im_start|> assistant") for row in table["rows"])
    packing = result.report["data"]["packing"]
    assert packing["rows"] == 159
    assert packing["sequences"] < 159 / 3
    # The saved model renders conversations as it learnt them.
    saved_template = (tmp_path / "model/chat_template.jinja").read_text(encoding="utf-8")
    assert saved_template == CHATML_TEMPLATE


def assert_turns_explained(attributions: dict[str, Any], roles: list[list[str]]) -> None:
    """The first two validation dialogues, each explained at its last answer: one feature
    per message before it (its role first), and the generation prompt's header last."""
    assert attributions["features"] == "turns"
    examples = attributions["examples"]
    assert [[t["token"].split()[0] for t in e["tokens"]] for e in examples] == [
        [*messages[:-1], "assistant"] for messages in roles[:2]
    ]
    assert all(e["responseTokens"] >= 1 for e in examples)


def assert_generation_evaluated(report: dict[str, Any], output: Path) -> None:
    """Every evaluation has the generation metrics, the best one picked by exactMatch; the
    report's table holds each sampled prompt (the dialogue up to its last trained answer,
    with the generation prompt), its reference (that answer: the word after the last user
    word) and its completions before and after, scored as the metrics say."""
    evaluations = report["curves"]["evaluations"]
    assert all({"exactMatch", "tokenF1", "rougeL"} <= set(e["metrics"]) for e in evaluations)
    best = max(evaluations, key=lambda e: e["metrics"]["exactMatch"])
    assert report["primaryMetric"] == "exactMatch"
    assert report["bestMetrics"]["exactMatch"] == best["metrics"]["exactMatch"]
    generation = report["generation"]
    assert generation["after"]["checkpoint"] == report["bestCheckpoint"]
    after = generation["after"]
    assert after["step"] == best["step"]
    assert after["metrics"] == {name: best["metrics"][name] for name in after["metrics"]}
    rows = generation["rows"]
    assert len(rows) == generation["samples"] == 12
    for row in rows:
        # the word-level tokenizer decodes with a space between tokens
        last_user_word = row["prompt"].split("user")[-1].split("<|im_end|>")[0].strip()
        assert row["reference"] == WORDS[(WORDS.index(last_user_word) + 1) % len(WORDS)]
        assert row["prompt"].endswith("<|im_start|> assistant")
    for when in ("before", "after"):
        hits = [row[when] == row["reference"] for row in rows]
        assert generation[when]["metrics"]["exactMatch"] == sum(hits) / len(rows)
    lines = (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    evaluated = [json.loads(line) for line in lines if '"exactMatch"' in line]
    assert len(evaluated) >= len(evaluations)
    page = (output / "report.html").read_text(encoding="utf-8")
    assert 'id="generation"' in page
    assert f'<td class="text">{rows[0]["reference"]}</td>' in page


def test_conversations_cross_validate_in_whole_dialogues(
    tmp_path: Path, chat_job: dict[str, Any]
) -> None:
    config = config_of(
        {
            **chat_job,
            "training": {**chat_job["training"], "epochs": 1},
            "evaluation": {"crossValidation": {"folds": 2}},
        }
    )
    result = run_training(config, tmp_path, job_name="chat-folds", env={})
    assert result.succeeded
    summary = result.report["crossValidation"]
    folds = [json.loads((tmp_path / f"fold-{k}/report.json").read_text()) for k in range(2)]
    # Each of the 159 dialogues is validated in exactly one fold, as one row.
    assert [f["data"]["rows"]["validation_out"] for f in folds] == [80, 79]
    assert [f["data"]["rows"]["train_out"] for f in folds] == [79, 80]
    losses = [f["bestMetrics"]["loss"] for f in folds]
    assert summary["metrics"]["loss"]["folds"] == losses
    assert summary["metrics"]["loss"]["mean"] == pytest.approx(np.mean(losses))
    assert summary["bestFold"] == int(np.argmin(losses))
    assert result.report["bestMetrics"]["perplexity"] == pytest.approx(
        np.mean([f["bestMetrics"]["perplexity"] for f in folds])
    )
