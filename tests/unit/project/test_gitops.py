"""The Argo CD health check (docs/gitops/finetunejob-health.lua) run in a real Lua runtime."""

from __future__ import annotations

from typing import Any

import pytest
from lupa import LuaRuntime

from tests.conftest import REPO

SCRIPT = (REPO / "docs/gitops/finetunejob-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """What Argo CD shows for `obj`: it runs the script with the object as the global `obj`."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def finetunejob(status: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "FineTuneJob", "metadata": {"name": "sentiment"}}
    if status is not None:
        body["status"] = status
    return body


def condition(kind: str, value: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": value, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, ("Progressing", "Waiting for the kubetune operator")),
        ({"phase": "Pending"}, ("Progressing", "Pending, 0% done")),
        ({"phase": "Running", "progress": {"percent": 42}}, ("Progressing", "Running, 42% done")),
        (
            {"phase": "Suspended"},
            ("Suspended", "Suspended (spec.runPolicy.suspend or a queue)"),
        ),
        (
            {"phase": "Succeeded", "metricSummary": "accuracy=0.880"},
            ("Healthy", "accuracy=0.880"),
        ),
        (
            {
                "phase": "Failed",
                "conditions": [
                    condition("Validated", "False", "InvalidSpec", "spec.resources.workers: >= 1")
                ],
            },
            ("Degraded", "InvalidSpec: spec.resources.workers: >= 1"),
        ),
        (
            {
                "phase": "Failed",
                "conditions": [
                    condition("Validated", "True", "Validated", "the spec is valid"),
                    condition("Failed", "True", "InvalidInput", "no rows left"),
                ],
            },
            ("Degraded", "InvalidInput: no rows left"),
        ),
        (
            {
                "phase": "Succeeded",
                "conditions": [
                    condition("BiasAuditPassed", "False", "BiasAuditFailed", "worst: regional")
                ],
            },
            ("Degraded", "Succeeded, but the bias audit failed: worst: regional"),
        ),
    ],
)
def test_phases_and_conditions_map_to_argo_cd_health(
    status: dict[str, Any] | None, expected: tuple[str, str]
) -> None:
    assert health(finetunejob(status)) == expected


def test_the_guide_shows_the_script_that_is_tested() -> None:
    guide = (REPO / "docs/gitops.md").read_text()
    indented = "\n".join(f"    {line}" if line else "" for line in SCRIPT.splitlines())
    assert indented in guide


def test_the_kustomization_renders_the_teams_valid_finetunejob() -> None:
    import subprocess

    import yaml

    from kubetune_operator.api.manifests import check_document

    kubectl = REPO / ".ci/bin/kubectl"
    if not kubectl.exists():
        pytest.skip("kubectl not found: run .ci/helm (CI does) to fetch it")
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(REPO / "examples/gitops")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (document,) = list(yaml.safe_load_all(rendered))
    checked = check_document(document, "kustomize output")
    assert checked.problems == []
    assert document["metadata"]["namespace"] == "team-a"
    assert document["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
