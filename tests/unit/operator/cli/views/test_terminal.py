"""The pieces `kubetune status` and `kubetune report` both print with."""

from __future__ import annotations

import math

import pytest

from kubetune_operator.cli.views import terminal
from kubetune_trainer.formatting import MISSING


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1200, "1,200"),
        (0.8312345, "0.8312"),
        (12345.6, "12,350"),  # as report.html writes it, not 1.235e+04
        (1.4059e-5, "1.406e-5"),
        (math.nan, MISSING),
        (None, MISSING),
        (True, "True"),
        ("dialect", "dialect"),
    ],
)
def test_numbers_read_as_on_the_pages(value: object, shown: str) -> None:
    assert terminal.fmt(value) == shown


def test_a_labelled_line_aligns_its_text_where_the_label_fits() -> None:
    assert terminal.labelled("data", "ok", 15) == "[bold]data[/]           ok"
    assert terminal.labelled("parameter importance", "ok", 15) == (
        "[bold]parameter importance[/]  ok"
    )
    assert terminal.labelled("trials", "2", 0) == "[bold]trials[/]  2"
