"""Attributions on a tiny BERT trained for a moment on a task that one word decides.

Rows holding "excellent" are positive, rows holding "terrible" negative, and rows with
neither neutral; every other word is random filler. (With two classes the model may learn
"excellent or not" and rightly give "terrible" no credit: the third class makes both
words necessary.) The tokenizer is WordPiece and splits both decisive words into
pieces ("excel ##lent", "terri ##ble"), so the tests also see pieces merged into words.
The embeddings are frozen while the rest trains, for the weight-change checks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from kubetune_trainer.config import AttributionSpec
from kubetune_trainer.examine.interpret import (
    LayerSnapshot,
    explain,
    merge_pieces,
    relative_weight_change,
    select_rows,
    snapshot_layer_groups,
)
from kubetune_trainer.freezing import find_layer_groups
from tests.tiny import make_wordpiece_tokenizer

FILLER = [
    *("the", "a", "movie", "plot", "actor", "scene", "film"),
    *("story", "music", "ending", "cast", "day", "night", "city"),
]
DECISIVE = {"excellent": 1, "terrible": 0, "": 2}
LABELS = ["negative", "positive", "neutral"]
STEPS = 120
SPEC = AttributionSpec(sample_size=24, steps=8, top_tokens=5)


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    return make_wordpiece_tokenizer([*FILLER, "excel", "##lent", "terri", "##ble"])


def synthetic(count: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        word = rng.choice(sorted(DECISIVE))
        words = rng.choices(FILLER, k=rng.randint(3, 7))
        if word:
            words.insert(rng.randint(0, len(words)), word)
        texts.append(" ".join(words))
        labels.append(DECISIVE[word])
    return texts, labels


def tokenized(tokenizer: PreTrainedTokenizerFast, texts: list[str], labels: list[int]) -> Any:
    """The columns data.py makes (token_type_ids included, as a BERT tokenizer's are)."""
    encoded = tokenizer(texts)
    return datasets.Dataset.from_dict(
        {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "token_type_ids": [[0] * len(ids) for ids in encoded["input_ids"]],
            "labels": labels,
            "length": [len(ids) for ids in encoded["input_ids"]],
        }
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core runner two threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    """A tiny BERT trained STEPS steps with frozen embeddings, its snapshot and validation rows."""
    torch.manual_seed(0)
    tokenizer = wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    names = dict(model.named_parameters())
    for name in find_layer_groups(model).embeddings:
        names[name].requires_grad_(False)
    snapshot = snapshot_layer_groups(model)
    texts, labels = synthetic(480, seed=1)
    train = tokenized(tokenizer, texts, labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(STEPS):
        rows = train.select(range((step * 32) % 480, (step * 32) % 480 + 32))
        batch = tokenizer.pad({"input_ids": rows["input_ids"][:]}, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(rows["labels"][:])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    val_texts, val_labels = synthetic(60, seed=2)
    val_labels[:6] = [(y + 1) % 3 for y in val_labels[:6]]  # label noise: confident errors to find
    return {
        "model": model,
        "tokenizer": tokenizer,
        "snapshot": snapshot,
        "rows": tokenized(tokenizer, val_texts, val_labels),
        "texts": val_texts,
        "groups": {"dialect": ["a" if i % 2 else "b" for i in range(60)]},
    }


def run_explain(trained: dict[str, Any], seed: int = 7, **spec: Any) -> dict[str, Any]:
    return explain(
        trained["model"],
        trained["tokenizer"],
        trained["rows"],
        trained["texts"],
        trained["groups"],
        LABELS,
        SPEC.model_copy(update=spec),
        seed,
    )


@pytest.fixture(scope="module")
def explained(trained: dict[str, Any]) -> dict[str, Any]:
    return run_explain(trained)


def test_the_decisive_word_ranks_first_in_its_class(explained: dict[str, Any]) -> None:
    assert explained["classes"]["positive"][0]["token"] == "excellent"
    assert explained["classes"]["negative"][0]["token"] == "terrible"
    for group in ("a", "b"):
        assert explained["groups"]["dialect"][group][0]["token"] in {"excellent", "terrible"}


def test_examples_show_words_without_pieces_or_specials(explained: dict[str, Any]) -> None:
    for example in explained["examples"]:
        tokens = [t["token"] for t in example["tokens"]]
        assert tokens == example["text"].split()
        assert not any(t.startswith("##") or t.startswith("[") for t in tokens)


def test_sample_size_and_confident_errors_first(explained: dict[str, Any]) -> None:
    examples = explained["examples"]
    assert len(examples) == SPEC.sample_size
    leading = min(sum(e["error"] for e in examples), SPEC.sample_size // 3)
    assert leading >= 6  # the rows with flipped labels, at least
    assert all(e["error"] for e in examples[:leading])
    confidences = [e["confidence"] for e in examples[:leading]]
    assert confidences == sorted(confidences, reverse=True)


def test_output_shape_is_json_safe_and_deterministic(
    trained: dict[str, Any], explained: dict[str, Any]
) -> None:
    assert set(explained) == {"classes", "groups", "examples", "layerConductance", "weightChange"}
    json.dumps(explained, allow_nan=False)
    assert [c["layer"] for c in explained["layerConductance"]] == ["block 0", "block 1"]
    assert sum(c["score"] for c in explained["layerConductance"]) == pytest.approx(1.0)
    assert run_explain(trained) == explained
    assert run_explain(trained, seed=8)["examples"] != explained["examples"]
    assert trained["model"].training


def test_no_rows_explain_nothing(trained: dict[str, Any]) -> None:
    empty = trained["rows"].select([])
    result = explain(trained["model"], trained["tokenizer"], empty, [], {}, LABELS, SPEC, 0)
    assert result == {
        "classes": {},
        "groups": {},
        "examples": [],
        "layerConductance": [],
        "weightChange": [],
    }


def test_frozen_groups_do_not_change_and_trained_ones_do(trained: dict[str, Any]) -> None:
    change = relative_weight_change(trained["model"], trained["snapshot"])
    assert [c["group"] for c in change] == ["embeddings", "block 0", "block 1", "head"]
    assert change[0]["relativeChange"] == 0.0
    assert all(c["relativeChange"] > 0 for c in change[1:])
    json.dumps(change, allow_nan=False)


def test_an_empty_group_changes_zero() -> None:
    model = torch.nn.Linear(2, 2)
    assert relative_weight_change(model, LayerSnapshot({"head": {}})) == [
        {"group": "head", "relativeChange": 0.0}
    ]


def test_misuse_is_a_clear_error(trained: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="sequence-classification"):
        explain(
            trained["model"],
            trained["tokenizer"],
            trained["rows"],
            trained["texts"],
            {},
            ["a", "b"],
            SPEC,
            0,
        )
    with pytest.raises(ValueError, match="input embeddings"):
        explain(torch.nn.Linear(2, 2), None, trained["rows"], [], {}, LABELS, SPEC, 0)


def test_pieces_merge_into_words() -> None:
    assert merge_pieces(["play", "##ing", "well"], [0.25, 0.5, 1.0]) == [
        ("playing", 0.75),
        ("well", 1.0),
    ]
    assert merge_pieces(["\u2581play", "ing", "\u2581well"], [1.0, 1.0, 1.0], marked=True) == [
        ("playing", 2.0),
        ("well", 1.0),
    ]


def test_selection_puts_confident_errors_first_then_stratifies() -> None:
    labels = np.array([0] * 60 + [1] * 30, dtype=np.int64)
    predicted = labels.copy()
    predicted[[3, 10, 70]] = 1 - predicted[[3, 10, 70]]
    confidence = np.linspace(0.5, 0.99, 90)
    chosen = select_rows(labels, predicted, confidence, 12, seed=0)
    assert chosen[:3].tolist() == [70, 10, 3]
    rest = labels[chosen[3:]]
    assert (rest == 0).sum() == 6
    assert (rest == 1).sum() == 3
    assert len(set(chosen.tolist())) == 12
    assert select_rows(labels, predicted, confidence, 12, seed=0).tolist() == chosen.tolist()
    assert len(select_rows(labels, predicted, confidence, 500, seed=0)) == 90
