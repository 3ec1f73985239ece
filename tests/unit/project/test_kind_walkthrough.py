"""hack/kind-e2e.sh cannot run here (no Docker engine); its parts are checked instead.

What can be proved without a cluster: the script is valid bash, every file it reads
exists, its manifests are valid Kubernetes objects, its Helm values render the chart with
the images it builds, and the job it submits is valid and reads the claims it fills.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune_operator.api.manifests import check_file
from tests.conftest import REPO

SCRIPT = REPO / "hack/kind-e2e.sh"


def storage_objects() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((REPO / "hack/kind/storage.yaml").read_text()))


def test_the_script_is_valid_bash_and_every_file_it_names_exists() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    named = set(re.findall(r"(?:hack|examples|charts)/[\w./-]+", text))
    assert {"hack/kind/values.yaml", "examples/gitops/job.yaml", "charts/kubetune"} <= named
    missing = [path for path in named if not (REPO / path.split(":")[0]).exists()]
    assert missing == []


def test_the_storage_manifests_are_valid_objects() -> None:
    objects = storage_objects()
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    claims = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "PersistentVolumeClaim"}
    assert claims == {"kubetune-data", "kubetune-runs"}


def test_the_submitted_job_reads_and_writes_the_claims_the_script_creates() -> None:
    (checked,) = check_file(REPO / "examples/gitops/job.yaml")
    assert checked.job is not None
    spec = checked.job.spec
    sources = [spec.data.train.source, spec.data.validation.source, spec.output.uri]  # type: ignore[union-attr]
    claims = {str(uri).removeprefix("pvc://").split("/")[0] for uri in sources}
    assert claims == {"kubetune-data", "kubetune-runs"}
    copied = re.findall(r"kubetune-data-loader:/data/(\S+)", SCRIPT.read_text())
    assert sorted(copied) == ["sentiment/train.csv", "sentiment/validation.csv"]
    assert spec.data.train.source.endswith(copied[0])


def test_the_values_render_the_chart_with_the_images_the_script_builds() -> None:
    helm = REPO / ".ci/bin/helm"
    if not helm.exists() and shutil.which("helm") is None:
        pytest.skip("helm not found: run .ci/helm (CI does)")
    command = str(helm) if helm.exists() else "helm"
    rendered = subprocess.run(
        [command, "template", "kubetune", str(REPO / "charts/kubetune"), "--values",
         str(REPO / "hack/kind/values.yaml")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (deployment,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "kubetune-operator:dev"
    assert container["imagePullPolicy"] == "Never"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["KUBETUNE_TRAINER_IMAGE"] == "kubetune-trainer:dev-cpu"
    script = SCRIPT.read_text()
    assert "-t kubetune-operator:dev " in script
    assert "-t kubetune-trainer:dev-cpu " in script
