"""Read kubetune manifests from files safely and check them against the API models.

Manifests come from users and from Git repositories nobody reviewed, so reading one must
never hang, exhaust memory or crash: the file size, nesting depth and alias-expanded size
are bounded (YAML bombs), bytes must be UTF-8, duplicate keys are reported rather than
silently merged, and every failure becomes a `ManifestError` or a list of `Problem`s
that name the file and the field. This is what `kubetune validate` and `kubetune run` use.
FineTuneJobs are checked, and so are FineTuneRuntime and ClusterFineTuneRuntime documents
(a platform team's `kubetune validate runtime.yaml`); other kinds (a Kustomization, a
ConfigMap beside a job) are not kubetune's to check and are skipped, except an unknown
kind of kubetune's own API group, which is a typo.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune_operator.api import runtime as runtime_api
from kubetune_operator.api import v1alpha1
from kubetune_operator.api.problems import Problem, problems_from, shown

MAX_MANIFEST_BYTES = 1_048_576
"""Kubernetes stores objects of about 1.5 MiB at most; a manifest file may hold a few."""
MAX_DEPTH = 64
MAX_EXPANDED_NODES = 100_000


class ManifestError(Exception):
    """A manifest file that cannot be read as YAML documents at all."""


@dataclass
class Checked:
    """The outcome of checking one document of a manifest file."""

    source: str
    """FILE, or FILE#N for the N-th document (from 1) of a multi-document file."""
    job: v1alpha1.FineTuneJob | None = None
    problems: list[Problem] = field(default_factory=list)
    skipped_kind: str | None = None
    """Set when the document is another kind of object, which kubetune leaves alone."""
    runtime: runtime_api.AnyRuntime | None = None
    """Set when the document is a valid FineTuneRuntime or ClusterFineTuneRuntime."""
    document: dict[str, Any] | None = None
    """The document as read, when it is valid (a runtime's defaults merge into it)."""

    @property
    def is_kubetune(self) -> bool:
        """Whether the document is, or was meant as, a kubetune resource (a broken one
        included), rather than another kind that kubetune leaves alone."""
        return self.skipped_kind is None

    @property
    def name(self) -> str:
        if self.runtime:
            return self.runtime.metadata.name
        return self.job.metadata.name if self.job else ""


def check_file(path: Path) -> list[Checked]:
    """Check every document in a manifest file; raise ManifestError if it cannot be read."""
    documents = load_documents(path)
    if not documents:
        raise ManifestError(f"{path}: holds no YAML document")
    return [
        check_document(doc, f"{path}#{i}" if len(documents) > 1 else str(path))
        for i, doc in enumerate(documents, start=1)
    ]


def check_document(document: Any, source: str) -> Checked:
    """Validate one parsed document as a FineTuneJob."""
    if not isinstance(document, dict):
        shape = "a list" if isinstance(document, list) else type(document).__name__
        return Checked(source, problems=[Problem("", f"must be a mapping (got {shape})")])
    kind, api_version = document.get("kind"), document.get("apiVersion")
    if isinstance(kind, str) and kind in runtime_api.RUNTIME_MODELS:
        return _check_runtime(document, source, runtime_api.RUNTIME_MODELS[kind])
    if kind != v1alpha1.KIND:
        if isinstance(kind, str) and kind and _in_kubetune_group(api_version):
            return Checked(source, problems=[Problem("kind", _unknown_kind(kind))])
        if isinstance(kind, str) and kind:
            return Checked(source, skipped_kind=shown(kind).strip("'\""))
        return Checked(source, problems=[Problem("kind", f"must be {v1alpha1.KIND}")])
    if api_version != v1alpha1.API_VERSION:
        message = f"must be {v1alpha1.API_VERSION} (got {shown(api_version)})"
        return Checked(source, problems=[Problem("apiVersion", message)])
    try:
        job = v1alpha1.FineTuneJob.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as error:
        return Checked(source, problems=problems_from(error, v1alpha1.FineTuneJob))
    return Checked(source, job=job, document=document)


def _in_kubetune_group(api_version: object) -> bool:
    return isinstance(api_version, str) and api_version.startswith(f"{v1alpha1.GROUP}/")


def _unknown_kind(kind: str) -> str:
    """A kind of kubetune's API group that it does not define: a typo, not another object."""
    kinds = [v1alpha1.KIND, *runtime_api.RUNTIME_MODELS]
    message = f"must be one of {', '.join(kinds)} (got {shown(kind)})"
    close = difflib.get_close_matches(kind, kinds, n=1, cutoff=0.6)
    return f"{message}; did you mean {close[0]}?" if close else message


def _check_runtime(
    document: dict[str, Any],
    source: str,
    model: type[runtime_api.FineTuneRuntime] | type[runtime_api.ClusterFineTuneRuntime],
) -> Checked:
    api_version = document.get("apiVersion")
    if api_version != v1alpha1.API_VERSION:
        message = f"must be {v1alpha1.API_VERSION} (got {shown(api_version)})"
        return Checked(source, problems=[Problem("apiVersion", message)])
    try:
        runtime = model.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as error:
        return Checked(source, problems=problems_from(error, model))
    return Checked(source, runtime=runtime, document=document)


def load_documents(path: Path) -> list[Any]:
    """The YAML documents of a file, each as plain Python data."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise ManifestError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return parse_documents(text, str(path))


def parse_documents(text: str, source: str) -> list[Any]:
    """Parse YAML text into documents within the size and depth bounds; empty documents
    are left out, as kubectl leaves them out (a trailing or doubled `---` is common)."""
    try:
        return _compose_and_construct(text, source)
    except yaml.MarkedYAMLError as error:
        raise ManifestError(f"{source}: {_yaml_message(error)}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"{source}: not valid YAML: {error}") from None


def _compose_and_construct(text: str, source: str) -> list[Any]:
    loader = _BoundedLoader(text)
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_expanded_size(node, source)
            document = loader.construct_document(node)
            if document is not None:  # an empty document, e.g. after a trailing `---`
                documents.append(document)
    finally:
        loader.dispose()
    return documents


def _yaml_message(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}{error.problem or error.context or 'not valid YAML'}"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader with a depth limit, duplicate-key errors, and YAML 1.2 style floats."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"keys must be text (got {key!r})", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"

# PyYAML follows YAML 1.1, where `1e-5` is a string; Kubernetes (and YAML 1.2) read a number.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    """Reject documents whose aliases expand to a huge (or infinite) tree."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise ManifestError(f"{source}: an alias refers to itself (recursive YAML)")
        in_progress.add(key)
        total = 1 + sum(size(child) for child in _children(node))
        in_progress.discard(key)
        if total > MAX_EXPANDED_NODES:
            raise ManifestError(
                f"{source}: expands to more than {MAX_EXPANDED_NODES} values "
                "(too many or too deeply repeated aliases)"
            )
        sizes[key] = total
        return total

    size(root)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
