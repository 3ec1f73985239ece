"""A search parent's trials, as the handlers drive them.

A FineTuneJob with `spec.search` gets no workers but child FineTuneJobs (trials), which
the same handlers train. Whenever the parent or one of its trials changes, the parent's
`status.trials` is brought up to date from the trials, and the pure `search` functions
decide what to prune, which trials to start and the parent's status; this module
performs it. Trial numbers come from the status and creating a trial is idempotent, so
an operator restart in the middle of a search starts no trial twice.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal, cast

import kopf

from kubetune_operator import search
from kubetune_operator import status as status_rules
from kubetune_operator.api import v1alpha1
from kubetune_operator.api.v1alpha1 import TERMINAL_PHASES
from kubetune_operator.controller.state import (
    OperatorState,
    TrackedJob,
    body_of,
    now,
    post,
)
from kubetune_trainer.formatting import params_text


def start(shared: OperatorState, ftj: TrackedJob, children: list[Mapping[str, Any]]) -> None:
    """A new or resumed search parent: Validated, Running, and its first trials, in one patch."""
    first = status_rules.validated(ftj.body, now=now())
    advance(shared, ftj, children, first=first)


def advance(
    shared: OperatorState,
    ftj: TrackedJob,
    children: list[Mapping[str, Any]],
    first: Mapping[str, Any] | None = None,
) -> None:
    """Record what the trials show, prune, start the next trials, write the parent's status.

    `first`: status fields to lay over the stored ones and write along (the validation).
    """
    view = ftj.with_status(first or {})
    if view.phase in TERMINAL_PHASES or view.model is None or "trials" in view.unread:
        return  # unread trials (logged) would read as none and the search would start over
    try:
        desired, events = _search_step(shared, view, view.model, children)
    except search.SearchError as error:
        trials, stopped = _stop_unfinished(shared, view, _trial_records(view))
        failed = status_rules.validation_failed(view.body, str(error) + stopped, now=now())
        desired, events = {**failed.patch, "trials": trials}, failed.events
    patch = ftj.unwritten({**(first or {}), **desired})
    if patch:
        shared.write_status(ftj, patch)
    post(ftj.body, events)


def _trial_records(ftj: TrackedJob) -> list[dict[str, Any]]:
    """The trials recorded in the status, as the pure `search` functions take them."""
    return [trial.model_dump(mode="json", exclude_unset=True) for trial in ftj.status.trials]


def _search_step(
    shared: OperatorState,
    ftj: TrackedJob,
    parent: v1alpha1.FineTuneJob,
    children: list[Mapping[str, Any]],
) -> tuple[dict[str, Any], list[status_rules.Event]]:
    """The parent's desired status and its Events, after pruning and creating trials."""
    spec, by_name = parent.spec, {child["metadata"]["name"]: child for child in children}
    previous = _trial_records(ftj)
    trials = [_trial_seen(spec, trial, by_name.get(trial["name"])) for trial in previous]
    events = _trial_events(previous, trials)
    trials, pruned = _pruned(shared, ftj, spec, trials)
    events += pruned
    outcome = search.search_outcome(spec, trials)
    if outcome.phase == "Running":
        events += _recreate_deleted(shared, ftj, parent, trials, by_name)
        created, started = _start_trials(shared, ftj, parent, trials, by_name)
        trials, events = trials + created, events + started
        outcome = search.search_outcome(spec, trials)
    if outcome.phase == "Failed":
        trials, stopped = _stop_unfinished(shared, ftj, trials)
        outcome = dataclasses.replace(outcome, message=outcome.message + stopped)
    desired = {**search.search_status(spec, trials), **_search_phase(ftj, outcome)}
    if ftj.phase != outcome.phase and outcome.phase != "Running":
        events.append(_outcome_event(outcome))
    return desired, events


