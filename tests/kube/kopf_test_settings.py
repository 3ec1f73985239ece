"""Test timings for `kopf run` subprocesses: load it with `-m` before the handler module.

A subprocess cannot be handed a settings object, so this module's startup handler applies
`configure_for_tests` to kopf's settings; the handler module's own startup handlers run
after it and keep the last word.
"""

from __future__ import annotations

from typing import Any

import kopf

from tests.kube.operators import configure_for_tests


@kopf.on.startup()
def apply_test_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Retry fast and skip cluster scanning (see `configure_for_tests`)."""
    configure_for_tests(settings)
