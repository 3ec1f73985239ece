"""`kubetune run` of a job with `spec.search`: its trials on this machine, with the same engine.

On a cluster each trial is a child FineTuneJob; here each is a local run into
OUTPUT/trial-<n>/, one after the other in this process, or N trainer subprocesses at once
(`--parallel N`, never more than search.parallelism). Every decision is search.py's, the
pure functions the operator calls: which trials come next, each trial's spec, its
objective, the best trial, when the search is over. Where the operator keeps the trials
table in the parent's status, this keeps it in OUTPUT/search.json (the same shape),
rewritten after every change with OUTPUT/search.html (views/search_page.py draws it) beside
it, so an interrupted search resumes: finished trials are kept,
and a trial that was running is run again (the trainer resumes it from its checkpoint).
Pruning (search.earlyStopping) needs the operator watching trials as they report; local
trials run to the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from kubetune_operator.api.v1alpha1 import FineTuneJob, FineTuneJobSpec, TrialStatus
from kubetune_operator.cli.local.runs import (
    LocalRun,
    LocalRunError,
    read_report,
    run_in_process,
    trainer_command,
    trainer_environment,
)
from kubetune_operator.cli.views.run_summary import SEARCH_HTML
from kubetune_operator.cli.views.search_page import (
    parameter_importance,
    write_search_html,
)
from kubetune_operator.search import (
    ACTIVE_STATES,
    SearchError,
    best_trial,
    next_trials,
    objective_metric,
    objective_of,
    search_outcome,
    search_status,
    total_trials,
    trial_name,
    trial_spec,
)
from kubetune_trainer.config import EXIT_INVALID_INPUT
from kubetune_trainer.formatting import first_line, params_text, value_text
from kubetune_trainer.report.files import REPORT_JSON, write_text_atomically

SEARCH_FILE: Final = "search.json"
MODEL_DIR: Final = "model"
MERGED_DIR: Final = "merged"
"""A LoRA trial's merged model (output.mergeAdapter), beside its adapter in model/."""
LOG_FILE: Final = "trainer.log"
RESUMABLE_FIELDS: Final = ("maxTrials", "parallelism", "maxFailedTrials")
"""search fields a resumed search may change (e.g. raise maxTrials to run more trials)."""
TRAINER_MESSAGE_PREFIX: Final = "kubetune trainer: "

Notify = Callable[[str], None]


@dataclass(frozen=True)
class SearchPlan:
    """A search to run here: the parent job, where its paths and outputs are, how wide."""

    job: FineTuneJob
    base: Path
    """The manifest's folder: relative paths of every trial resolve against it."""
    output_dir: Path
    parallel: int
    """Trials at once: --parallel, capped by search.parallelism."""
    processes: int
    """Training processes of each trial."""


@dataclass
class TrialBook:
    """The trials table (search.json): the trials, and why each failed trial failed."""

    fingerprint: str
    trials: list[TrialStatus] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialResult:
    """How one trial ended."""

    state: str
    objective: float | None = None
    intermediate: dict[str, float] = field(default_factory=dict)
    message: str = ""


def plan_search(
    job: FineTuneJob, run: LocalRun, manifest: Path, parallel: int, processes: int
) -> SearchPlan:
    """The search of `job` into `run`'s output directory, at most `parallel` trials at once."""
    assert job.spec.search is not None
    width = min(parallel, job.spec.search.parallelism)
    return SearchPlan(job, manifest.resolve().parent, run.output_dir, width, processes)


def run_search(plan: SearchPlan, notify: Notify) -> dict[str, Any]:
    """Run (or resume) the search to its end; write and return OUTPUT/report.json's content."""
    book = load_book(plan)
    _announce(plan, book, notify)
    try:
        _run_trials(plan, book, notify)
        report = _search_report(plan, book)
    except SearchError as error:
        raise LocalRunError(str(error)) from None
    _write_json(plan.output_dir / REPORT_JSON, report)
    return report


