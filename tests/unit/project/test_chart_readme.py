"""The chart README's quick start, checked against what it names.

Its commands run on a cluster, which CI has not got, and the quick start once applied a
job whose data paths named files of a laptop. What can be checked without a cluster is
checked here: it installs into the namespace the root README uses, submits the cluster
variant of the example, copies the data to where that job reads it, and its pod for
copying the results out mounts the job's output claim and is a valid Pod.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import yaml

from kubetune_operator.api.manifests import check_file
from kubetune_trainer.config import parse_source
from tests.conftest import REPO

README = REPO / "charts/kubetune/README.md"
JOB = "examples/gitops/job.yaml"


def commands() -> str:
    """The README's shell blocks, one text."""
    return "\n".join(re.findall(r"```sh\n(.*?)```", README.read_text(), re.S))


def job_spec() -> Any:
    (checked,) = check_file(REPO / JOB)
    assert checked.job is not None
    return checked.job.spec


def storage_pod() -> dict[str, Any]:
    objects = yaml.safe_load_all((REPO / "hack/kind/storage.yaml").read_text())
    (pod,) = [obj for obj in objects if obj["kind"] == "Pod"]
    return dict(pod)


def test_it_installs_like_the_root_readme_and_submits_the_cluster_example() -> None:
    text = commands()
    helm = "helm install kubetune charts/kubetune -n kubetune-system --create-namespace"
    assert helm in text
    assert helm in (REPO / "README.md").read_text()
    assert f"kubetune submit {JOB}" in text
    assert "examples/sentiment/job.yaml" not in text
    named = set(re.findall(r"(?:hack|examples|charts)/[\w./-]+", text))
    assert [path for path in named if not (REPO / path).exists()] == []


def test_the_data_goes_where_the_job_reads_it() -> None:
    spec = job_spec()
    pod = storage_pod()
    (mount,) = pod["spec"]["containers"][0]["volumeMounts"]
    (volume,) = pod["spec"]["volumes"]
    copied = re.findall(rf"{pod['metadata']['name']}:{mount['mountPath']}/(\S+)", commands())
    read = [parse_source(spec.data.train.source), parse_source(spec.data.validation.source)]
    assert {source.authority for source in read} == {volume["persistentVolumeClaim"]["claimName"]}
    assert sorted(copied) == sorted(source.location for source in read)


def test_the_reader_pod_mounts_the_output_claim_and_copies_the_run_out() -> None:
    (manifest,) = re.findall(r"<<'EOF'\n(.*?)\nEOF\n", commands(), re.S)
    pod = yaml.safe_load(manifest)
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    (mount,) = pod["spec"]["containers"][0]["volumeMounts"]
    (volume,) = pod["spec"]["volumes"]
    output = parse_source(job_spec().output.uri)
    assert volume["persistentVolumeClaim"]["claimName"] == output.authority
    name, path = pod["metadata"]["name"], f"{mount['mountPath']}/{output.location}"
    assert re.search(rf"kubectl cp {name}:{path} (\S+)\n", commands())
    assert f"kubectl wait --for=condition=Ready pod/{name}" in commands()
