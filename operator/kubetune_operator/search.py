"""Hyperparameter search: which trials a parent FineTuneJob runs next, and how they went.

A FineTuneJob with `spec.search` is a parent: it trains nothing itself and runs child
FineTuneJobs (trials) with sampled values substituted into its spec. The operator keeps
no state of its own, so every decision here is a pure function of the parent and of the
trials recorded in its status (`status.trials`): the Optuna study is rebuilt in memory
from them on every call (no database, restart-safe), and the sampler that proposes
trial n is seeded from `search.seed` and n (grid: its shuffled order from `search.seed`),
so the same status always proposes the same trials, whether the study lived through
the whole search or was rebuilt a moment ago. Pure: no kopf, no API client, no I/O, no clock.

API (`spec` is the parent's FineTuneJobSpec with `search` set; `trials` are the
TrialStatus entries of its status, as models or as the dicts the API server returns):

    next_trials(parent: FineTuneJob, trials) -> list[TrialPlan]
        The trials to start now: at most `parallelism` Pending/Running at once, never
        beyond `maxTrials` (grid: its size), none once more than `maxFailedTrials` failed.
        Numbers continue 0, 1, 2, ...; record each plan in status.trials (state Pending,
        its params) in the same status patch that follows the child's creation, because
        the next call proposes from what status says.
    trial_manifest(parent: FineTuneJob, plan: TrialPlan) -> dict
        The child FineTuneJob, validated; no ownerReferences (the handler adopts it).
    trial_spec(parent_spec: FineTuneJobSpec, params) -> dict
        The child's spec alone (what `kubetune run` trains for a trial locally).
    objective_of(spec, child_status) -> float | None
        A finished child's objective: status.metrics[objective metric].
    should_prune(spec, trials, number) -> bool
        The median rule for a Pending/Running trial (stop the child, record it Pruned).
    best_trial(spec, trials) -> BestTrial | None
    search_status(spec, trials) -> dict
        The parent's status patch: trials, bestTrial, progress, metricSummary, and
        artifacts.model (and mergedModel) = the best trial's when it has one (else null).
    search_outcome(spec, trials) -> SearchOutcome
        Running, Succeeded (every trial ran and one completed) or Failed, with a message.
    study_from_trials(spec, trials) -> optuna.Study
        The rebuilt study itself, for reports (importance, slice plots).
    propose(study, search, number) -> dict
        The one ask that next_trials makes per trial, for a caller that keeps a live study.

Trial states map onto Optuna's: Complete -> COMPLETE (its objective), Pruned -> PRUNED
(its last intermediate value, as Optuna records a pruned trial), Failed and Stopped -> FAIL,
Pending and Running -> RUNNING with their params, so a grid never proposes them again
and TPE (constant liar) proposes something else for the next parallel trial.
A numeric parameter with listed `values` is, for random and TPE, an ordered int
distribution over the index of its sorted values: TPE then models neighbouring values as
alike (a categorical would not), every proposal is one of the listed values, and the
index maps back exactly from the value recorded in status. The grid keeps the values
themselves as its points.
`intermediate` maps a trial's evaluation step (as text) to the objective metric then;
trials are compared at the same evaluation ordinal (their k-th evaluation), not the raw
optimizer step, because searched parameters such as the batch size change the steps per
epoch. Errors that a spec or status can cause raise SearchError, a ValueError whose
message names the field.

The bayesian sampler gp needs torch; the operator image has none, so it raises
SearchError there (tpe and the others need only optuna).
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import MedianPruner
from optuna.samplers import BaseSampler, GPSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState, create_trial
from pydantic import TypeAdapter, ValidationError

from kubetune_operator.api.v1alpha1 import (
    API_VERSION,
    KIND,
    LABEL_COMPONENT,
    LABEL_JOB_NAME,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    BestTrial,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Progress,
    SearchParameter,
    SearchSpec,
    TrialStatus,
    spec_field,
)
from kubetune_trainer.config import metric_direction
from kubetune_trainer.formatting import params_text, value_text

TRIAL_COMPONENT: Final = "trial"
TRIAL_NUMBER_ANNOTATION: Final = "kubetune.dev/trial-number"
TRIAL_PARAMS_ANNOTATION: Final = "kubetune.dev/trial-params"

ACTIVE_STATES: Final = frozenset({"Pending", "Running"})
FINISHED_STATES: Final = frozenset({"Complete", "Pruned", "Failed", "Stopped"})

TPE_STARTUP_TRIALS: Final = 5
"""Random trials before TPE's model guides (Optuna's default 10 spends half a small search)."""

optuna.logging.set_verbosity(optuna.logging.WARNING)


class SearchError(ValueError):
    """A search that cannot go on as specified; the message names the field."""


@dataclass(frozen=True)
class TrialPlan:
    """A trial to start: its number in the study, its child job's name, its sampled values."""

    number: int
    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class SearchOutcome:
    """Where the search as a whole stands."""

    phase: Literal["Running", "Succeeded", "Failed"]
    message: str