def fingerprint(spec: FineTuneJobSpec) -> str:
    """What identifies a search across sessions: the spec, less the fields a resume may change."""
    body = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    for name in RESUMABLE_FIELDS:
        body.get("search", {}).pop(name, None)
    text = json.dumps(body, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_book(plan: SearchPlan) -> TrialBook:
    """The trials recorded in OUTPUT/search.json, or an empty book for a new search."""
    path = plan.output_dir / SEARCH_FILE
    expected = fingerprint(plan.job.spec)
    if not path.exists():
        return TrialBook(expected)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        trials = [TrialStatus.model_validate(t) for t in content["trials"]]
        messages = {str(k): str(v) for k, v in content.get("messages", {}).items()}
        recorded = str(content["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as error:
        raise LocalRunError(
            f"{path}: cannot resume from it ({first_line(error)}); pass --overwrite to start again"
        ) from None
    if recorded != expected:
        raise LocalRunError(
            f"{path} holds a search of another spec (the manifest changed since it started); "
            "pass --overwrite to start again, or --output DIR for another directory"
        )
    return TrialBook(expected, trials, messages)


def save_book(plan: SearchPlan, book: TrialBook) -> None:
    """Write search.json (the parent's status fields for the trials, plus what resumes need)
    and search.html, the page drawn from it."""
    content = {
        "job": plan.job.metadata.name,
        "fingerprint": book.fingerprint,
        **search_status(plan.job.spec, book.trials),
        "messages": book.messages,
    }
    _write_json(plan.output_dir / SEARCH_FILE, content)
    write_search_html(
        plan.output_dir / SEARCH_HTML,
        plan.job.metadata.name,
        plan.job.spec,
        book.trials,
        book.messages,
    )


def trial_run(plan: SearchPlan, number: int, params: Mapping[str, Any]) -> LocalRun:
    """Trial `number` as a local run: the parent's spec with `params`, into trial-<number>/."""
    spec = FineTuneJobSpec.model_validate(trial_spec(plan.job.spec, params))
    config = spec.training_config().relative_to(plan.base)
    name = trial_name(plan.job.metadata.name, number)
    return LocalRun(name, config, plan.output_dir / f"trial-{number}")


def trial_result(spec: FineTuneJobSpec, report: Mapping[str, Any]) -> TrialResult:
    """A finished trial's state and objective, from its report.json."""
    metric, _ = objective_metric(spec)
    objective = objective_of(spec, {"metrics": report.get("bestMetrics") or {}})
    intermediate = _intermediate(report, metric)
    if not report.get("succeeded"):
        verdict = (report.get("diagnosis") or {}).get("verdict")
        return TrialResult("Failed", None, intermediate, f"training failed ({verdict})")
    if objective is None:
        return TrialResult("Failed", None, intermediate, f"the run reported no {metric}")
    return TrialResult("Complete", objective, intermediate)


def _announce(plan: SearchPlan, book: TrialBook, notify: Notify) -> None:
    search = plan.job.spec.search
    assert search is not None
    paths = ", ".join(p.path for p in search.parameters)
    notify(
        f"Searching {plan.job.metadata.name}: {search.algorithm} over {paths}, "
        f"{total_trials(search)} trials, {plan.parallel} at a time, into {plan.output_dir}"
    )
    if book.trials:
        finished = sum(t.state not in ACTIVE_STATES for t in book.trials)
        notify(f"Resuming from {plan.output_dir / SEARCH_FILE}: {finished} trials finished")
    if search.early_stopping is not None:
        notify("search.earlyStopping: pruning runs only on a cluster; local trials run to the end")


def _run_trials(plan: SearchPlan, book: TrialBook, notify: Notify) -> None:
    """Start trials while slots are free and the engine proposes some; record each ending."""
    spec = plan.job.spec
    assert spec.search is not None
    parent = _with_parallelism(plan.job, plan.parallel)
    interrupted = [t for t in book.trials if t.state in ACTIVE_STATES]
    running: dict[Future[TrialResult], TrialStatus] = {}
    threads = max(1, (os.cpu_count() or 1) // (plan.parallel * plan.processes))
    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        launch = _launcher(plan, pool, threads)
        while True:
            if _failed(book) <= spec.search.max_failed_trials:
                free = plan.parallel - len(running)
                starting, interrupted = interrupted[:free], interrupted[free:]
                if not interrupted:
                    starting += [
                        _record_start(plan, book, p.number, p.params)
                        for p in next_trials(parent, book.trials)
                    ]
                for trial in starting:
                    notify(started_line(trial))
                    running[launch(trial)] = trial
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                _record_end(plan, book, running.pop(future), future.result(), notify)


def _with_parallelism(job: FineTuneJob, parallel: int) -> FineTuneJob:
    """The parent as next_trials should see it: `parallel` trials at once."""
    assert job.spec.search is not None
    search = job.spec.search.model_copy(update={"parallelism": parallel})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"search": search})})


