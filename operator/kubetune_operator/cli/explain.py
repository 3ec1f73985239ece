"""Describe FineTuneJob fields from the generated schema, like `kubectl explain` offline.

It reads the same structural schema that goes into the CRD, so what `kubetune explain`
prints is exactly what the API server will accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_operator.api.crdgen import Schema, openapi_schema


class UnknownFieldPathError(LookupError):
    """A dotted path that names no field of the FineTuneJob schema."""


@dataclass(frozen=True)
class FieldDoc:
    """One field as a reader needs it."""

    name: str
    type: str
    description: str
    constraints: str
    required: bool


def schema_at(path: str) -> Schema:
    """The schema node that a dotted path names, e.g. `spec.training.learningRate`."""
    node = openapi_schema()
    walked: list[str] = []
    for part in [p for p in path.split(".") if p]:
        node = node.get("items", node)
        children: dict[str, Schema] = node.get("properties", {})
        if part not in children:
            where = ".".join(walked) or "FineTuneJob"
            known = ", ".join(children) or "none: it is a plain value"
            raise UnknownFieldPathError(f"{where} has no field {part!r} (fields: {known})")
        node = children[part]
        walked.append(part)
    return node


def describe(node: Schema) -> list[FieldDoc]:
    """The fields directly below a node (through a list's items)."""
    node = node.get("items", node)
    required = set(node.get("required", ()))
    return [
        FieldDoc(
            name, type_name(sub), sub.get("description", ""), constraints(sub), name in required
        )
        for name, sub in node.get("properties", {}).items()
    ]


def type_name(node: Schema) -> str:
    """A short type for display: string, integer, []object, map[string]number, int-or-string."""
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"[]{type_name(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map[string]{type_name(node['additionalProperties'])}"
    return kind


def constraints(node: Schema) -> str:
    """Default, allowed values and bounds, in one line."""
    parts: list[str] = []
    if "default" in node and node["default"] != {}:
        parts.append(f"default {_plain(node['default'])}")
    if "enum" in node:
        parts.append("one of " + ", ".join(str(v) for v in node["enum"]))
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '>='} {_plain(low)}")
    if high is not None:
        parts.append(f"{'<' if node.get('exclusiveMaximum') else '<='} {_plain(high)}")
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} characters")
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    return "; ".join(parts)


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if abs(value) >= 1 else str(value)
    return str(value)


REFERENCE_FILE = "docs/reference.md"
REFERENCE_HEADER = """# FineTuneJob reference

Generated from the API models by `kubetune crd` (CI fails when it is stale); do not edit.
`kubetune explain PATH` and `kubectl explain ftj.PATH` print the same descriptions.
"""


def render_reference() -> str:
    """Every field of the FineTuneJob under spec and status: type, constraints, description."""
    sections: list[str] = [REFERENCE_HEADER]
    for path in ("spec", "status"):
        sections.extend(_reference_sections(path, schema_at(path)))
    return "\n".join(sections)


def _reference_sections(path: str, node: Schema) -> list[str]:
    fields = describe(node)
    if not fields:
        return []
    description = node.get("description", "")
    lines = [f"## `{path}`", "", *([description, ""] if description else [])]
    lines += ["| field | type | description |", "| --- | --- | --- |"]
    for doc in fields:
        name = f"`{doc.name}`" + (" (required)" if doc.required else "")
        text = doc.description + (f" *{doc.constraints}*" if doc.constraints else "")
        lines.append(f"| {name} | {doc.type} | {_cell(text)} |")
    lines.append("")
    body = node.get("items", node)
    children = body.get("properties", {})
    nested = [
        section
        for name, child in children.items()
        for section in _reference_sections(f"{path}.{name}", child)
    ]
    return lines + nested


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_reference(root: Path) -> bool:
    """Write docs/reference.md under `root`; True when it changed."""
    path, text = root / REFERENCE_FILE, render_reference()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def reference_is_stale(root: Path) -> bool:
    path = root / REFERENCE_FILE
    return not path.exists() or path.read_text(encoding="utf-8") != render_reference()
