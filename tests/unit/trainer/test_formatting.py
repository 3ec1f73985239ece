"""An error shown by its first line (formatting.first_line), wherever a message quotes one."""

from __future__ import annotations

from kubetune_trainer.formatting import first_line


def test_an_error_is_shown_by_its_first_line_or_its_type() -> None:
    assert first_line(ValueError("  bad row 3\n  at offset 17\n")) == "bad row 3"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(KeyError()) == "KeyError"