TrialLike = TrialStatus | Mapping[str, Any]


def trial_name(parent: str, number: int) -> str:
    """The child FineTuneJob of trial `number`."""
    return f"{parent}-trial-{number}"


def objective_metric(spec: FineTuneJobSpec) -> tuple[str, Literal["maximize", "minimize"]]:
    """The metric the search optimises and its direction, defaults filled in from the task."""
    search = _search(spec)
    metric = search.objective.metric or spec.primary_metric()
    return metric, search.objective.direction or metric_direction(metric)


def study_from_trials(spec: FineTuneJobSpec, trials: Sequence[TrialLike]) -> optuna.Study:
    """An in-memory study holding the recorded trials, with the sampler for the next trial."""
    search = _search(spec)
    records = _records(trials)
    _, direction = objective_metric(spec)
    with _quiet():
        study = optuna.create_study(
            direction=direction, sampler=_sampler(search, len(records)), pruner=_pruner(search)
        )
        distributions = _distributions(search)
        for record in records:
            study.add_trial(_frozen_trial(search, distributions, record))
    return study


def next_trials(parent: FineTuneJob, trials: Sequence[TrialLike]) -> list[TrialPlan]:
    """The trials to start now, numbered after the recorded ones."""
    spec = parent.spec
    search = _search(spec)
    records = _records(trials)
    if _count(records, {"Failed"}) > search.max_failed_trials:
        return []
    free_slots = search.parallelism - _count(records, ACTIVE_STATES)
    count = max(0, min(free_slots, total_trials(search) - len(records)))
    if count == 0:
        return []
    study = study_from_trials(spec, records)
    numbers = range(len(records), len(records) + count)
    return [
        TrialPlan(n, trial_name(parent.metadata.name, n), propose(study, search, n))
        for n in numbers
    ]


def propose(study: optuna.Study, search: SearchSpec, number: int) -> dict[str, Any]:
    """Ask `study` for trial `number` with that trial's sampler; the trial stays running in it."""
    with _quiet():
        study.sampler = _sampler(search, number)
        internal = study.ask(_distributions(search)).params
    return _user_values(search, internal)


def total_trials(search: SearchSpec) -> int:
    """Trials the search runs at most: maxTrials, or a grid's size when smaller."""
    if search.algorithm != "grid":
        return search.max_trials
    return min(search.max_trials, math.prod(len(points) for points in _grid_space(search).values()))


