"""The `kubetune` console script: Ctrl-C ends it with exit code 130 at any moment.

typer turns a Ctrl-C during a command into exit code 130, but the CLI imports typer, rich
and the API models for a second or two before any command starts, and a Ctrl-C then would
print an import traceback. This module imports nothing heavy itself, so it can catch that.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 128 + signal.SIGINT
"""130, what a shell reports for a command stopped by Ctrl-C (as typer exits on one)."""


def main() -> None:
    """Console-script entry point: the CLI, with a Ctrl-C during its start-up caught too."""
    try:
        from kubetune_operator.cli.app import main as run_cli

        run_cli()
    except KeyboardInterrupt:
        sys.stderr.write("kubetune: interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
