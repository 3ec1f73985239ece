"""A causal LM's data-quality rules on plain columns: duplicates of a prompt and its response,
one prompt with conflicting responses, near-duplicate prompts, and leakage of prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.data import DataError, near_duplicates, prepare_data
from kubetune_trainer.data.quality import (
    NearDuplicateSettings,
    QualityError,
    QualitySettings,
    RuleMode,
    RuleSettings,
    check,
)
from tests.tiny import make_tokenizer

POEM = "please write a short and friendly poem about the quiet grey sea under the full moon"
TRAIN = [
    ("What is two plus two?", "four"),  # 0 conflicting with 1
    ("what is two plus two", "4"),  # 1
    ("say hi", "hi"),  # 2 kept
    ("Say hi!", "hi"),  # 3 duplicate of 2 (prompt and response)
    (POEM, "the sea sleeps"),  # 4 kept
    (POEM.replace("moon", "sun"), "the sea wakes"),  # 5 near-duplicate of 4
    ("name a colour", "red"),  # 6 leaked: the validation prompt
    ("tell me a story about a kettle and a lamp", "once upon a time"),  # 7 kept
]
VALIDATION = [("Name a colour.", "blue"), ("count to three", "one two three")]


def table(rows: list[tuple[str, str]]) -> pa.Table:
    prompts, responses = zip(*rows, strict=True)
    return pa.table({"prompt": list(prompts), "response": list(responses)})


def settings(mode: RuleMode = "warn") -> QualitySettings:
    warn = RuleSettings("warn")
    return QualitySettings(
        duplicates=warn,
        conflicting_labels=warn,
        empty=warn,
        garbage=warn,
        leakage=warn,
        conflicting_responses=RuleSettings(mode),
        near_duplicates=NearDuplicateSettings(mode, threshold=0.8),
        max_dropped_fraction=1.0,
    )


def run(quality: QualitySettings, response: str | None = "response") -> tuple[Any, Any]:
    keep, _, report = check(
        table(TRAIN),
        table(VALIDATION),
        text_column="prompt",
        label_column=None,
        settings=quality,
        prompt_column="prompt",
        response_column=response,
    )
    return keep, report


def matched_rows(report: Any, rule: str) -> list[int]:
    result = next(r for r in report.results if r.rule == rule and r.split == "train")
    return [example["row"] for example in result.examples]


def test_each_fault_of_prompts_and_responses_is_found() -> None:
    keep, report = run(settings("warn"))
    assert keep.all()
    assert matched_rows(report, "duplicates") == [3]
    assert matched_rows(report, "conflictingResponses") == [0, 1]
    assert matched_rows(report, "nearDuplicates") == [5]
    assert matched_rows(report, "leakage") == [6]
    assert report.flagged() == {
        "duplicates": 1,
        "conflictingResponses": 2,
        "nearDuplicates": 1,
        "leakage": 1,
    }


def test_without_a_response_column_a_repeated_prompt_is_a_duplicate() -> None:
    _, report = run(settings("warn"), response=None)
    assert matched_rows(report, "duplicates") == [1, 3]
    assert "conflictingResponses" not in {r.rule for r in report.results}


def test_drop_mode_leaves_the_rows_out() -> None:
    keep, report = run(settings("drop"))
    assert np.flatnonzero(~keep).tolist() == [0, 1, 5]
    assert report.dropped() == {"conflictingResponses": 2, "nearDuplicates": 1}
    assert report.rows_out["train"] == len(TRAIN) - 3


@pytest.mark.parametrize(
    ("rule", "field"),
    [("conflictingResponses", "conflicting_responses"), ("nearDuplicates", "near_duplicates")],
)
def test_fail_mode_names_the_rule_and_the_rows(rule: str, field: str) -> None:
    failing = settings("warn")
    kind = NearDuplicateSettings if field == "near_duplicates" else RuleSettings
    failing = QualitySettings(**{**failing.__dict__, field: kind("fail")})
    with pytest.raises(QualityError) as refused:
        run(failing)
    assert refused.value.rule == rule
    rows = "0, 1" if rule == "conflictingResponses" else "5"
    assert f"(file rows {rows}, counting from 0" in str(refused.value)


def test_a_near_duplicate_needs_most_trigrams_in_common() -> None:
    unrelated = "write a long and angry letter about the noisy red city under the hot sun"
    rows = [(POEM, "a"), (unrelated, "b"), ("say hi", "c"), ("say hello", "d")]
    keep, _, report = check(
        table(rows),
        None,
        text_column="prompt",
        label_column=None,
        settings=settings("drop"),
        prompt_column="prompt",
        response_column="response",
    )
    assert keep.all()
    assert next(r for r in report.results if r.rule == "nearDuplicates").matched == 0


def test_near_duplicates_do_not_depend_on_how_the_prompts_are_batched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(near_duplicates, "PROMPTS_PER_BATCH", 3)
    _, report = run(settings("warn"))
    assert matched_rows(report, "nearDuplicates") == [5]


def test_through_the_pipeline_a_failing_rule_names_its_field_and_rows(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    lines = [f'"{prompt}","{response}"' for prompt, response in TRAIN]
    train.write_text("prompt,response\n" + "\n".join(lines) + "\n", encoding="utf-8")
    validation = tmp_path / "validation.csv"
    validation.write_text("prompt,response\ncount to three,one two three\n", encoding="utf-8")

    def config(mode: str) -> TrainingConfig:
        return TrainingConfig.model_validate(
            {
                "model": {"source": "unused", "task": "causal-lm"},
                "data": {
                    "train": {"source": str(train)},
                    "validation": {"source": str(validation)},
                    "textColumn": "prompt",
                    "textPairColumn": "response",
                    "quality": {"conflictingResponses": {"mode": mode}},
                },
                "training": {"batchSize": 2},
            }
        )

    tokenizer = make_tokenizer([text for row in TRAIN for text in row])
    with pytest.raises(DataError) as refused:
        prepare_data(config("fail"), tokenizer)
    assert str(refused.value) == (
        f"data.quality.conflictingResponses: 2 of 8 train rows of {train} match (file rows "
        "0, 1, counting from 0) and the rule's mode is fail; fix those rows, or set "
        "data.quality.conflictingResponses.mode to drop or warn"
    )
    status = prepare_data(config("warn"), tokenizer).report.to_status()
    assert status["flagged"] == {"conflictingResponses": 2, "nearDuplicates": 1}
    assert status["dropped"] == {"duplicates": 1}
