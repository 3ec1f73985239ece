"""A causal LM's data in tokens: the figures equal a count by hand on a small file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import prepare_data
from kubetune_trainer.data.token_budget import split_tokens
from tests.tiny import make_tokenizer

TRAIN = [
    {"prompt": "what is two plus two", "answer": "four"},  # 5 + (1 + end) = 7 tokens
    {"prompt": "say hi", "answer": "hi there friend"},  # 2 + (3 + end) = 6
    {"prompt": "tell a story", "answer": "once upon a time there was a kettle"},  # 3 + 9 = 12
]
VALIDATION = [{"prompt": "name a colour", "answer": "red"}]  # 3 + 2 = 5


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    words = [row[key] for row in TRAIN + VALIDATION for key in ("prompt", "answer")]
    made = make_tokenizer(words)
    made.eos_token = "[SEP]"
    return made


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def config_of(tmp_path: Path, **training: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": "unused", "task": "causal-lm"},
            "data": {
                "train": {"source": str(write_csv(tmp_path / "train.csv", TRAIN))},
                "validation": {"source": str(write_csv(tmp_path / "val.csv", VALIDATION))},
                "textColumn": "prompt",
                "textPairColumn": "answer",
                "maxLength": 8,
            },
            "training": {"batchSize": 1, "epochs": 3, **training},
        }
    )


def test_the_token_figures_equal_a_count_by_hand(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    prepared = prepare_data(config_of(tmp_path), tokenizer)
    tokens = prepared.report.to_report()["tokens"]
    train = tokens["splits"]["train"]
    assert train["rows"] == 3
    assert {key: train["promptTokens"][key] for key in ("p50", "max", "total")} == {
        "p50": 3.0,
        "max": 5,
        "total": 10,
    }
    assert train["promptTokens"]["p95"] == pytest.approx(3 + 0.9 * 2)  # between 3 and 5
    assert {key: train["responseTokens"][key] for key in ("p50", "max", "total")} == {
        "p50": 4.0,
        "max": 9,
        "total": 15,
    }
    assert sum(train["responseTokens"]["histogram"]["counts"]) == 3
    # maxLength 8 cuts the story after "once upon a time there" (3 + 5 tokens): 4 lost.
    assert train["tokensPerEpoch"] == 7 + 6 + 8
    assert train["lossTokensPerEpoch"] == 2 + 4 + 5
    assert (train["responsesCut"], train["responseTokensCut"]) == (1, 4)
    assert sum(len(ids) for ids in prepared.train["input_ids"]) == train["tokensPerEpoch"]
    validation = tokens["splits"]["validation"]
    assert (validation["tokensPerEpoch"], validation["lossTokensPerEpoch"]) == (5, 2)
    assert (validation["responsesCut"], validation["responseTokensCut"]) == (0, 0)
    assert (tokens["epochs"], tokens["tokensPerRun"], tokens["lossTokensPerRun"]) == (3, 63, 33)
    assert tokens["upperBound"] is False
    assert prepared.report.to_status()["message"].endswith(
        "; training reads 21 tokens per epoch (11 in the loss), 63 over 3 epochs; "
        "1 response cut by data.maxLength (4 tokens lost)"
    )


def test_max_steps_makes_the_run_total_an_upper_bound(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    prepared = prepare_data(config_of(tmp_path, maxSteps=2), tokenizer)
    assert prepared.report.tokens is not None
    assert prepared.report.tokens["upperBound"] is True
    assert "at most 63 over 3 epochs" in prepared.report.to_status()["message"]


def test_the_figures_do_not_depend_on_how_arrow_chunks_the_rows() -> None:
    prompt = [-100]
    rows = [prompt * 5 + [7, 8], prompt * 2 + [7, 8, 9, 10], prompt * 3 + list(range(9))]
    whole = split_tokens(pa.chunked_array([rows]), 8)
    assert split_tokens(pa.chunked_array([rows[:1], [], rows[1:]]), 8) == whole
    assert (whole["tokensPerEpoch"], whole["lossTokensPerEpoch"]) == (21, 11)
    assert (whole["responsesCut"], whole["responseTokensCut"]) == (1, 4)
