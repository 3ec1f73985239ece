"""The trainer's report, checked and copied into the status (controller/reports.py)."""

from __future__ import annotations

from typing import Any

from kubetune_operator import builders
from kubetune_operator.controller import reports
from tests.kube.emulator import merge_patch

JOB = {"metadata": {"name": "sentiment", "uid": "uid-1"}}


def report(fields: dict[str, Any], uid: str = "uid-1", controller: bool = True) -> dict[str, Any]:
    owner = {"kind": "FineTuneJob", "name": "sentiment", "uid": uid, "controller": controller}
    return {"metadata": {"name": "sentiment", "ownerReferences": [owner]}, "report": fields}


def test_only_the_jobs_own_report_is_read() -> None:
    assert builders.owned_by(report({}), JOB)
    assert not builders.owned_by(report({}, uid="uid-2"), JOB), "a namesake of another job"
    assert not builders.owned_by(report({}, controller=False), JOB)
    assert not builders.owned_by({"metadata": {"name": "sentiment"}}, JOB), "nobody's"


def test_the_trainer_fields_are_copied_and_nothing_else() -> None:
    copied = reports.status_copy(
        {"phase": "Running", "restarts": 1},
        report(
            {
                "progress": {"step": 7, "totalSteps": 20},
                "metricSummary": "accuracy=0.7500",
                "phase": "Succeeded",
                "effectiveSpec": {"resources": {"image": "evil.example/miner"}},
            }
        ),
    )
    assert copied.patch == {
        "progress": {"step": 7, "totalSteps": 20},
        "metricSummary": "accuracy=0.7500",
    }
    assert copied.refused == [
        "report.phase: not a field the trainer reports",
        "report.effectiveSpec: not a field the trainer reports",
    ]


def test_a_field_that_does_not_fit_the_model_is_left_out_alone() -> None:
    copied = reports.status_copy(
        {},
        report(
            {
                "progress": {"step": -1},
                "diagnosis": {"verdict": "Splendid"},
                "metrics": {"accuracy": 0.5},
            }
        ),
    )
    assert copied.patch == {"metrics": {"accuracy": 0.5}}
    assert [line.split(":")[0] for line in copied.refused] == [
        "report.progress.step",
        "report.diagnosis.verdict",
    ]


def test_an_unchanged_report_patches_nothing() -> None:
    status = {"progress": {"step": 7}, "metrics": {"loss": 0.25}}
    assert reports.status_copy(status, report(status)).patch == {}


def test_the_patch_makes_the_status_equal_the_report_at_every_depth() -> None:
    status = {
        "progress": {"step": 7, "etaSeconds": 30, "percent": 35},
        "metrics": {"accuracy": 0.5, "f1": 0.4},
        "phase": "Running",
    }
    fields = {"progress": {"step": 20, "percent": 100}, "metrics": {"accuracy": 0.75}}
    patch = reports.status_copy(status, report(fields)).patch
    assert patch == {
        "progress": {"step": 20, "percent": 100, "etaSeconds": None},
        "metrics": {"accuracy": 0.75, "f1": None},
    }
    assert merge_patch(status, patch) == {**fields, "phase": "Running"}
