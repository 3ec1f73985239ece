"""A small soak: 25 jobs (plain, searches, queued) under API faults and one SIGKILL of the
operator end exactly as the same jobs do without faults (tests/kube/soak.py says how).

bench/operator_soak.py runs the same with 200 jobs and three kills, and prints figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kube.soak import DEFAULT_FAULTS, Soak, differences

JOBS = 25
TIMEOUT_S = 240.0
"""Generous (the faulty run takes under a minute): past it the jobs left are named, never a
speed check."""


@pytest.mark.slow
def test_faults_and_a_killed_operator_end_as_a_fault_free_run(tmp_path: Path) -> None:
    (tmp_path / "clean").mkdir()
    (tmp_path / "faulty").mkdir()
    clean = Soak(JOBS, tmp_path / "clean", timeout_s=TIMEOUT_S).run()
    faulty = Soak(
        JOBS, tmp_path / "faulty", faults=DEFAULT_FAULTS, kills=1, timeout_s=TIMEOUT_S
    ).run()

    assert clean.left == set()
    assert faulty.left == set(), faulty.logs
    assert {entry["phase"] for entry in clean.outcome.values()} == {"Succeeded"}
    assert differences(clean, faulty) == []
    assert clean.false_claims == faulty.false_claims == []
    assert faulty.restarts == 1
    assert {"500", "429", "watch cut"} <= set(faulty.injected)
