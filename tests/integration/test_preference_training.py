"""training.objective dpo end to end on CPU: a tiny GPT-2 learns to prefer the responses
that end with "good" over those that end with "bad", and every output carries the rewards."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubetune_trainer.__main__ import run_training
from kubetune_trainer.config import TrainingConfig
from tests.integration.test_trainer import assert_same_loss_curve, crash_then_resume
from tests.tiny import make_tiny_causal_lm, make_tiny_chat_lm

WORDS = [f"w{i}" for i in range(30)] + ["good", "bad"]
REWARDS = ("chosenReward", "rejectedReward", "rewardMargin", "rewardAccuracy")


def preference_rows(rows: int, seed: int) -> list[tuple[str, str, str]]:
    """Random prompts; both responses the same random words, the chosen one ending with
    "good" and the rejected one with "bad": a preference the model can learn."""
    rng = np.random.default_rng(seed)
    table = []
    for _ in range(rows):
        prompt = " ".join(rng.choice(WORDS[:30], rng.integers(2, 6)))
        words = " ".join(rng.choice(WORDS[:30], rng.integers(1, 4)))
        table.append((prompt, f"{words} good", f"{words} bad"))
    return table


def write_rows(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def preference_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("dpo")
    train = write_rows(folder / "train.csv", preference_rows(64, seed=0))
    validation = write_rows(folder / "validation.csv", preference_rows(16, seed=1))
    return {
        "model": {"source": str(make_tiny_causal_lm(folder / "gpt", WORDS)), "task": "causal-lm"},
        "data": {
            "train": {"source": str(train)},
            "validation": {"source": str(validation)},
            "textColumn": "prompt",
            "maxLength": 32,
            "quality": {"duplicates": {"mode": "warn"}},
        },
        "training": {
            "objective": "dpo",
            "epochs": 3,
            "batchSize": 8,
            "learningRate": 1e-2,
            "seed": 3,
            "preference": {"beta": 0.5},
        },
        "regularization": {"dropout": 0.0},
    }


def events(path: Path, kind: str) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == kind]


def test_a_dpo_run_learns_the_preference_and_reports_its_rewards(
    tmp_path: Path, preference_job: dict[str, Any]
) -> None:
    config = TrainingConfig.model_validate(preference_job, by_name=False)
    result = run_training(config, tmp_path, job_name="dpo", env={})
    assert result.succeeded, result.message
    evaluations = result.report["curves"]["evaluations"]
    first, last = evaluations[0], evaluations[-1]
    assert set(REWARDS) <= set(last["metrics"])
    assert set(REWARDS) <= set(last["trainMetrics"])
    assert "perplexity" not in last["trainMetrics"]
    assert last["trainMetrics"]["rewardAccuracy"] > 0.9
    assert last["trainMetrics"]["rewardMargin"] > first["trainMetrics"]["rewardMargin"] > 0
    assert last["metrics"]["rewardAccuracy"] > 0.9
    steps = events(tmp_path / "metrics.jsonl", "step")
    assert set(REWARDS) <= set(steps[-1]["metrics"])
    assert steps[-1]["metrics"]["rewardMargin"] > steps[0]["metrics"]["rewardMargin"]
    evaluated = events(tmp_path / "metrics.jsonl", "eval")
    assert evaluated[-1]["metrics"]["rewardMargin"] == pytest.approx(
        last["metrics"]["rewardMargin"]
    )
    saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert saved["curves"]["evaluations"][-1]["metrics"]["rewardAccuracy"] > 0.9
    assert 'id="chart-rewards"' in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_resumed_dpo_run_continues_the_same_curve_and_rewards(
    tmp_path: Path, preference_job: dict[str, Any]
) -> None:
    """The reference log-probabilities are computed again from the starting model at the
    restart, so the resumed run sees the numbers the first start saw."""
    job = {
        **preference_job,
        "training": {**preference_job["training"], "epochs": 1},
        "output": {"checkpointEverySteps": 3},
    }
    config = TrainingConfig.model_validate(job, by_name=False)
    straight = run_training(config, tmp_path / "straight", job_name="dpo", env={})
    resumed_from, result = crash_then_resume(config, tmp_path / "resumed", "dpo", 6)
    assert resumed_from == tmp_path / "resumed/checkpoints/step-00000006"
    assert_same_loss_curve(result, straight)
    for name in REWARDS:
        assert result.metrics[name] == pytest.approx(straight.metrics[name], rel=1e-4, abs=1e-6)


def test_a_conversational_dpo_run_learns_the_preference(tmp_path: Path) -> None:
    """TRL's conversational preference format: a prompt conversation, and each answer a
    list of one assistant message, rendered with the chat template."""

    def conversations(rows: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        return [
            {
                "messages": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
            for prompt, chosen, rejected in rows
        ]

    for name, rows in (("train", preference_rows(64, 0)), ("validation", preference_rows(16, 1))):
        lines = [json.dumps(row) for row in conversations(rows)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = {
        "model": {"source": str(make_tiny_chat_lm(tmp_path / "gpt", WORDS)), "task": "causal-lm"},
        "data": {
            "train": {"source": str(tmp_path / "train.jsonl")},
            "validation": {"source": str(tmp_path / "validation.jsonl")},
            "messagesColumn": "messages",
            "chatTemplate": "chatml",
            "maxLength": 48,
            "quality": {"duplicates": {"mode": "warn"}},
        },
        "training": {"objective": "dpo", "epochs": 2, "batchSize": 8, "learningRate": 1e-2},
        "regularization": {"dropout": 0.0},
    }
    config = TrainingConfig.model_validate(job, by_name=False)
    result = run_training(config, tmp_path / "out", job_name="chat-dpo", env={})
    assert result.succeeded, result.message
    assert result.report["data"]["rows"]["train_out"] == 64
    evaluations = result.report["curves"]["evaluations"]
    assert evaluations[-1]["metrics"]["rewardAccuracy"] > 0.9
    assert evaluations[-1]["metrics"]["rewardMargin"] > evaluations[0]["metrics"]["rewardMargin"]


def test_a_simpo_run_learns_the_preference_without_a_reference(
    tmp_path: Path, preference_job: dict[str, Any]
) -> None:
    training = {**preference_job["training"], "objective": "simpo", "epochs": 2}
    training["preference"] = {"beta": 2.0, "gamma": 0.5}
    config = TrainingConfig.model_validate({**preference_job, "training": training}, by_name=False)
    result = run_training(config, tmp_path, job_name="simpo", env={})
    assert result.succeeded, result.message
    first, last = (
        result.report["curves"]["evaluations"][0],
        result.report["curves"]["evaluations"][-1],
    )
    assert last["metrics"]["rewardAccuracy"] > 0.9
    assert last["trainMetrics"]["rewardMargin"] > first["trainMetrics"]["rewardMargin"]
