"""Which of a FineTuneJob's sources exist, as far as this machine can tell.

The API models check a source's form (`kubetune_trainer.config.parse_source`), never that
it exists, because where it must exist depends on where the job runs. `kubetune validate`
runs beside the manifest, so it checks here what can be checked here, and says what it
could not check rather than calling it valid:

- A relative path names a file beside the manifest, a file of this machine: `kubetune
  run` resolves it against the manifest's folder, and `kubetune submit` warns that pods
  cannot see it. Missing, it is a problem for a local run and a cluster alike.
- An absolute path (or file://) that does not exist here is only a note: it may name a
  file inside the trainer image, where the pods read it.
- pvc:// (a volume mounted in the pods) and hf:// (the hub, fetched at run time) cannot be
  checked here. pkg:// of a top-level package is looked for in the package as installed
  here (found, never imported); where it is not there it is a note too, since the trainer
  image may ship another version of the package.

spec.output.uri is not a source: the run creates it. Pure, apart from looking at the file
system and at where packages are installed.

Two looks inside a source are cheap enough to make here, where the run would otherwise
fail only once its pod has started: a job of conversations (data.messagesColumn) without
data.chatTemplate needs its model's tokenizer to have a chat template, and a local model
folder says so in its files; and a classifier's local bias.auditData file (CSV or JSON
lines, uncompressed) must hold the columns the audit reads, the sensitive columns among
them (the validation rows then need none: they are not audited).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubetune_operator.api.v1alpha1 import FineTuneJob
from kubetune_trainer.config import Source, parse_source
from kubetune_trainer.file_kinds import shown, special_kind


@dataclass(frozen=True)
class Unchecked:
    """A source this machine cannot check, and why."""

    field_path: str
    uri: str
    why: str


@dataclass(frozen=True)
class SourceCheck:
    """What checking a job's sources on this machine found."""

    problems: list[str] = field(default_factory=list)
    """Sources that cannot exist where the job runs: 'FIELD: PATH does not exist (...)'."""
    unchecked: list[Unchecked] = field(default_factory=list)

    def note(self) -> str | None:
        """What could not be checked, on one line: 'FIELD URI, FIELD URI (why); ...'."""
        if not self.unchecked:
            return None
        grouped: dict[str, list[str]] = {}
        for item in self.unchecked:
            grouped.setdefault(item.why, []).append(f"{item.field_path} {item.uri}")
        return "; ".join(f"{', '.join(sources)} ({why})" for why, sources in grouped.items())


def check_sources(job: FineTuneJob, manifest: Path) -> SourceCheck:
    """Check every source of `job`, read from `manifest`, against this machine."""
    found, folder = SourceCheck(), manifest_folder(manifest)
    for field_path, uri in job_sources(job):
        problem, why = _check(uri, folder)
        if problem is not None:
            found.problems.append(f"{field_path}: {problem}")
        if why is not None:
            found.unchecked.append(Unchecked(field_path, uri, why))
    for problem in (_chat_template_problem(job, folder), _audit_file_problem(job, folder)):
        if problem is not None:
            found.problems.append(problem)
    return found


_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")
"""Where a saved tokenizer keeps its chat templates besides tokenizer_config.json."""


def _chat_template_problem(job: FineTuneJob, folder: Path) -> str | None:
    """Conversations without spec.data.chatTemplate whose local model folder holds a
    tokenizer without a chat template."""
    data = job.spec.data
    source = parse_source(job.spec.model.source)
    if data.messages_column is None or data.chat_template is not None or source.scheme != "file":
        return None
    model = Path(source.location)
    model = model if model.is_absolute() else folder / model
    config = model / "tokenizer_config.json"
    if not config.is_file() or any((model / name).exists() for name in _TEMPLATE_FILES):
        return None
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the run reports a tokenizer it cannot read
    if isinstance(saved, dict) and saved.get("chat_template"):
        return None
    return (
        f"spec.data.chatTemplate: the tokenizer in {model} has no chat template to render "
        "spec.data.messagesColumn with; name one: 'chatml' for the built-in ChatML, or a "
        "Jinja template"
    )


AUDIT_FILE_CHECK_BYTES = 64 * 2**20
"""The largest JSON-lines audit file whose rows are read here for their keys."""


