"""The trainer's report, checked and turned into a patch of its FineTuneJob's status.

A worker pod runs whatever image the job names, with a token that may patch one object:
the job's FineTuneJobReport. It may not write the FineTuneJob's status, which holds what
the operator rebuilds the workers from (the effective spec) and what its queue and
backoff count on (phase, restarts, queue position). The operator copies the report's
fields, each checked against the model, into the status: only the trainer's fields, only
from the report the job owns, and nothing that does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from kubetune_operator.api.v1alpha1 import TrainerReport

TRAINER_FIELDS: Final = tuple(
    field.alias or name for name, field in TrainerReport.model_fields.items()
)
"""The status fields the trainer reports (camelCase), and the only ones copied."""


@dataclass(frozen=True)
class Copy:
    """What a report changes in the status, and what in it was left out."""

    patch: dict[str, Any]
    """A merge patch that makes the status's trainer fields equal the report's."""
    refused: list[str]
    """One line per report field not copied, naming it and why."""


def status_copy(status: Mapping[str, Any], report: Mapping[str, Any]) -> Copy:
    """The patch that copies the report's valid trainer fields into `status`."""
    fields, refused = checked_fields(report.get("report") or {})
    patch = {}
    for name in TRAINER_FIELDS:
        if name in fields and status.get(name) != fields[name]:
            patch[name] = replacing(status.get(name), fields[name])
    return Copy(patch, refused)


def checked_fields(reported: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The reported fields that are trainer fields and fit the model, and a line for each
    one left out. Each field is checked alone, so one bad field keeps none of the others out."""
    kept: dict[str, Any] = {}
    refused: list[str] = []
    for name, value in reported.items():
        if name not in TRAINER_FIELDS:
            refused.append(f"report.{name}: not a field the trainer reports")
            continue
        try:
            TrainerReport.model_validate({name: value}, by_alias=True, by_name=False)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            refused.append(f"report.{where}: {first['msg']}")
            continue
        kept[name] = value
    return kept, refused


def replacing(old: Any, new: Any) -> Any:
    """`new` as a JSON merge patch (RFC 7386) over `old`: new itself, with null for each key
    of `old` it lacks, at every depth. Whole values, so that a patch laid over an index
    that lags (OperatorState.own_writes_over) shows the same as the patched object."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        patch[key] = replacing(old.get(key), value)
    return patch
