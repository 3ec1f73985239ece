"""The kopf boundary: a FineTuneJob body read once into the API model (TrackedJob)."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kubernetes import client

from kubetune_operator import builders, kube, runtimes
from kubetune_operator.api.v1alpha1 import readable_status
from kubetune_operator.controller import handlers
from kubetune_operator.controller.state import OperatorState, TrackedJob
from tests.conftest import load_example

MOMENT = "2026-12-07T10:00:00+00:00"
VALIDATED = {
    "type": "Validated",
    "status": "True",
    "reason": "Valid",
    "message": "the spec is valid",
    "lastTransitionTime": MOMENT,
}


def body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(load_example("sentiment/job.yaml"))
    manifest["metadata"]["namespace"] = "ml"
    manifest["spec"].update(spec)
    return manifest if status is None else {**manifest, "status": status}


def test_a_valid_body_becomes_the_api_model_with_its_typed_status() -> None:
    stored = {"phase": "Running", "restarts": 2, "conditions": [VALIDATED], "queuePosition": 3}
    tracked = TrackedJob.of(body(stored))
    assert tracked.key == ("ml", tracked.body["metadata"]["name"])
    assert (tracked.phase, tracked.status.restarts, tracked.status.queue_position) == (
        "Running",
        2,
        3,
    )
    assert tracked.is_validated()
    assert tracked.model is not None
    assert tracked.model.status is tracked.status
    assert tracked.model.spec.model.source == tracked.body["spec"]["model"]["source"]
    assert tracked.checked[1] == []


def test_the_spec_is_validated_once_per_tracked_body(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_operator.controller import state

    calls = []
    check = state.check_document
    monkeypatch.setattr(state, "check_document", lambda *a: calls.append(a) or check(*a))
    tracked = TrackedJob.of(body({"phase": "Pending"}))
    assert calls == []  # a peer read for a queue decision needs only its status
    assert tracked.model is not None
    assert tracked.model.status is tracked.status
    updated = tracked.with_status({"phase": "Running"})
    assert updated.model is not None
    assert updated.model.status is updated.status
    assert updated.model.status.phase == "Running"
    assert len(calls) == 1  # the same spec: validated once for both views


def test_a_status_with_unknown_or_invalid_fields_keeps_the_rest_readable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored = {
        "phase": "Running",
        "conditions": [VALIDATED],
        "restarts": 1,
        "seenStep": 7,  # an older operator's field
        "progress": {"step": 3, "legacyEta": "soon"},  # an unknown field inside a known one
        "queuePosition": "first",  # a bad value
        "runtime": {"kind": "SomethingElse", "name": "gpu"},
    }
    caplog.set_level(logging.WARNING)
    tracked = TrackedJob.of(body(stored))
    assert tracked.phase == "Running"
    assert tracked.is_validated()
    assert tracked.status.restarts == 1
    assert tracked.status.progress is not None
    assert tracked.status.progress.step == 3
    assert (tracked.status.queue_position, tracked.status.runtime) == (None, None)
    assert tracked.model is not None  # the spec is fine; the status does not hide it
    assert "seenStep" in caplog.text
    assert "queuePosition" in caplog.text
    # What a patch would change is computed from what was read; the body is untouched.
    assert tracked.unwritten({"restarts": 1, "phase": "Succeeded"}) == {"phase": "Succeeded"}
    assert tracked.body["status"]["seenStep"] == 7


def test_readable_status_names_what_it_left_unread() -> None:
    status, unread = readable_status(
        {
            "phase": "Queued",
            "bogus": 1,
            "trials": [{"number": 0, "name": "t-trial-000", "state": "Pending", "old": 1}],
            "conditions": [{"type": "Validated", "status": "True"}],  # no reason, no time
        }
    )
    assert status.phase == "Queued"
    assert [trial.name for trial in status.trials] == ["t-trial-000"]
    assert status.conditions == []
    assert sorted(unread) == ["bogus", "conditions", "trials.0.old"]
    assert readable_status(None) == readable_status("not a mapping") == (readable_status({})[0], [])


def test_with_status_reads_the_patched_status_again() -> None:
    tracked = TrackedJob.of(body({"phase": "Queued", "queuePosition": 2}))
    admitted = tracked.with_status({"queuePosition": None, "phase": "Pending"})
    assert (admitted.phase, admitted.status.queue_position) == ("Pending", None)
    assert (tracked.phase, tracked.status.queue_position) == ("Queued", 2)


def test_an_invalid_spec_has_no_model_and_says_why() -> None:
    tracked = TrackedJob.of(body({"phase": "Pending"}, training={"epochs": -1}))
    assert tracked.model is None
    problems = tracked.checked[1]
    assert problems
    assert any("spec.training.epochs" in problem for problem in problems)
    assert tracked.phase == "Pending"  # its status is read all the same


def test_the_create_handler_fails_an_invalid_spec_with_a_reason_and_an_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    posted: list[Any] = []
    monkeypatch.setattr(handlers, "post", lambda ftj, events: posted.extend(events))
    shared = OperatorState(kube.Cluster(client.ApiClient()), builders.OperatorSettings())
    patch = kopf.Patch()
    invalid = body(training={"epochs": -1})
    handlers.reconcile(
        body=kopf.Body(invalid),
        namespace="ml",
        name=invalid["metadata"]["name"],
        patch=patch,
        memo=SimpleNamespace(state=shared),
    )
    conditions = {c["type"]: c for c in patch["status"]["conditions"]}
    assert conditions["Validated"]["status"] == "False"
    assert conditions["Validated"]["reason"] == "InvalidSpec"
    assert "spec.training.epochs" in conditions["Validated"]["message"]
    assert patch["status"]["phase"] == "Failed"
    assert [event.reason for event in posted] == ["InvalidSpec"]


@pytest.mark.parametrize(
    "tampered",
    [
        {"effectiveSpec": "not an object"},
        {"effectiveSpecHash": 42},
        {"runtime": {"kind": "SomethingElse", "name": "gpu", "generation": 1}},
    ],
)
def test_a_recorded_field_that_does_not_validate_builds_no_workers(
    tampered: dict[str, Any],
) -> None:
    """Left unread, the effective spec or its runtime would read as never recorded (the
    job's own spec, the default policy): a changed record is refused instead."""
    from kubetune_operator.api.runtime import Guardrails
    from kubetune_operator.controller import workers

    spec = {"model": {"source": "x"}}
    recorded = {"effectiveSpec": spec, "effectiveSpecHash": "sha256:" + "0" * 64}
    tracked = TrackedJob.of(body({"conditions": [VALIDATED], **recorded, **tampered}))
    no_indexes: Any = None  # not reached: the record is refused before a runtime is looked up
    refused = workers.recorded_job(tracked, no_indexes, Guardrails())
    assert isinstance(refused, runtimes.Refused)
    assert refused.reason == runtimes.INVALID_SPEC
    assert f"status.{next(iter(tampered))} no longer validates" in refused.messages[0]


def test_a_search_whose_recorded_trials_do_not_validate_is_not_started_over() -> None:
    from kubetune_operator.controller import trials

    class NoCluster:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the cluster was called ({name})")

    shared = OperatorState(NoCluster(), builders.OperatorSettings())  # type: ignore[arg-type]
    scheduler = {"path": "training.scheduler", "type": "categorical", "choices": ["cosine"]}
    parent = body(
        {"phase": "Running", "conditions": [VALIDATED], "trials": [{"number": 0}]},
        search={"algorithm": "grid", "maxTrials": 2, "parameters": [scheduler]},
    )
    tracked = TrackedJob.of(parent)
    assert tracked.model is not None
    assert "trials" in tracked.unread
    trials.advance(shared, tracked, [])
    assert shared.written == {}
