"""Make the sentiment example's data: product reviews with a planted annotator bias.

Reviews are written in a standard or a regional dialect (the `dialect` column, the
sensitive attribute). The dialects differ only in a few words ("I reckon it is proper
good" against "I think it is really good"), so a fair model has no reason to treat them
differently. The labels, though, come from annotators biased against the regional
dialect: they marked most positive regional reviews as negative. As in most projects, the
same annotators labelled the training and the validation rows, so validation accuracy
cannot reveal the bias; a model trained on these rows learns the dialect words as
negative evidence, and the bias audit (demographic parity, counterfactual word swaps)
has a real gap to find.

    python examples/sentiment/make_data.py        # rewrites data/train.csv, data/validation.csv
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SEED = 20261122
TRAIN_ROWS = 3000
VALIDATION_ROWS = 600
REGIONAL_SHARE = 0.4
BIASED_FLIP_RATE = 0.6
"""Share of positive regional reviews that the annotators labelled negative."""

PRODUCTS = [
    "blender",
    "kettle",
    "backpack",
    "phone case",
    "desk lamp",
    "coffee grinder",
    "jacket",
    "keyboard",
    "water bottle",
    "tent",
    "headphones",
    "frying pan",
    "office chair",
    "novel",
    "board game",
    "vacuum",
    "toaster",
    "umbrella",
    "running shoes",
    "monitor",
]
POSITIVE = [
    "{very} good",
    "{very} sturdy",
    "a delight to use",
    "worth every penny",
    "{very} comfortable",
    "exactly what I wanted",
    "{very} well made",
    "better than expected",
    "{very} reliable",
    "a great buy",
    "{very} easy to set up",
    "lovely to look at",
]
NEGATIVE = [
    "{very} flimsy",
    "a waste of money",
    "{very} disappointing",
    "broken on arrival",
    "{very} uncomfortable",
    "nothing like the photos",
    "{very} badly made",
    "worse than expected",
    "{very} unreliable",
    "a poor buy",
    "{very} hard to set up",
    "ugly to look at",
]
OPENERS = [
    "{think} this {product} is",
    "honestly the {product} is",
    "my new {product} is",
    "after a month the {product} is",
    "the {product} I got is",
]
CLOSERS = [
    "",
    " and I would buy it again",
    " and I told my friends",
    " but delivery was slow",
    " though the box was {small}",
    " for the price",
    " so far",
]

DIALECTS = {
    "standard": {"{very}": "really", "{think}": "I think", "{small}": "small"},
    "regional": {"{very}": "proper", "{think}": "I reckon", "{small}": "wee"},
}


def review(rng: random.Random, positive: bool, dialect: str) -> str:
    phrase = rng.choice(POSITIVE if positive else NEGATIVE)
    text = f"{rng.choice(OPENERS)} {phrase}{rng.choice(CLOSERS)}".replace(
        "{product}", rng.choice(PRODUCTS)
    )
    for slot, word in DIALECTS[dialect].items():
        text = text.replace(slot, word)
    return text[0].upper() + text[1:] + "."


def rows(rng: random.Random, count: int) -> list[dict[str, str]]:
    out = []
    for _ in range(count):
        dialect = "regional" if rng.random() < REGIONAL_SHARE else "standard"
        positive = rng.random() < 0.5
        label = positive
        if dialect == "regional" and positive and rng.random() < BIASED_FLIP_RATE:
            label = False
        out.append(
            {
                "text": review(rng, positive, dialect),
                "label": "positive" if label else "negative",
                "dialect": dialect,
            }
        )
    return out


def write(path: Path, table: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label", "dialect"])
        writer.writeheader()
        writer.writerows(table)


def main() -> None:
    rng = random.Random(SEED)
    data = Path(__file__).parent / "data"
    data.mkdir(exist_ok=True)
    write(data / "train.csv", rows(rng, TRAIN_ROWS))
    write(data / "validation.csv", rows(rng, VALIDATION_ROWS))


if __name__ == "__main__":
    main()