def _failed(book: TrialBook) -> int:
    return sum(t.state == "Failed" for t in book.trials)


def _record_start(
    plan: SearchPlan, book: TrialBook, number: int, params: dict[str, Any]
) -> TrialStatus:
    trial = TrialStatus(
        number=number,
        name=trial_name(plan.job.metadata.name, number),
        state="Running",
        params=params,
    )
    book.trials.append(trial)
    save_book(plan, book)
    return trial


def _record_end(
    plan: SearchPlan, book: TrialBook, trial: TrialStatus, result: TrialResult, notify: Notify
) -> None:
    ended = trial.model_copy(
        update={
            "state": result.state,
            "objective": result.objective,
            "intermediate": result.intermediate,
        }
    )
    book.trials[trial.number] = ended
    if result.message:
        book.messages[str(trial.number)] = result.message
    else:
        book.messages.pop(str(trial.number), None)
    save_book(plan, book)
    metric, _ = objective_metric(plan.job.spec)
    notify(ended_line(trial.number, metric, result))


def started_line(trial: TrialStatus) -> str:
    """What the terminal says when a trial starts: its number and its values."""
    return f"trial {trial.number} started: {params_text(trial.params)}"


def ended_line(number: int, metric: str, result: TrialResult) -> str:
    """What the terminal says when a trial ends: its objective, or why it failed."""
    if result.state == "Complete":
        return f"trial {number} complete: {metric}={value_text(result.objective)}"
    return f"trial {number} failed: {result.message}"


def _launcher(
    plan: SearchPlan, pool: ThreadPoolExecutor, threads: int
) -> Callable[[TrialStatus], Future[TrialResult]]:
    """How a trial starts: in this process when one trial at a time with one process each
    (no torch import per trial), else as a trainer subprocess on a pool thread."""

    def launch(trial: TrialStatus) -> Future[TrialResult]:
        if plan.parallel == 1 and plan.processes == 1:
            done: Future[TrialResult] = Future()
            done.set_result(_run_trial(plan, trial, _in_process))
            return done
        return pool.submit(
            _run_trial, plan, trial, lambda run: _in_subprocess(run, plan.processes, threads)
        )

    return launch


Train = Callable[[LocalRun], str | None]
"""Runs a trial's training; why it failed to, or None when it wrote its report."""


def _run_trial(plan: SearchPlan, trial: TrialStatus, train: Train) -> TrialResult:
    """Train the trial unless its run already finished (interrupted before search.json said so)."""
    try:
        run = trial_run(plan, trial.number, trial.params)
    except (SearchError, ValidationError) as error:
        return TrialResult("Failed", message=first_line(error))
    if (run.output_dir / REPORT_JSON).exists():
        return trial_result(plan.job.spec, read_report(run))
    run.output_dir.mkdir(parents=True, exist_ok=True)
    problem = train(run)
    if problem is not None:
        return TrialResult("Failed", message=problem)
    return trial_result(plan.job.spec, read_report(run))


