"""Property tests: malformed manifests always end in messages, never in an exception.

Hypothesis mutates a complete manifest (wrong types, unknown fields, removed fields,
out-of-range and huge values, odd Unicode) and throws raw bytes and random YAML at the
loader. Whatever it finds must come back as `Problem`s that name a field, or as a
`ManifestError`, and every message must stay short.
`HYPOTHESIS_PROFILE=deep pytest ...` searches 25 times longer.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune_operator.api.manifests import ManifestError, check_document, load_documents
from tests.conftest import load_example

BASE = load_example("sentiment/every-section.yaml")
MAX_MESSAGE = 600

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=3000),
    st.sampled_from(["", "1e-5", "cosine", "pvc://a/../b", "Always", "16Gi", "-1", "☃" * 50]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


ALL_PATHS = paths(BASE)


def mutate(document: Any, path: tuple[Any, ...], action: str, value: Any, key: str) -> Any:
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][key] = value
    return document


def assert_reported(document: Any) -> None:
    result = check_document(document, "fuzz.yaml")
    if result.skipped_kind:  # another kind of object: kubetune leaves it alone
        assert result.job is None
        assert not result.problems
        return
    assert (result.job is None) == bool(result.problems)
    for problem in result.problems:
        assert problem.message
        assert len(str(problem)) < MAX_MESSAGE, str(problem)[:200]
        assert problem.path.split(".")[0].split("[")[0] in (
            "",
            "apiVersion",
            "kind",
            "metadata",
            "spec",
            "status",
        )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ALL_PATHS),
            st.sampled_from(["replace", "delete", "add"]),
            values,
            st.text(min_size=1, max_size=20),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_manifests_are_reported_not_raised(mutations: list[tuple[Any, ...]]) -> None:
    document = copy.deepcopy(BASE)
    for path, action, value, key in mutations:
        try:
            document = mutate(document, path, action, value, key)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    assert_reported(document)


@given(values)
def test_any_document_shape_is_reported(document: Any) -> None:
    assert_reported(document)


@given(st.binary(max_size=3000))
def test_raw_bytes_load_or_fail_cleanly(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.yaml"
        path.write_bytes(raw)
        try:
            documents = load_documents(path)
        except ManifestError as error:
            message = str(error)
            documents = []
        else:
            message = str(path)
    assert message.startswith(str(path))
    for document in documents:
        assert_reported(document)


@given(values)
def test_dumped_yaml_of_any_shape_round_trips_or_fails_cleanly(document: Any) -> None:
    text = yaml.safe_dump(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "x"},
            "spec": document,
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            documents = load_documents(path)
        except ManifestError:
            return
    for parsed in documents:
        assert_reported(parsed)
