"""Shared fixtures: where the checkout and its examples are, and manifests to start from."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_MANIFESTS = sorted((REPO / "examples").rglob("*.yaml"))


def load_example(name: str) -> dict[str, Any]:
    """An example manifest (path relative to examples/) as plain data."""
    data: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())
    return data


@pytest.fixture
def sentiment() -> dict[str, Any]:
    """A fresh copy of the sentiment example manifest, to mutate freely."""
    return copy.deepcopy(load_example("sentiment/job.yaml"))


@pytest.fixture
def every_section() -> dict[str, Any]:
    """A fresh copy of the manifest that uses every section of the spec."""
    return copy.deepcopy(load_example("sentiment/every-section.yaml"))
