"""The files a run's report is written as, and how a page is written: one definition for the
trainer, which writes them, and the CLI, which reads them and writes search.html.

Standard library only, so `kubetune report` and `kubetune status` load it without torch or
matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

REPORT_JSON: Final = "report.json"
REPORT_HTML: Final = "report.html"


def write_text_atomically(path: Path, text: str) -> None:
    """Write UTF-8 text to a temporary file beside `path`, then rename it into place: a
    reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