def _trial_seen(
    spec: v1alpha1.FineTuneJobSpec, trial: Mapping[str, Any], child: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A Pending/Running trial as its child shows it: state, objective, new intermediate value."""
    if trial["state"] not in search.ACTIVE_STATES or child is None:
        return dict(trial)
    status = TrackedJob.of(child).status
    seen = {**trial, "intermediate": _with_intermediate(spec, trial, status)}
    phase = status.phase
    if phase == "Succeeded":
        artifacts = status.artifacts
        seen |= {
            "state": "Complete",
            "objective": search.objective_of(spec, status),
            "model": (artifacts.model if artifacts else "") or None,
            "mergedModel": (artifacts.merged_model if artifacts else "") or None,
        }
    elif phase == "Failed":
        seen["state"] = "Failed"
    elif phase is not None:
        seen["state"] = "Running"
    return seen


def _with_intermediate(
    spec: v1alpha1.FineTuneJobSpec,
    trial: Mapping[str, Any],
    child_status: v1alpha1.FineTuneJobStatus,
) -> dict[str, float]:
    """The trial's intermediate values plus the child's current one, keyed by its step (a
    progress that reports no step yet adds none)."""
    known = dict(trial.get("intermediate") or {})
    progress = child_status.progress
    value = search.objective_of(spec, child_status)
    if progress is not None and "step" in progress.model_fields_set and value is not None:
        known.setdefault(str(progress.step), value)
    return known


def _trial_events(
    previous: list[dict[str, Any]], trials: list[dict[str, Any]]
) -> list[status_rules.Event]:
    return [
        status_rules.Event(
            "Warning",
            status_rules.Reason.TrialFailed,
            f"trial {after['number']} ({after['name']}) failed",
        )
        for before, after in zip(previous, trials, strict=True)
        if after["state"] == "Failed" and before["state"] != "Failed"
    ]


def _pruned(
    shared: OperatorState,
    ftj: TrackedJob,
    spec: v1alpha1.FineTuneJobSpec,
    trials: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[status_rules.Event]]:
    """Delete the trials the median rule stops and record them Pruned."""
    events = []
    for trial in trials:
        if not search.should_prune(spec, trials, trial["number"]):
            continue
        shared.cluster.delete(_child_reference(ftj, trial["name"]))
        trial["state"] = "Pruned"
        message = f"trial {trial['number']} ({trial['name']}) is worse than the median; deleted"
        events.append(status_rules.Event("Normal", status_rules.Reason.TrialPruned, message))
    return trials, events


def _stop_unfinished(
    shared: OperatorState, ftj: TrackedJob, trials: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str]:
    """Delete the children of the trials still pending or running, recorded Stopped: a
    failed search has no use for them. Also what to add to the failure's message."""
    stopped = []
    for trial in trials:
        if trial["state"] in search.ACTIVE_STATES:
            shared.cluster.delete(_child_reference(ftj, trial["name"]))
            trial["state"] = "Stopped"
            stopped.append(f"{trial['number']} ({trial['name']})")
    return trials, f"; stopped the unfinished trials {', '.join(stopped)}" if stopped else ""


def _start_trials(
    shared: OperatorState,
    ftj: TrackedJob,
    parent: v1alpha1.FineTuneJob,
    trials: list[dict[str, Any]],
    children: Mapping[str, Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[status_rules.Event]]:
    """Create the trials the engine proposes (409: an earlier operator did), as Pending records."""
    created, events = [], []
    for plan in search.next_trials(parent, trials):
        manifest = search.trial_manifest(parent, plan)
        kopf.adopt(manifest, owner=body_of(ftj.body))
        params = plan.params
        if shared.cluster.create(manifest):
            events.append(
                status_rules.Event("Normal", status_rules.Reason.Created, created_message(plan))
            )
        elif plan.name in children:
            params = _recorded_params(children[plan.name], plan.params)
        created.append(
            {"number": plan.number, "name": plan.name, "state": "Pending", "params": params}
        )
    return created, events


def created_message(plan: search.TrialPlan) -> str:
    """The Event of a created trial: its child and its values, as every view shows them."""
    return f"trial {plan.number}: created {plan.name} with {params_text(plan.params)}"


def _recreate_deleted(
    shared: OperatorState,
    ftj: TrackedJob,
    parent: v1alpha1.FineTuneJob,
    trials: list[dict[str, Any]],
    children: Mapping[str, Mapping[str, Any]],
) -> list[status_rules.Event]:
    """Create again, with its recorded values, each unfinished trial whose child is gone.

    A child the index does not show yet was just created: the create is then a 409 and
    changes nothing, so only a child someone deleted comes back (as Pending).
    """
    events = []
    for trial in trials:
        if trial["state"] not in search.ACTIVE_STATES or trial["name"] in children:
            continue
        plan = search.TrialPlan(trial["number"], trial["name"], dict(trial["params"]))
        manifest = search.trial_manifest(parent, plan)
        kopf.adopt(manifest, owner=body_of(ftj.body))
        if shared.cluster.create(manifest):
            trial["state"] = "Pending"
            message = f"trial {plan.number}: created {plan.name} again (it was deleted)"
            events.append(status_rules.Event("Normal", status_rules.Reason.Created, message))
    return events


def _recorded_params(child: Mapping[str, Any], proposed: dict[str, Any]) -> dict[str, Any]:
    """The values an existing trial was created with (its annotation), else the proposal."""
    annotations = child["metadata"].get("annotations") or {}
    recorded = annotations.get(search.TRIAL_PARAMS_ANNOTATION)
    return dict(json.loads(recorded)) if recorded else proposed


def _search_phase(ftj: TrackedJob, outcome: search.SearchOutcome) -> dict[str, Any]:
    """The parent's phase, conditions and completionTime for where the search stands."""
    status, moment = ftj.status, now()
    generation = int(ftj.body["metadata"].get("generation", 1))
    previous: dict[str, dict[str, Any]] = {
        c.type: c.model_dump(mode="json", exclude_unset=True) for c in status.conditions
    }
    reason = _outcome_reason(outcome)
    running: Literal["True", "False"] = "True" if outcome.phase == "Running" else "False"
    wanted: dict[str, tuple[Literal["True", "False"], str]] = {"Running": (running, reason)}
    if outcome.phase != "Running":
        succeeded = outcome.phase == "Succeeded"
        wanted["Succeeded"] = ("True" if succeeded else "False", reason)
        wanted["Failed"] = ("False" if succeeded else "True", reason)
    conditions = dict(previous)
    for kind, (value, why) in wanted.items():
        conditions[kind] = status_rules.condition(
            cast(v1alpha1.ConditionType, kind),
            value,
            why,
            outcome.message,
            now=moment,
            generation=generation,
            previous=previous.get(kind),
        )
    desired: dict[str, Any] = {
        "phase": outcome.phase,
        "conditions": [conditions[k] for k in status_rules.CONDITION_ORDER if k in conditions],
    }
    if outcome.phase != "Running":
        desired["completionTime"] = status.completion_time or status_rules.rfc3339(moment)
    return desired


def _outcome_reason(outcome: search.SearchOutcome) -> str:
    return {
        "Running": status_rules.Reason.Running,
        "Succeeded": status_rules.Reason.Succeeded,
        "Failed": status_rules.Reason.SearchFailed,
    }[outcome.phase]


def _outcome_event(outcome: search.SearchOutcome) -> status_rules.Event:
    kind: Literal["Normal", "Warning"] = "Normal" if outcome.phase == "Succeeded" else "Warning"
    return status_rules.Event(kind, _outcome_reason(outcome), outcome.message)


def _child_reference(ftj: TrackedJob, name: str) -> dict[str, Any]:
    namespace = ftj.key[0]
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"namespace": namespace, "name": name},
    }
