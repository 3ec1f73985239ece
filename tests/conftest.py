"""Shared fixtures: where the checkout and its examples are, and manifests to start from."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from kubetune_operator.manifests import parse_documents

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile("deep", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_MANIFESTS = sorted((REPO / "examples").rglob("*.yaml"))


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
