"""Reading manifest files: hostile YAML is refused with a message, never a crash or a hang."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_operator.api.manifests import (
    MAX_MANIFEST_BYTES,
    ManifestError,
    check_document,
    check_file,
    load_documents,
    parse_documents,
)
from tests.conftest import EXAMPLE_MANIFESTS, REPO


def write(tmp_path: Path, content: str | bytes, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_every_example_is_a_valid_finetunejob() -> None:
    for path in EXAMPLE_MANIFESTS:
        results = check_file(path)
        assert [str(p) for r in results for p in r.problems] == [], path
        assert all(r.job for r in results), path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"missing.yaml: cannot read: No such file"):
        load_documents(tmp_path / "missing.yaml")


def test_a_directory_is_not_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read: Is a directory"):
        load_documents(tmp_path)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, b"kind: FineTuneJob\nmetadata: {name: \xff\xfe}\n")
    with pytest.raises(ManifestError, match=r"not UTF-8 text \(byte 35\)"):
        load_documents(path)


def test_oversized_file(tmp_path: Path) -> None:
    path = write(tmp_path, "a: " + "x" * MAX_MANIFEST_BYTES)
    with pytest.raises(ManifestError, match="larger than 1048576 bytes"):
        load_documents(path)


def test_billion_laughs_is_refused() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(ManifestError, match="expands to more than 100000 values"):
        parse_documents("\n".join(lines), "bomb.yaml")


def test_modest_aliases_are_fine() -> None:
    text = "base: &b {epochs: 2}\nother: *b\n"
    assert parse_documents(text, "x.yaml") == [{"base": {"epochs": 2}, "other": {"epochs": 2}}]


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(ManifestError, match="refers to itself"):
        parse_documents("a: &x [1, *x]\n", "loop.yaml")


@pytest.mark.parametrize("depth", [65, 5000])
def test_deep_nesting_is_refused(depth: int) -> None:
    text = "[" * depth + "]" * depth
    with pytest.raises(ManifestError, match="line 1, column 65: nested deeper than 64 levels"):
        parse_documents(text, "deep.yaml")


def test_duplicate_keys_are_an_error_with_the_line() -> None:
    text = "spec:\n  training:\n    epochs: 1\n    epochs: 2\n"
    with pytest.raises(ManifestError, match="line 4, column 5: duplicate key 'epochs'"):
        parse_documents(text, "dup.yaml")


def test_merge_keys_may_override() -> None:
    text = "base: &b {epochs: 2, seed: 1}\njob:\n  <<: *b\n  epochs: 3\n"
    assert parse_documents(text, "m.yaml")[1 - 1]["job"] == {"epochs": 3, "seed": 1}


def test_non_text_keys_are_an_error() -> None:
    with pytest.raises(ManifestError, match="keys must be text"):
        parse_documents("1: one\n", "k.yaml")


def test_syntax_error_names_line_and_column() -> None:
    with pytest.raises(ManifestError, match=r"bad.yaml: line 2, column \d+:"):
        parse_documents("a: [1, 2\nb: c\n", "bad.yaml")


def test_exponent_floats_read_as_numbers_like_kubectl() -> None:
    assert parse_documents("a: 1e-5\nb: -2E+3\nc: 1.5e-4\nd: '1e-5'\n", "f.yaml") == [
        {"a": 1e-5, "b": -2000.0, "c": 1.5e-4, "d": "1e-5"}
    ]


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="holds no YAML document"):
        check_file(write(tmp_path, "# nothing\n"))


def test_other_kinds_are_skipped_and_documents_numbered(tmp_path: Path) -> None:
    job = (REPO / "examples/sentiment/job.yaml").read_text()
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{job}"
    results = check_file(write(tmp_path, text))
    assert [(r.source.rsplit("/", 1)[-1], r.skipped_kind, r.name) for r in results] == [
        ("job.yaml#1", "ConfigMap", ""),
        ("job.yaml#2", None, "sentiment"),
    ]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([1, 2], ": must be a mapping (got a list)"),
        ("text", ": must be a mapping (got str)"),
        ({"apiVersion": "kubetune.dev/v1alpha1"}, "kind: must be FineTuneJob"),
        (
            {"apiVersion": "kubetune.dev/v2", "kind": "FineTuneJob"},
            "apiVersion: must be kubetune.dev/v1alpha1 (got 'kubetune.dev/v2')",
        ),
    ],
)
def test_documents_of_the_wrong_shape(document: Any, expected: str) -> None:
    problems = check_document(document, "job.yaml").problems
    assert [f"{p.path}: {p.message}" for p in problems] == [expected]


@pytest.mark.parametrize("separators", ["{job}---\n", "---\n{job}---\n---\n", "{job}\n---\nnull\n"])
def test_empty_documents_are_left_out_like_kubectl_does(tmp_path: Path, separators: str) -> None:
    job = (REPO / "examples/sentiment/job.yaml").read_text()
    results = check_file(write(tmp_path, separators.format(job=job)))
    assert [(r.source.rsplit("/", 1)[-1], r.name, r.problems) for r in results] == [
        ("job.yaml", "sentiment", [])
    ]


def test_a_file_of_empty_documents_holds_no_document(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="holds no YAML document"):
        check_file(write(tmp_path, "---\n---\n# nothing\n"))


def test_an_unknown_kind_of_kubetunes_group_is_a_typo_not_skipped() -> None:
    document = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FinetuneJob", "spec": {}}
    checked = check_document(document, "job.yaml")
    assert checked.skipped_kind is None
    assert [f"{p.path}: {p.message}" for p in checked.problems] == [
        "kind: must be one of FineTuneJob, FineTuneRuntime, ClusterFineTuneRuntime "
        "(got 'FinetuneJob'); did you mean FineTuneJob?"
    ]


@pytest.mark.parametrize(
    ("document", "kubetune"),
    [
        ({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}, False),
        ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}, False),
        ({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FinetuneJob"}, True),
        ({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob"}, True),
        ({"apiVersion": "kubetune.dev/v1alpha1"}, True),
        ([1, 2], True),
    ],
)
def test_a_document_is_kubetunes_unless_it_is_another_kind(document: Any, kubetune: bool) -> None:
    """What `kubetune validate` may skip: broken kubetune documents are kubetune's, to report."""
    assert check_document(document, "f.yaml").is_kubetune is kubetune


def test_the_kustomization_example_holds_only_a_skipped_kind() -> None:
    results = check_file(REPO / "examples/gitops/kustomization.yaml")

    assert [(r.skipped_kind, r.is_kubetune) for r in results] == [("Kustomization", False)]
