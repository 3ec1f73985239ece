"""Shared fixtures: where the checkout and its examples are, manifests, a tiny model and data
to start from, and a FIFO posing as a data file."""

from __future__ import annotations

import copy
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from kubetune_operator.api.manifests import parse_documents

pytest_plugins = ["tests.kube.fixtures"]

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile("deep", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent
RUNTIME_EXAMPLES = [REPO / "examples/runtimes/small-cpu.yaml", REPO / "examples/runtimes/a100.yaml"]
AFTER_ANOTHER_RUN = [REPO / "examples/chat/dpo.yaml"]
"""Examples whose model is an earlier example's output (runs/chat-sft/merged): valid only
once that run has made it, so `kubetune validate` checks them beside a stand-in for it."""
EXAMPLE_MANIFESTS = sorted(
    path
    for path in (REPO / "examples").rglob("*.yaml")
    if path.name != "kustomization.yaml" and path not in RUNTIME_EXAMPLES
)


def required_program(*names: str, package: str) -> str:
    """The path of the first of `names` on PATH; else the test fails with one line saying
    what to install (CI installs it in .ci/run: a missing program is a broken setup)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"{names[0]} is not on PATH: apt-get install {package} (see the README)", pytrace=False
    )


def load_example(name: str) -> dict[str, Any]:
    """An example manifest (path relative to examples/) as plain data, read as kubectl reads it."""
    path = REPO / "examples" / name
    data: dict[str, Any] = parse_documents(path.read_text(), str(path))[0]
    return data


@pytest.fixture
def sentiment() -> dict[str, Any]:
    """A fresh copy of the sentiment example manifest, to mutate freely."""
    return copy.deepcopy(load_example("sentiment/job.yaml"))


@pytest.fixture
def every_section() -> dict[str, Any]:
    """A fresh copy of the manifest that uses every section of the spec."""
    return copy.deepcopy(load_example("sentiment/every-section.yaml"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT classifier (2 layers, 2 labels) knowing the sentiment words."""
    import csv

    from tests.tiny import make_tiny_model

    with (REPO / "examples/sentiment/data/train.csv").open(encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), texts)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """320 training and 80 validation rows of the sentiment example, as CSV files.

    The rows are clean (no repeated text, nothing shared between the splits), so the data
    quality rules keep every row and tests can count steps exactly.
    """
    import csv

    folder = tmp_path_factory.mktemp("small-data")
    seen: set[str] = set()
    paths = []
    for name, rows in (("train", 320), ("validation", 80)):
        with (REPO / f"examples/sentiment/data/{name}.csv").open(encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            kept = []
            for row in reader:
                if row["text"].lower() not in seen and len(kept) < rows:
                    seen.add(row["text"].lower())
                    kept.append(row)
        path = folder / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """A FIFO named like a data file, and whether anyone opened it for reading.

    A writer waits on it: a reader that opened it would read no rows and fail instead of
    blocking the test forever, and the writer's open returning shows that it was opened.
    """
    path = tmp_path / "fifo" / "train.csv"
    path.parent.mkdir()
    os.mkfifo(path)
    opened = threading.Event()

    def write() -> None:
        with path.open("wb"):
            opened.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    yield path, opened
    release = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets the waiting writer go
    writer.join()
    os.close(release)