def _audit_file_problem(job: FineTuneJob, folder: Path) -> str | None:
    """A classifier's local bias.auditData file that lacks a column the audit reads."""
    spec = job.spec
    audit = spec.bias.audit_data if spec.bias is not None else None
    if audit is None or spec.model.task != "sequence-classification":
        return None
    source = parse_source(audit.source)
    path = Path(source.location)
    path = path if path.is_absolute() else folder / path
    if source.scheme != "file" or not path.is_file():
        return None  # not checked here, or reported as missing
    columns = _file_columns(path, audit.resolved_format())
    if columns is None:
        return None
    for role, column in spec.data.column_roles(with_label=True):
        if role != "data.weightColumn" and column not in columns:
            return (
                f"spec.{role}: column {column!r} is not in the audit file {path} "
                f"(spec.bias.auditData; columns: {', '.join(columns)})"
            )
    return None


def _file_columns(path: Path, data_format: str | None) -> list[str] | None:
    """The columns of an uncompressed CSV or JSON-lines file; None where that takes more than
    a look (Parquet, compressed, a large JSON-lines file) or the file does not parse."""
    try:
        if data_format == "csv" and path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8-sig", newline="") as handle:
                return next(csv.reader(handle), [])
        if data_format == "jsonl" and path.stat().st_size <= AUDIT_FILE_CHECK_BYTES:
            return _json_lines_keys(path)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        return None  # the run reports a file it cannot read
    return None


def _json_lines_keys(path: Path) -> list[str] | None:
    keys: dict[str, None] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line) if line.strip() else {}
            if not isinstance(row, dict):
                return None
            keys.update(dict.fromkeys(row))
    return list(keys)


def manifest_folder(manifest: Path) -> Path:
    """The folder that relative paths resolve against, as `kubetune run` resolves them (a
    linked manifest's target's folder); written as given when that is the same folder."""
    folder = manifest.resolve().parent
    return manifest.parent if manifest.parent.resolve() == folder else folder


def job_sources(job: FineTuneJob, keys: tuple[str, ...] = ("source",)) -> list[tuple[str, str]]:
    """(field path, URI) of every source the job reads: its model and its data files (with
    `keys` ("source", "uri"), its output too)."""
    spec = job.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return list(_locations(spec, "spec", keys))


def _locations(node: object, field_path: str, keys: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield f"{field_path}.{key}", value
            else:
                yield from _locations(value, f"{field_path}.{key}", keys)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _locations(item, f"{field_path}[{index}]", keys)


def _check(uri: str, folder: Path) -> tuple[str | None, str | None]:
    """(the problem, why it was not checked): at most one of them; neither when it exists."""
    source = parse_source(uri)  # the model accepted it, so it parses
    if source.scheme == "pvc":
        return None, "on a PersistentVolumeClaim, mounted only in the pods"
    if source.scheme == "hf":
        return None, "on the Hugging Face hub, fetched at run time"
    if source.scheme == "pkg":
        return None, _unchecked_package(source)
    return _check_path(source, folder)


def _check_path(source: Source, folder: Path) -> tuple[str | None, str | None]:
    path = Path(source.location)
    if not path.is_absolute():
        resolved = folder / path
        if resolved.exists():
            return _special(resolved), None
        return f"{resolved} does not exist (relative to the manifest's folder)", None
    if path.exists():
        return _special(path), None
    return None, "absolute, not on this machine: maybe a path inside the trainer image"


def _special(path: Path) -> str | None:
    """A path that would block or never end when read (a FIFO, a device), as a problem."""
    kind = special_kind(path.stat().st_mode)
    if kind is None:
        return None
    return f"{shown(path)} is {kind}, not a regular file or a directory"


def _unchecked_package(source: Source) -> str | None:
    """Why a pkg:// source was not checked; None when it exists in the installed package."""
    package = source.authority
    if "." in package:  # finding a subpackage would import its parent
        return f"in Python package {package}, not looked up here"
    try:
        spec = importlib.util.find_spec(package)  # a top-level name: found, not imported
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return f"in Python package {package}, not installed here: the trainer must have it"
    places = [Path(place) / source.location for place in spec.submodule_search_locations]
    if any(place.exists() for place in places):
        return None
    return f"not in Python package {package} as installed here"
