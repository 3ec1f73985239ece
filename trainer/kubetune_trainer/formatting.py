"""How kubetune writes a number for people: one rule for the status, the terminal and the pages.

A trial's learning rate reads 0.0001406 in `kubetune status`, in the search's Events, on
search.html and in report.html alike; an error from a library is shown by its first line.
The operator writes such values too, so this module holds them with the standard library
only (the operator has no torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

MISSING: Final = "\u2013"
"""Shown for a missing or non-finite value."""


def finite_number(value: object) -> float | None:
    """A finite number from JSON data (not a bool), or None: what a table right-aligns and a
    chart can plot."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def fmt_number(value: float) -> str:
    """Ints with thousands separators; other numbers with 4 significant digits."""
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return MISSING
    if 1e4 <= abs(value) < 1e15:
        return f"{float(f'{value:.4g}'):,.0f}"
    return significant(value)


def significant(value: float) -> str:
    """4 significant digits, with the exponent as a manifest writes it where one is needed:
    0.0001406, 1.406e-5, 0.5, 3."""
    text = f"{value:.4g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent)}"
    return text


def value_text(value: object) -> str:
    """A trial's parameter value or objective as people read it, in the terminal and on
    search.html alike: a sampled 0.00014059283 as 0.0001406 and 1.4059e-5 as 1.406e-5 (4
    significant digits), ints as they are (32, not 32.0), a category as it is, a
    missing or non-finite number as an en dash."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return significant(value) if math.isfinite(value) else MISSING
    return str(value)


def params_text(params: Mapping[str, object]) -> str:
    """A trial's values as `path=value, ...`, each value as value_text shows it."""
    return ", ".join(f"{path}={value_text(value)}" for path, value in params.items())


def first_line(error: BaseException) -> str:
    """An error's message as one line (its first), or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
