"""Packaging promises: the operator side installs and imports without torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.installs import distributions, kubetune_with, python_with

HEAVY = ("torch", "transformers", "accelerate", "datasets")


def test_operator_extra_pulls_no_torch() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base_and_operator = project["dependencies"] + project["optional-dependencies"]["operator"]
    assert not [d for d in base_and_operator if d.split("[")[0].split(">")[0] in HEAVY]


def test_the_operator_image_gets_no_matplotlib_and_the_trainer_does() -> None:
    """The operator image installs the operator extra alone; the pages' charts come with the
    report extra, which the trainer extra includes."""
    assert "matplotlib" not in distributions(("operator",))
    assert "matplotlib" in distributions(("report",))
    assert "matplotlib" in distributions(("trainer",))


def test_trainer_extra_admits_the_cpu_torch_build_ci_installs() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = next(d for d in project["optional-dependencies"]["trainer"] if d.startswith("torch"))
    assert torch == "torch>=2.4,<2.15"


def test_api_cli_and_crd_generation_import_no_torch() -> None:
    code = (
        "import sys\n"
        "import kubetune_operator.cli.app, kubetune_operator.api.crdgen, kubetune_trainer.config\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_status_and_report_in_the_terminal_import_no_matplotlib() -> None:
    """Only a page's charts need the report extra: `kubetune status NAME` and `kubetune
    report DIR` run with the operator extra alone."""
    code = (
        "from kubetune_operator.cli.views import job_status, run_summary\n"
        "print(sys.modules['matplotlib'])"  # None: the guard's, never imported
    )
    result = python_with(("operator",), code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "None"


def test_the_base_install_runs_help_validate_explain_and_crd() -> None:
    """`pip install kubetune` alone: the commands that need neither torch nor a cluster."""
    assert "Usage: kubetune" in kubetune_with((), "--help").stdout
    examples = [str(p) for p in sorted((REPO / "examples/sentiment").glob("*.yaml"))]
    checked = kubetune_with((), "validate", *examples)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.count("is valid") == len(examples)
    explained = kubetune_with((), "explain", "spec.training.epochs")
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.startswith("spec.training.epochs <integer>")
    crd = kubetune_with((), "crd", "--stdout")
    assert crd.returncode == 0, crd.stderr
    assert crd.stdout == (REPO / "crds/finetunejobs.kubetune.dev.yaml").read_text()


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (("run", "examples/sentiment/job.yaml", "--output", "unused"), "trainer"),
        (("submit", "examples/gitops/job.yaml", "--dry-run"), "operator"),
        (("status", "sentiment"), "operator"),
        (("operator",), "operator"),
    ],
)
def test_a_command_beyond_the_base_install_names_the_extra_it_needs(
    argv: tuple[str, ...], extra: str, tmp_path: Path
) -> None:
    result = kubetune_with((), *argv)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.endswith(f"is not installed: python -m pip install 'kubetune[{extra}]'"), line
    assert not (REPO / "unused").exists()


def test_a_search_page_from_the_cluster_names_the_report_extra(tmp_path: Path) -> None:
    """`kubetune status NAME --html` with the operator extra alone: its charts need
    matplotlib, which the report extra installs; said before any cluster is asked."""
    page = tmp_path / "search.html"
    result = kubetune_with(("operator",), "status", "sentiment", "--html", str(page))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line == (
        "✗ kubetune status --html needs matplotlib, which is not installed: "
        "python -m pip install 'kubetune[report]'"
    )
    assert not page.exists()


def test_the_trainer_extra_holds_what_a_run_and_a_search_import() -> None:
    """What `kubetune run` loads, for a plain job and a search, without the operator's
    cluster client (tests/integration/test_local_run.py trains that way too)."""
    code = (
        "from kubetune_operator.cli.local import runs, searches\n"
        "from kubetune_operator.cli.views import run_summary\n"
        "import kubetune_trainer.__main__, kubetune_trainer.launch\n"
        "runs.check_trainer_installed(search=True)\n"
        "print(sorted(m for m in ('kopf', 'kubernetes', 'urllib3') if sys.modules[m]))\n"
    )
    result = python_with(("trainer",), code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
