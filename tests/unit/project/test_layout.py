"""The layout keeps the promises of docs/architecture.md as the code moves."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = (REPO / "operator/kubetune_operator", REPO / "trainer/kubetune_trainer")
ARCHITECTURE = REPO / "docs/architecture.md"
MAX_CLASS_LINES = 700


def product_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in package.rglob("*.py"))


def layout_block() -> str:
    """The tree in docs/architecture.md's "The layout" section."""
    section = ARCHITECTURE.read_text().split("## The layout", 1)[1]
    return section.split("```", 2)[1]


@pytest.mark.parametrize("module", product_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_architecture_names_every_module(module: Path) -> None:
    if module.name == "__init__.py":
        assert f"{module.parent.name}/" in layout_block(), module.parent
        return
    assert re.search(rf"\b{re.escape(module.stem)}\b", layout_block()), module


def test_architecture_names_only_folders_that_exist() -> None:
    named = set(re.findall(r"^\s+(\w+)/", layout_block(), re.M))
    folders = {p.name for package in PACKAGES for p in package.rglob("*") if p.is_dir()}
    assert named - {"operator", "trainer"} <= folders | {"unit", "integration", "e2e", "kube"}


def test_no_class_is_longer_than_700_lines() -> None:
    longest = {
        f"{module.relative_to(REPO)}:{node.name}": (node.end_lineno or node.lineno) - node.lineno
        for module in product_modules()
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.ClassDef)
    }
    assert {name: lines for name, lines in longest.items() if lines > MAX_CLASS_LINES} == {}
    assert max(longest.values()) > 100  # the walk saw the real classes


def test_the_data_pipeline_lives_in_data() -> None:
    trainer = REPO / "trainer/kubetune_trainer"
    top_level = {p.stem for p in trainer.glob("*.py")}
    pipeline = {p.stem for p in (trainer / "data").glob("*.py")} - {"__init__"}
    assert {"quality", "balance", "augment", "label_noise", "sources", "cache"} <= pipeline
    assert not top_level & {"quality", "balance", "augment", "label_noise", "sources"}
    assert not {name for name in top_level if name.startswith("data")}


def test_each_program_has_its_own_entry_point() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "kubetune": "kubetune_operator.cli.console:main",
        "kubetune-operator": "kubetune_operator.controller.main:main",
    }