def _in_process(run: LocalRun) -> str | None:
    try:
        run_in_process(run)
    except LocalRunError as error:
        return str(error)
    return None


def _in_subprocess(run: LocalRun, processes: int, threads: int) -> str | None:
    """The trainer entry point in a subprocess, its output in trial-<n>/trainer.log."""
    log = run.output_dir / LOG_FILE
    with log.open("ab") as sink:
        completed = subprocess.run(
            trainer_command(run, processes),
            env=trainer_environment(processes, threads),
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if (run.output_dir / REPORT_JSON).exists():
        return None
    if completed.returncode == EXIT_INVALID_INPUT:
        return _trainer_message(log)
    code = completed.returncode
    return f"the trainer exited with code {code} before writing a report; its log: {log}"


def _trainer_message(log: Path) -> str:
    """The trainer's own message about refused input: the last line it wrote with its prefix."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    refusals = [line for line in lines if line.startswith(TRAINER_MESSAGE_PREFIX)]
    if not refusals:
        return f"the trainer refused its input; its log: {log}"
    return refusals[-1].removeprefix(TRAINER_MESSAGE_PREFIX)


def _intermediate(report: Mapping[str, Any], metric: str) -> dict[str, float]:
    evaluations = (report.get("curves") or {}).get("evaluations") or []
    values: dict[str, float] = {}
    for evaluation in evaluations:
        value = (evaluation.get("metrics") or {}).get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            values[str(evaluation.get("step"))] = float(value)
    return values


def _search_report(plan: SearchPlan, book: TrialBook) -> dict[str, Any]:
    spec = plan.job.spec
    search = spec.search
    assert search is not None
    outcome = search_outcome(spec, book.trials)
    best = best_trial(spec, book.trials)
    metric, direction = objective_metric(spec)
    importance, importance_note = parameter_importance(spec, book.trials)
    best_report = plan.output_dir / f"trial-{best.number}" / REPORT_JSON if best else None
    best_metrics = _read_json(best_report).get("bestMetrics", {}) if best_report else {}
    return {
        "job": plan.job.metadata.name,
        "kind": "search",
        "succeeded": outcome.phase == "Succeeded",
        "message": outcome.message,
        "finishedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "primaryMetric": metric,
        "bestMetrics": best_metrics,
        "search": {
            "algorithm": search.algorithm,
            "objective": {"metric": metric, "direction": direction},
            "totalTrials": total_trials(search),
            "parallel": plan.parallel,
            "pruning": "off" if search.early_stopping is None else "not run locally",
        },
        **search_status(spec, book.trials),
        "messages": book.messages,
        "trialDirectories": {
            str(t.number): str(plan.output_dir / f"trial-{t.number}") for t in book.trials
        },
        "importance": importance,
        "importanceNote": importance_note,
        "artifacts": {
            "model": _publish_best(plan, best.number, MODEL_DIR) if best else "",
            "mergedModel": _publish_best(plan, best.number, MERGED_DIR) if best else "",
            "bestTrialReport": str(best_report or ""),
            "search": str(plan.output_dir / SEARCH_FILE),
            "searchHtml": str(plan.output_dir / SEARCH_HTML),
        },
    }


def _read_json(path: Path) -> dict[str, Any]:
    content: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return content


def _publish_best(plan: SearchPlan, number: int, folder: str) -> str:
    """OUTPUT/model (or merged): a relative link to the best trial's (a copy where links
    fail); none where the best trial has none, so no earlier best's is left in its place."""
    source = plan.output_dir / f"trial-{number}" / folder
    target = plan.output_dir / folder
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    if not source.is_dir():
        return ""
    try:
        target.symlink_to(Path(f"trial-{number}") / folder, target_is_directory=True)
    except OSError:
        shutil.copytree(source, target)
    return str(target)


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write atomically: an interrupted write never leaves half a trials table."""
    write_text_atomically(path, json.dumps(content, indent=2, ensure_ascii=False))
