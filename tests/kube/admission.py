"""The API server's validation of custom resources, for the CRD unit tests and the emulator.

A CRD's `openAPIV3Schema` and its `x-kubernetes-validations` CEL rules are what a cluster
refuses a manifest with, before any operator sees it. The unit tests check the generated
CRD with these functions, and the emulator (tests/kube/emulator.py) refuses with them what
a cluster would refuse, so one evaluator serves both and they cannot drift apart.

How it follows the API server: the object is defaulted from the schema first (CEL rules
read defaulted fields), the structural schema is checked with jsonschema (Draft 4, the
dialect OpenAPI v3.0 schemas extend; `format` is not checked), then the CEL rules, each
typed as Kubernetes types it (`number` is always a double). A transition rule (one that
reads `oldSelf`) runs only on an update where the old object has the field. Lists are
atomic, so no transition rule runs below one. Messages are the API server's: the field
path, `Invalid value`, `Required value`, `Unsupported value` and so on.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import celpy
import jsonschema  # type: ignore[import-untyped]
from celpy import celtypes
from celpy.adapter import json_to_cel

Schema = dict[str, Any]

CEL: Final = celpy.Environment()


def to_cel(value: Any, schema: Schema) -> Any:
    """CEL values typed by the schema, as Kubernetes types them: `number` is always a double."""
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if schema.get("type") == "number":
        return celtypes.DoubleType(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", {})
        return celtypes.MapType(
            {celtypes.StringType(k): to_cel(v, props.get(k, extra)) for k, v in value.items()}
        )
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v, schema.get("items", {})) for v in value])
    return json_to_cel(value)


@functools.cache
def _program(rule: str) -> Any:
    # Compiling is the slow part of cel-python (a parser per rule); the rules are few.
    return CEL.program(CEL.compile(rule))


@dataclass(frozen=True)
class RuleFailure:
    """One CEL rule that does not hold, and the field it is declared on."""

    path: str
    message: str


def rule_failures(
    new: Any, old: Any = None, schema: Schema | None = None, path: str = "", ratchet: bool = False
) -> Iterator[RuleFailure]:
    """The CEL rules that fail for `new` (an update from `old` when given). With `ratchet`,
    a value equal to its old value is not checked again (CRD validation ratcheting, on by
    default since Kubernetes 1.30)."""
    schema = schema or {}
    if ratchet and old is not None and new == old:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": to_cel(new, schema)}
        if transition:
            activation["oldSelf"] = to_cel(old, schema)
        if not _program(rule["rule"]).evaluate(activation):
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            yield RuleFailure(rule.get("fieldPath", "").lstrip(".") or path, message)
    for name, sub in schema.get("properties", {}).items():
        if isinstance(new, dict) and name in new:
            old_value = old.get(name) if isinstance(old, dict) else None
            yield from rule_failures(new[name], old_value, sub, _join(path, name), ratchet)
    if isinstance(new, list) and "items" in schema:
        for index, item in enumerate(new):  # atomic lists: no transition rules below them
            yield from rule_failures(item, None, schema["items"], f"{path}[{index}]", ratchet)


def failed_rules(new: Any, old: Any = None, schema: Schema | None = None) -> list[str]:
    """Messages of the rules that fail for `new` (an update from `old` when given)."""
    return [failure.message for failure in rule_failures(new, old, schema)]


def apply_defaults(value: Any, schema: Schema) -> Any:
    """Fill in the schema's defaults the way the API server does before validating."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(value[name], sub)
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def prune_nulls(value: Any, schema: Schema) -> Any:
    """Drop the nulls of fields not marked `nullable`, as the API server does before
    defaulting (Kubernetes 1.20 on): `{"objective": null}` in a list item is stored as `{}`."""
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        kept = {}
        for name, item in value.items():
            sub = props.get(name, extra if isinstance(extra, dict) else None)
            if item is None and sub is not None and not sub.get("nullable"):
                continue
            kept[name] = prune_nulls(item, sub or {})
        return kept
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_nulls(item, schema["items"]) for item in value]
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _field_path(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return f'"{type(value).__name__.replace("dict", "object").replace("list", "array")}"'
    return json.dumps(value)


def schema_message(error: jsonschema.ValidationError) -> str:
    """One schema violation as the API server words it, e.g. `spec.resources.workers:
    Invalid value: 0: spec.resources.workers in body should be greater than or equal to 1`."""
    field = _field_path(error)
    value, bound = error.instance, error.validator_value
    if error.validator == "required":
        missing = str(error.message).split("'")[1]
        return f"{_join(field, missing)}: Required value"
    if error.validator == "enum":
        supported = ", ".join(json.dumps(choice) for choice in bound)
        return f"{field}: Unsupported value: {_shown(value)}: supported values: {supported}"
    if error.validator == "maxLength":
        return f"{field}: Too long: may not be more than {bound} bytes"
    if error.validator == "maxItems":
        return f"{field}: Too many: {len(value)}: must have at most {bound} items"
    return f"{field}: Invalid value: {_shown(value)}: {field} in body {_wording(error)}"


def _wording(error: jsonschema.ValidationError) -> str:
    bound = error.validator_value
    schema = error.schema
    words = {
        "minimum": f"should be greater than {_or_equal(schema, 'exclusiveMinimum')}{bound}",
        "maximum": f"should be less than {_or_equal(schema, 'exclusiveMaximum')}{bound}",
        "pattern": f"should match '{bound}'",
        "type": f"must be of type {bound}: {_shown(error.instance)}",
        "minLength": f"should be at least {bound} chars long",
        "minItems": f"should have at least {bound} items",
        "maxProperties": f"should have at most {bound} properties",
        "minProperties": f"should have at least {bound} properties",
    }
    return words.get(str(error.validator), f"is invalid: {error.message}")


def _or_equal(schema: Schema, exclusive: str) -> str:
    return "" if schema.get(exclusive) else "or equal to "


@dataclass
class CustomResourceSchema:
    """The validation of one served version of a CRD, as its API server applies it."""

    schema: Schema

    def __post_init__(self) -> None:
        self._validator = jsonschema.Draft4Validator(self.schema)

    @classmethod
    def of(cls, crd: Mapping[str, Any], version: str) -> CustomResourceSchema | None:
        """The version's schema, or None when it declares none."""
        for served in crd["spec"]["versions"]:
            if served["name"] == version and served.get("schema", {}).get("openAPIV3Schema"):
                return cls(served["schema"]["openAPIV3Schema"])
        return None

    def pruned(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The object as stored: the nulls of fields not marked nullable dropped."""
        result: dict[str, Any] = prune_nulls(dict(body), self.schema)
        return result

    def defaulted(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The object with the schema's defaults filled in."""
        result: dict[str, Any] = apply_defaults(copy.deepcopy(dict(body)), self.schema)
        return result

    def problems(self, new: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[str]:
        """What the API server refuses `new` for (an update from `old` when given): schema
        violations first, the CEL rules only for an object the schema accepts."""
        defaulted = self.defaulted(new)
        errors = sorted(self._validator.iter_errors(defaulted), key=lambda e: list(e.path))
        if errors:
            return [schema_message(error) for error in errors]
        previous = self.defaulted(old) if old is not None else None
        failures = rule_failures(defaulted, previous, self.schema, ratchet=old is not None)
        return [
            f"{f.path}: Invalid value: {_shown(_at(defaulted, f.path))}: {f.message}"
            for f in failures
        ]


def _at(body: Any, path: str) -> Any:
    """The value at a dotted path with [index] parts (None when absent)."""
    value = body
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            value = value[int(part[1:-1])] if isinstance(value, list) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
    return value
