"""Packaging promises: the operator side installs and imports without torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.conftest import REPO

HEAVY = ("torch", "transformers", "accelerate", "datasets")


def test_operator_extra_pulls_no_torch() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base_and_operator = project["dependencies"] + project["optional-dependencies"]["operator"]
    assert not [d for d in base_and_operator if d.split("[")[0].split(">")[0] in HEAVY]


def test_trainer_extra_admits_the_cpu_torch_build_ci_installs() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = next(d for d in project["optional-dependencies"]["trainer"] if d.startswith("torch"))
    assert torch == "torch>=2.4,<2.15"


def test_api_cli_and_crd_generation_import_no_torch() -> None:
    code = (
        "import sys\n"
        "import kubetune_operator.cli, kubetune_operator.crdgen, kubetune_trainer.config\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
