"""Reading plain API objects (dicts from the API server and kopf's indexes) without
trusting their shape: a part that is missing, or not of the kind expected, reads as empty.

The controller reads its own FineTuneJobs through the API model; what it reads of objects
it does not own (Jobs, pods, Kueue's Workloads) and the status rules read plain, with
these helpers, the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any


def mapping(value: object) -> Mapping[str, Any]:
    """An object's field as a mapping; {} when it is absent or not one."""
    return value if isinstance(value, Mapping) else {}


def mappings(value: object) -> list[Mapping[str, Any]]:
    """A list field's objects; [] when it is absent or not a list."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def parse_time(text: str) -> datetime:
    """A timestamp as Kubernetes writes it (RFC 3339, `Z` or an offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