def trial_spec(parent_spec: FineTuneJobSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The child's spec: the parent's with each value set at its field path, without search."""
    body = parent_spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    body.pop("search", None)
    for path, value in params.items():
        _set_path(body, path, _field_value(path, value))
    try:
        FineTuneJobSpec.model_validate(body)
    except ValidationError as error:
        raise SearchError(
            f"trial spec with {params_text(params)}: {_first_problem(error)}"
        ) from None
    return body


def trial_manifest(parent: FineTuneJob, plan: TrialPlan) -> dict[str, Any]:
    """The child FineTuneJob of a planned trial (the handler adds the ownerReference)."""
    metadata: dict[str, Any] = {
        "name": plan.name,
        "labels": {
            # The parent's labels too: a runtime's requiredLabels hold for trials.
            **parent.metadata.labels,
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_COMPONENT: TRIAL_COMPONENT,
            LABEL_JOB_NAME: parent.metadata.name,
        },
        "annotations": {
            TRIAL_NUMBER_ANNOTATION: str(plan.number),
            TRIAL_PARAMS_ANNOTATION: json.dumps(plan.params, sort_keys=True),
        },
    }
    if parent.metadata.namespace is not None:
        metadata["namespace"] = parent.metadata.namespace
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": trial_spec(parent.spec, plan.params),
    }
    try:
        FineTuneJob.model_validate(manifest)
    except ValidationError as error:
        raise SearchError(f"trial {plan.name}: {_first_problem(error)}") from None
    return manifest


def objective_of(
    spec: FineTuneJobSpec, child_status: FineTuneJobStatus | Mapping[str, Any] | None
) -> float | None:
    """A child's objective: its latest value of the objective metric, if it reported one."""
    if child_status is None:
        return None
    metrics = (
        child_status.metrics
        if isinstance(child_status, FineTuneJobStatus)
        else child_status.get("metrics") or {}
    )
    metric, _ = objective_metric(spec)
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def should_prune(spec: FineTuneJobSpec, trials: Sequence[TrialLike], number: int) -> bool:
    """Whether an active trial is worse than the completed trials' median at the same evaluation."""
    search = _search(spec)
    records = _records(trials)
    if search.early_stopping is None or number >= len(records):
        return False
    if records[number].state not in ACTIVE_STATES:
        return False
    study = study_from_trials(spec, records)
    return _pruner(search).prune(study, study.trials[number])


def best_trial(spec: FineTuneJobSpec, trials: Sequence[TrialLike]) -> BestTrial | None:
    """The complete trial with the best objective (the lowest number among equals)."""
    _, direction = objective_metric(spec)
    sign = 1.0 if direction == "maximize" else -1.0
    scored = [r for r in _records(trials) if r.state == "Complete" and r.objective is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: (sign * (r.objective or 0.0), -r.number))
    assert best.objective is not None
    return BestTrial(
        number=best.number, name=best.name, objective=best.objective, params=best.params
    )


def search_status(spec: FineTuneJobSpec, trials: Sequence[TrialLike]) -> dict[str, Any]:
    """The parent's status fields: the trials table, the best trial, progress and summary.

    progress counts trials: step = finished trials, totalSteps = trials the search runs.
    """
    search = _search(spec)
    records = _records(trials)
    best = best_trial(spec, records)
    finished = _count(records, FINISHED_STATES)
    total = total_trials(search)
    metric, _ = objective_metric(spec)
    progress = Progress(step=finished, total_steps=total, percent=min(100, 100 * finished // total))
    best_record = None if best is None else records[best.number]
    return {
        "trials": [r.model_dump(mode="json", by_alias=True) for r in records],
        "bestTrial": None if best is None else best.model_dump(mode="json", by_alias=True),
        "progress": progress.model_dump(mode="json", by_alias=True, exclude_unset=True),
        "metricSummary": "" if best is None else f"{metric}={value_text(best.objective)}",
        # null removes a previous best's model from the parent (a merge patch deletes it).
        "artifacts": _best_artifacts(best_record),
    }


def _best_artifacts(best: TrialStatus | None) -> dict[str, str] | None:
    """The parent's artifacts: the best trial's model, and its merged model when it has one."""
    if best is None or not best.model:
        return None
    merged = {"mergedModel": best.merged_model} if best.merged_model else {}
    return {"model": best.model, **merged}


def search_outcome(spec: FineTuneJobSpec, trials: Sequence[TrialLike]) -> SearchOutcome:
    """Running until every trial has run; then Succeeded when one completed with an objective."""
    search = _search(spec)
    records = _records(trials)
    failed = _count(records, {"Failed"})
    if failed > search.max_failed_trials:
        return SearchOutcome(
            "Failed",
            f"{failed} trials failed; search.maxFailedTrials is {search.max_failed_trials}",
        )
    total = total_trials(search)
    if len(records) < total or _count(records, ACTIVE_STATES):
        done = _count(records, FINISHED_STATES)
        return SearchOutcome("Running", f"{done} of {total} trials finished")
    best = best_trial(spec, records)
    if best is None:
        return SearchOutcome("Failed", f"none of the {total} trials completed with an objective")
    metric, _ = objective_metric(spec)
    return SearchOutcome(
        "Succeeded",
        f"best of {total} trials: {best.name} with {metric}={value_text(best.objective)}",
    )


def _search(spec: FineTuneJobSpec) -> SearchSpec:
    if spec.search is None:
        raise SearchError("spec.search: this job is not a search (it has no search section)")
    return spec.search


def _records(trials: Sequence[TrialLike]) -> list[TrialStatus]:
    records = sorted(
        (t if isinstance(t, TrialStatus) else validated_trial(t) for t in trials),
        key=lambda t: t.number,
    )
    numbers = [r.number for r in records]
    if numbers != list(range(len(records))):
        raise SearchError(
            f"status.trials: trial numbers must be 0..{len(records) - 1}, got {numbers}"
        )
    return records


def validated_trial(raw: Mapping[str, Any]) -> TrialStatus:
    """A recorded trial as the model reads it, or a SearchError naming the field."""
    try:
        return TrialStatus.model_validate(dict(raw))
    except ValidationError as error:
        raise SearchError(f"status.trials: {_first_problem(error)}") from None


def _count(records: Sequence[TrialStatus], states: frozenset[str] | set[str]) -> int:
    return sum(r.state in states for r in records)


@contextmanager
def _quiet() -> Iterator[None]:
    # constant_liar and multivariate are experimental in Optuna; a step that does not divide
    # the range is narrowed to the last step inside it, as the grid does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*range is not divisible by `step`")
        yield


def _sampler(search: SearchSpec, number: int) -> BaseSampler:
    if search.algorithm == "grid":
        # The grid's order is shuffled once by the seed; trial n then takes point n.
        return GridSampler(_grid_space(search), seed=search.seed)
    seed = _trial_seed(search.seed, number)
    if search.algorithm == "random":
        return RandomSampler(seed=seed)
    if search.bayesian_sampler == "gp":
        if importlib.util.find_spec("torch") is None:
            raise SearchError(
                "spec.search.bayesianSampler: gp needs torch, which this operator image "
                "does not have; use tpe"
            )
        return GPSampler(seed=seed)
    return TPESampler(
        seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True, constant_liar=True
    )


def _trial_seed(seed: int, number: int) -> int:
    """A seed for the sampler that proposes trial `number`, independent of earlier asks."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _pruner(search: SearchSpec) -> MedianPruner:
    stopping = search.early_stopping
    if stopping is None:
        return MedianPruner(n_startup_trials=0, n_warmup_steps=0)
    return MedianPruner(
        n_startup_trials=stopping.min_completed_trials,
        n_warmup_steps=stopping.warmup_evaluations,
    )


def _grid_space(search: SearchSpec) -> dict[str, list[Any]]:
    space: dict[str, list[Any]] = {}
    for parameter in search.parameters:
        points = parameter.grid_points()
        if points is None:
            raise SearchError(
                f"spec.search: grid search needs discrete values for {parameter.path}"
            )
        space[parameter.path] = points
    return space


def _distributions(search: SearchSpec) -> dict[str, BaseDistribution]:
    return {p.path: _distribution(p, search.algorithm == "grid") for p in search.parameters}


def _distribution(parameter: SearchParameter, grid: bool) -> BaseDistribution:
    if grid or parameter.choices:
        points = parameter.grid_points()
        assert points is not None, "the spec's validators ensure a grid has points"
        return CategoricalDistribution(points)
    if parameter.values:
        return IntDistribution(0, len(parameter.values) - 1)
    assert parameter.min is not None
    assert parameter.max is not None
    if parameter.type == "int":
        step = parameter.step or 1
        if step != int(step):
            raise SearchError(f"spec.search: {parameter.path}: an int step must be whole")
        return IntDistribution(
            int(parameter.min), int(parameter.max), log=parameter.log, step=int(step)
        )
    return FloatDistribution(parameter.min, parameter.max, log=parameter.log, step=parameter.step)


_OPTUNA_STATES: Final = {
    "Complete": TrialState.COMPLETE,
    "Pruned": TrialState.PRUNED,
    "Failed": TrialState.FAIL,
    "Stopped": TrialState.FAIL,
    "Pending": TrialState.RUNNING,
    "Running": TrialState.RUNNING,
}


def _listed_values(search: SearchSpec) -> dict[str, list[Any]]:
    """The sorted values of each parameter that random and TPE sample by index."""
    if search.algorithm == "grid":
        return {}
    return {p.path: sorted(p.grid_points() or []) for p in search.parameters if p.values}


def _user_values(search: SearchSpec, internal: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's params as the spec's values: an index becomes the listed value it points at."""
    listed = _listed_values(search)
    return {
        name: listed[name][value] if name in listed else value for name, value in internal.items()
    }


def _internal_values(search: SearchSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """Recorded values as Optuna holds them: a listed value becomes its index, others go."""
    listed = _listed_values(search)
    internal: dict[str, Any] = {}
    for name, value in params.items():
        if name not in listed:
            internal[name] = value
            continue
        index = _index_of(listed[name], value)
        if index is not None:
            internal[name] = index
    return internal


def _index_of(values: Sequence[Any], raw: Any) -> int | None:
    # JSON may turn 2.0 into 2; both equal the listed number, a boolean equals none of them.
    if isinstance(raw, bool):
        return None
    return next((i for i, value in enumerate(values) if value == raw), None)


def _frozen_trial(
    search: SearchSpec, distributions: Mapping[str, BaseDistribution], record: TrialStatus
) -> FrozenTrial:
    params = _params_in_space(distributions, _internal_values(search, record.params))
    intermediate = _by_ordinal(record.intermediate)
    state = _OPTUNA_STATES[record.state]
    value: float | None = None
    if state == TrialState.COMPLETE:
        value = record.objective
        if value is None:
            state = TrialState.FAIL
    elif state == TrialState.PRUNED and intermediate:
        value = intermediate[max(intermediate)]
    system_attrs: dict[str, Any] = {}
    if search.algorithm == "grid":
        # What GridSampler.before_trial records: trial n took point n of the shuffled grid.
        system_attrs = {"search_space": _grid_space(search), "grid_id": record.number}
    return create_trial(
        state=state,
        value=value,
        params=params,
        distributions={name: distributions[name] for name in params},
        intermediate_values=intermediate,
        system_attrs=system_attrs,
    )


def _params_in_space(
    distributions: Mapping[str, BaseDistribution], params: Mapping[str, Any]
) -> dict[str, Any]:
    """Recorded values in Optuna's types (JSON turns 2.0 into 2), minus any outside the space."""
    fitting: dict[str, Any] = {}
    for name, raw in params.items():
        distribution = distributions.get(name)
        if distribution is None:
            continue
        value = _as_distribution_type(distribution, raw)
        if value is not None and distribution._contains(distribution.to_internal_repr(value)):
            fitting[name] = value
    return fitting


def _as_distribution_type(distribution: BaseDistribution, raw: Any) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return next((c for c in distribution.choices if c == raw and type(c) is not bool), None)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if isinstance(distribution, IntDistribution):
        return int(raw) if raw == int(raw) else None
    return float(raw)


def _by_ordinal(intermediate: Mapping[str, float]) -> dict[int, float]:
    steps = sorted(intermediate, key=_step_number)
    return {ordinal: intermediate[step] for ordinal, step in enumerate(steps)}


def _step_number(step: str) -> float:
    try:
        return float(step)
    except ValueError:
        raise SearchError(f"status.trials: intermediate step {step!r} is not a number") from None


def _field_value(path: str, value: Any) -> Any:
    """The value as the field takes it (categorical choices are written as text, e.g. '32')."""
    field = spec_field(path)
    field_type: Any = (
        Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    )
    adapter: TypeAdapter[Any] = TypeAdapter(field_type)
    try:
        return adapter.dump_python(adapter.validate_python(value, strict=False), mode="json")
    except ValidationError as error:
        reason = error.errors()[0]["msg"]
        raise SearchError(f"{path}: {value!r} does not fit the field: {reason}") from None


def _set_path(body: dict[str, Any], path: str, value: Any) -> None:
    *sections, leaf = path.split(".")
    node = body
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    location = ".".join(str(part) for part in problem["loc"])
    return f"{location}: {problem['msg']}" if location else str(problem["msg"])
