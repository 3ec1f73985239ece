"""Run the `kubetune` command as a fresh install of some extras would: a package that those
extras do not pull in (directly or through their requirements) cannot be imported.

The distributions' own metadata says what an install holds, so the tests follow pyproject
without a list of their own. It proves the imports, not the install: `.ci/run` installs the
README's commands into fresh virtual environments for that.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
OURS = frozenset({"kubetune_operator", "kubetune_trainer"})

GUARD = """
import sys
sys.modules.update(dict.fromkeys({blocked!r}))  # None there: import raises, find_spec is None
"""
KUBETUNE = """
sys.argv = ["kubetune", *{argv!r}]
from kubetune_operator.cli.console import main
main()
"""


def distributions(extras: tuple[str, ...]) -> set[str]:
    """kubetune's base requirements and those of `extras`, with everything they require."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pending = [(Requirement(r), "") for r in project["dependencies"]]
    pending += [
        (Requirement(r), "") for extra in extras for r in project["optional-dependencies"][extra]
    ]
    found: set[str] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if name == "kubetune":  # an extra naming others: kubetune[trainer]
            pending += [
                (Requirement(r), "")
                for nested in requirement.extras
                for r in project["optional-dependencies"][nested]
            ]
            continue
        if name in found:
            continue
        found.add(name)
        for line in importlib.metadata.requires(name) or []:
            pending += [(Requirement(line), e) for e in ("", *requirement.extras)]
    return found


def not_installed(extras: tuple[str, ...]) -> list[str]:
    """The top-level modules of this environment that an install of kubetune with `extras`
    would not have."""
    installed = distributions(extras)
    provided = importlib.metadata.packages_distributions()
    return sorted(
        module
        for module, names in provided.items()
        if not installed & set(map(canonicalize_name, names)) and module not in OURS
    )


def python_with(
    extras: tuple[str, ...], code: str, *, cwd: Path = REPO, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Python `code` in a subprocess that can import only what `extras` install."""
    guard = GUARD.format(blocked=not_installed(extras))
    return subprocess.run(
        [sys.executable, "-c", guard + code],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=timeout,
    )


def kubetune_with(
    extras: tuple[str, ...], *argv: str, cwd: Path = REPO, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`kubetune ARGV` in a subprocess that can import only what `extras` install."""
    return python_with(extras, KUBETUNE.format(argv=list(argv)), cwd=cwd, timeout=timeout)
