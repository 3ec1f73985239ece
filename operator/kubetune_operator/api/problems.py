"""Turn pydantic validation errors into messages a person can act on.

The operator puts these messages in the `Validated=False` condition and an Event;
`kubetune validate` and `kubetune run` print the same ones. Each names the field by its
manifest path (`spec.training.learningRate`), says what is allowed, and shows what was
given, shortened so that a hostile value cannot flood a status or a terminal.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kubetune_operator.api import v1alpha1

MAX_SHOWN_VALUE = 60
MAX_MESSAGE = 400

PATTERN_HINTS = {
    v1alpha1.DNS_LABEL_PATTERN: (
        "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a "
        "letter or digit"
    ),
    v1alpha1.DNS_SUBDOMAIN_PATTERN: "a DNS-1123 subdomain: lowercase labels joined by '.'",
    v1alpha1.QUANTITY_PATTERN: "a Kubernetes quantity above zero such as 4, 500m, 16Gi",
    v1alpha1.IMAGE_PATTERN: "a container image reference such as registry.example/team/trainer:1.2",
    v1alpha1.EXTENDED_RESOURCE_PATTERN: (
        "an extended resource name with a domain, such as nvidia.com/gpu or amd.com/gpu "
        "(not cpu, memory, ephemeral-storage or hugepages-*)"
    ),
    v1alpha1.LABEL_KEY_PATTERN: "a label key such as example.com/team",
    v1alpha1.DURATION_PATTERN: "a duration in hours, minutes and seconds such as 90s, 30m, 1h30m",
}

_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_parsing": "a number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
}

_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where, and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def problems_from(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """One problem per field, in the order pydantic found them."""
    found: dict[str, tuple[Problem, bool]] = {}
    for detail in error.errors(include_url=False):
        loc = _field_loc(detail["loc"])
        problem = Problem(_path(loc), _capped(_message(detail, loc, root), MAX_MESSAGE))
        # A union (int | quantity string) fails once per member: the member whose type
        # matched says more than the one whose type did not.
        type_mismatch = detail["type"] in _TYPE_NAMES
        earlier = found.get(problem.path)
        if earlier is None or (earlier[1] and not type_mismatch):
            found[problem.path] = (problem, type_mismatch)
    return [problem for problem, _ in found.values()]


def _field_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the tags pydantic adds for union members and validators (e.g. 'int', 'function-after[...]')."""
    return tuple(
        part for part in loc if isinstance(part, int) or not (part in _UNION_TAGS or "[" in part)
    )


_UNION_TAGS = frozenset(
    {"int", "str", "float", "bool", "none", "constrained-int", "constrained-str", "list", "dict"}
)


def _path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = _capped(part, MAX_SHOWN_VALUE)
            text += f".{name}" if text else name
    return text


def _capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _message(detail: ErrorDetails, loc: tuple[str | int, ...], root: type[BaseModel]) -> str:
    kind, ctx, value = detail["type"], detail.get("ctx", {}), detail.get("input")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return _unknown_field(loc, root)
    if kind == "literal_error":
        return _not_allowed(ctx.get("expected", ""), value)
    if kind in _BOUNDS:
        key, symbol = _BOUNDS[kind]
        return f"must be {symbol} {ctx.get(key)} (got {shown(value)})"
    if kind in ("string_too_long", "too_long"):
        unit = "characters" if kind == "string_too_long" else "items"
        return f"must have at most {ctx.get('max_length')} {unit} (got {_length(value)})"
    if kind in ("string_too_short", "too_short"):
        unit = "characters" if kind == "string_too_short" else "items"
        return f"must have at least {ctx.get('min_length')} {unit} (got {_length(value)})"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return (
            f"must be {PATTERN_HINTS.get(pattern, f'text matching {pattern}')} (got {shown(value)})"
        )
    if kind in ("finite_number",):
        return "must be a finite number"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]} (got {_described(value)})"
    if kind == "value_error":
        return str(ctx.get("error", detail["msg"]))
    return f"{detail['msg'][0].lower()}{detail['msg'][1:]}"


def _unknown_field(loc: tuple[str | int, ...], root: type[BaseModel]) -> str:
    allowed = _fields_at(root, loc[:-1])
    name = str(loc[-1])
    if not allowed:
        return "unknown field"
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"allowed here: {', '.join(allowed)}"
    return f"unknown field; {hint}"


def _fields_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The manifest field names allowed at a location, walking the model by alias."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        model = v1alpha1.nested_model(field.annotation) if field else None
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _not_allowed(expected: str, value: Any) -> str:
    options = [o.strip().strip("'") for o in expected.replace(" or ", ", ").split(",")]
    message = f"must be one of {', '.join(options)} (got {shown(value)})"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {close[0]}?"
    return message


def shown(value: Any) -> str:
    """A value as repr, cut short: hostile input must not flood a status or a terminal."""
    return _capped(repr(value), MAX_SHOWN_VALUE)


def _described(value: Any) -> str:
    kinds: dict[type, str] = {
        dict: "a mapping",
        list: "a list",
        type(None): "null",
        bool: "a boolean",
    }
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return name
    return f"{type(value).__name__} {shown(value)}"


def _length(value: Any) -> int:
    return len(value) if hasattr(value, "__len__") else 0
