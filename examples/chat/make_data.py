"""Make the chat example's data: turn a sentence about a person into one exact JSON line.

The behaviour to teach has to be one the base model lacks, that a few dozen LoRA steps on
two CPU cores can teach, and that a person can check by reading: exact match of the
answer. Facts are a poor choice for a 135M model (it knows few, and fine-tuning does not
add knowledge so much as format); copying fields into a fixed shape is a good one. Asked
in plain words, SmolLM2-135M-Instruct answers with prose, code fences, other key names or
quoted numbers; after SFT it answers `{"name": "Ines", "age": 41, "job": "baker",
"city": "Porto"}` and nothing else.

Held-out prompts use names, jobs and cities that no training or validation row has, and
sentence wordings the training rows never use either, so exact match on them measures the
format learnt, not rows remembered.

For preference tuning (DPO) after SFT, preferences-{train,validation}.jsonl hold TRL's
conversational preference rows (messages, chosen, rejected) about a sentence that gives no
age: prefer `"age": null` to an invented age. test-no-age.jsonl holds held-out prompts
without an age, for evaluate.py --test.

    python examples/chat/make_data.py      # rewrites data/*.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

Person = dict[str, Any]
"""name, age, job, city: the answer's fields, in its order."""
Pools = tuple[list[str], list[str], list[str]]
"""The names, jobs and cities to draw from."""

SEED = 20261207
TRAIN_ROWS = 240
VALIDATION_ROWS = 40
TEST_ROWS = 50
INSTRUCTION = "Give the person's name, age, job and city as JSON."


def words(text: str) -> list[str]:
    return text.split()


NAMES = words(
    "Maria Ines Tomas Lena Omar Yuki Priya Jonas Clara Mateo Aisha Felix Nora Diego Sofia "
    "Hugo Amara Liam Elif Ravi Mina Oskar Zara Pablo Freya Kofi Alma Ivan Lucia Nils Rosa "
    "Tariq Eva Joao Leah Anton Beatriz Chen Dalia Erik Fatima Goran Hiro Ilse Jamal Kaia "
    "Hana Emil Leila Marco Greta Sami Ada Bruno Iris Kenji Olga Rafael"
)
JOBS = words(
    "nurse baker teacher pilot farmer plumber chemist lawyer painter tailor carpenter "
    "dentist welder butcher jeweller surgeon cashier courier editor gardener translator "
    "potter sculptor barber banker poet dancer judge "
    "architect florist librarian mechanic optician electrician journalist veterinarian"
)
CITIES = words(
    "Lisbon Porto Madrid Paris Berlin Vienna Prague Warsaw Oslo Dublin Rome Athens "
    "Cairo Nairobi Lagos Lima Quito Tokyo Seoul Hanoi Delhi Dhaka Sydney Perth Toronto "
    "Seville Lyon Munich Krakow Bergen Cork Milan Tunis Accra Bogota Osaka Manila Auckland "
    "Denver Boston Austin Chicago Havana Montreal Glasgow Kyoto Santiago Geneva"
)
TRAIN_TEMPLATES = [
    "{name}, {age}, is {a_job} from {city}.",
    "Meet {name}, {age}, who works as {a_job} in {city}.",
    "{name} lives in {city}, is {age} years old and works as {a_job}.",
    "Our new {job}, {name}, is {age} and just moved to {city}.",
    "In {city} there is {a_job} called {name} who turned {age} this year.",
]
TEST_TEMPLATES = [
    "{name} ({age}) has been {a_job} in {city} for years.",
    "At {age}, {name} still works as {a_job} in {city}.",
]
NO_AGE_TEMPLATES = [
    "{name} is {a_job} from {city}.",
    "Meet {name}, who works as {a_job} in {city}.",
    "In {city} there is {a_job} called {name}.",
]
NO_AGE_TEST_TEMPLATES = [
    "{name} has been {a_job} in {city} for years.",
    "{name} still works as {a_job} in {city}.",
]
PREFERENCE_ROWS = 200
PREFERENCE_VALIDATION_ROWS = 40


def split(items: list[str], held_out: int) -> tuple[list[str], list[str]]:
    """The first items for training and validation, the last `held_out` for the test."""
    return items[:-held_out], items[-held_out:]


def person(rng: random.Random, names: list[str], jobs: list[str], cities: list[str]) -> Person:
    return {
        "name": rng.choice(names),
        "age": rng.randint(19, 88),
        "job": rng.choice(jobs),
        "city": rng.choice(cities),
    }


def answer(fields: Person) -> str:
    """The one accepted answer: keys in this order, the age a number, one line."""
    return json.dumps(fields, ensure_ascii=False)


def prompt(rng: random.Random, fields: Person, templates: list[str]) -> str:
    article = "an" if fields["job"][0] in "aeiou" else "a"
    sentence = rng.choice(templates).format(a_job=f"{article} {fields['job']}", **fields)
    return f"{INSTRUCTION}\n{sentence}"


def conversation(user: str, assistant: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


def rows(
    rng: random.Random, count: int, pools: Pools, templates: list[str]
) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        fields = person(rng, *pools)
        out.append(conversation(prompt(rng, fields, templates), answer(fields)))
    return out


def preference(rng: random.Random, pools: Pools) -> dict[str, Any]:
    """A prompt without an age, the preferred answer saying `"age": null` and the worse
    one making an age up, as the SFT model does (it never saw a sentence without one).

    Only this kind: with half the rows of the opposite kind (age given, null rejected),
    two runs' reward accuracy rose to 1.0 and then fell to 0 from step 12 on, most likely
    because the kinds' prompts differ in length and kubetune's length-grouped batches held
    one kind each. Whether the model still copies a given age, test.jsonl measures."""
    fields = person(rng, *pools)
    without = {**fields, "age": None}
    return {
        "messages": [{"role": "user", "content": prompt(rng, without, NO_AGE_TEMPLATES)}],
        "chosen": [{"role": "assistant", "content": answer(without)}],
        "rejected": [{"role": "assistant", "content": answer(fields)}],
    }


def missing_age_test(rng: random.Random, count: int, pools: Pools) -> list[dict[str, Any]]:
    """Held-out prompts without an age, for evaluate.py --test: the expected answer says
    null, so exact match there is the rate of the wanted behaviour."""
    out = []
    for _ in range(count):
        fields = {**person(rng, *pools), "age": None}
        out.append(conversation(prompt(rng, fields, NO_AGE_TEST_TEMPLATES), answer(fields)))
    return out


def write(path: Path, table: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in table:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    names, test_names = split(NAMES, 12)
    jobs, test_jobs = split(JOBS, 8)
    cities, test_cities = split(CITIES, 10)
    data = Path(__file__).parent / "data"
    data.mkdir(exist_ok=True)
    seen = (names, jobs, cities)
    write(data / "train.jsonl", rows(rng, TRAIN_ROWS, seen, TRAIN_TEMPLATES))
    write(data / "validation.jsonl", rows(rng, VALIDATION_ROWS, seen, TRAIN_TEMPLATES))
    unseen = (test_names, test_jobs, test_cities)
    write(data / "test.jsonl", rows(rng, TEST_ROWS, unseen, TEST_TEMPLATES))
    rng = random.Random(SEED + 1)  # the preference rows leave the SFT rows as they were
    for name, count in [("train", PREFERENCE_ROWS), ("validation", PREFERENCE_VALIDATION_ROWS)]:
        table = [preference(rng, seen) for _ in range(count)]
        write(data / f"preferences-{name}.jsonl", table)
    write(data / "test-no-age.jsonl", missing_age_test(rng, TEST_ROWS, unseen))


if __name__ == "__main__":
    main()
