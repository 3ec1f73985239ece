"""`kubetune status NAME`: a FineTuneJob's status and Events, read in the terminal.

`kubectl get ftj` shows one line and `kubectl describe` a wall of YAML; this is the glance
an ML engineer wants while a job runs: where it stands, how far it is, the metrics, and
the trainer's verdicts on the curves, the data and the bias audit. Pure functions from the
object as the API returns it (plain data, camelCase) to rich renderables, so they are
tested without a cluster. Every string comes from the cluster and reaches rich escaped.
A search parent's page (`--html`) is views/search_page.py's, drawn from its spec and
status.trials.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from kubetune_operator.api.manifests import check_document
from kubetune_operator.api.plain import mapping, mappings
from kubetune_operator.cli.views.terminal import (
    BIAS_VALUE_COLUMNS,
    Column,
    bias_parts,
    counts_text,
    diagnosis_line,
    facts,
    fmt,
    labelled,
    table,
)
from kubetune_operator.search import SearchError
from kubetune_trainer.formatting import MISSING, value_text

RECENT_EVENTS: Final = 5
PHASE_STYLE: Final = {
    "Pending": "yellow",
    "Queued": "yellow",
    "Running": "cyan",
    "Succeeded": "green",
    "Failed": "red",
    "Suspended": "magenta",
}
DIAGNOSIS_STYLE: Final = {"Healthy": "green", "Inconclusive": "yellow"}
BIAS_COLUMNS: Final[tuple[Column, ...]] = (
    ("metric", lambda metric: str(metric.get("name", ""))),
    ("attribute", lambda metric: str(metric.get("attribute", ""))),
    *BIAS_VALUE_COLUMNS,
)
LABEL_WIDTH: Final = 0
"""Labels and their text two spaces apart, unaligned."""
_EPOCH: Final = datetime.min.replace(tzinfo=UTC)


class PageError(Exception):
    """A job's search page cannot be drawn; the message names the job and says why."""


def status_of(job: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object's status (empty before the operator wrote one)."""
    return mapping(job.get("status"))


def phase(job: Mapping[str, Any]) -> str | None:
    """The status phase, or None while the operator has not seen the job."""
    value = status_of(job).get("phase")
    return str(value) if value else None


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime; None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def event_time(event: Mapping[str, Any]) -> datetime:
    """When an Event last happened: lastTimestamp, else eventTime, else its creation."""
    moments = (
        event.get("lastTimestamp"),
        event.get("eventTime"),
        mapping(event.get("metadata")).get("creationTimestamp"),
    )
    parsed = (parse_time(moment) for moment in moments)
    return next((moment for moment in parsed if moment is not None), _EPOCH)


def recent_events(
    events: Sequence[Mapping[str, Any]], count: int = RECENT_EVENTS
) -> list[Mapping[str, Any]]:
    """The last `count` Events, oldest first."""
    return sorted(events, key=event_time)[-count:] if count > 0 else []


def duration_text(seconds: float) -> str:
    """A short human duration: 45s, 12m 05s, 3h 07m, 2d 04h."""
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def age_text(timestamp: object, now: datetime) -> str:
    """How long ago a timestamp was, or the en dash when there is none."""
    moment = parse_time(timestamp)
    return MISSING if moment is None else duration_text((now - moment).total_seconds())


def progress_text(progress: Mapping[str, Any]) -> str:
    """Epoch, step, percentage and ETA on one line, leaving out what is not known yet."""
    parts = []
    if progress.get("epochs"):
        parts.append(f"epoch {fmt(progress.get('epoch', 0))}/{fmt(progress['epochs'])}")
    if progress.get("totalSteps"):
        step = f"step {fmt(progress.get('step', 0))}/{fmt(progress['totalSteps'])}"
        parts.append(f"{step} ({fmt(progress.get('percent', 0))}%)")
    eta = progress.get("etaSeconds")
    if isinstance(eta, int | float) and not isinstance(eta, bool):
        parts.append(f"ETA {duration_text(eta)}")
    return "  ".join(parts) or MISSING


def workers_text(status: Mapping[str, Any]) -> str:
    """Worker pods by phase, and the group restarts."""
    workers = mapping(status.get("workers"))
    counts = [
        f"{fmt(workers[state])} {state}"
        for state in ("running", "pending", "succeeded", "failed")
        if workers.get(state)
    ]
    restarts = status.get("restarts") or 0
    return f"{', '.join(counts) or 'none yet'}; restarts {fmt(restarts)}"


def last_failure_text(failure: Mapping[str, Any]) -> str:
    """The last worker failure: cause, step, restart number and exit code."""
    text = str(failure.get("reason") or "failed")
    if failure.get("step") is not None:
        text += f" at step {fmt(failure['step'])}"
    details = [f"worker group {fmt(failure.get('restart', 0))}"]
    if failure.get("exitCode") is not None:
        details.append(f"exit code {failure['exitCode']}")
    return f"{text} ({', '.join(details)})"


def renderables(
    job: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime
) -> list[RenderableType]:
    """What `kubetune status` prints, top to bottom."""
    status = status_of(job)
    parts: list[RenderableType] = [_heading(job), _facts(status, now)]
    parts += _conditions(status, now)
    parts += _metrics(status)
    parts += _diagnosis(mapping(status.get("diagnosis")))
    parts += _data(mapping(status.get("dataValidation")))
    parts += bias_parts(status, LABEL_WIDTH, BIAS_COLUMNS)
    parts += _artifacts(mapping(status.get("artifacts")))
    parts += _trials(status)
    parts += _events(recent_events(events), now)
    return parts


def _heading(job: Mapping[str, Any]) -> str:
    metadata = mapping(job.get("metadata"))
    name = f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"
    current = phase(job)
    shown = (
        f"[{PHASE_STYLE.get(current, 'bold')}]{escape(current)}[/]"
        if current
        else "[dim]not seen by the operator yet[/]"
    )
    return f"[bold]FineTuneJob {escape(name)}[/]  {shown}"


def _facts(status: Mapping[str, Any], now: datetime) -> Table:
    rows = [
        ("progress", progress_text(mapping(status.get("progress")))),
        ("workers", workers_text(status)),
    ]
    if status.get("queuePosition"):
        rows.append(("queue position", str(status["queuePosition"])))
    runtime = mapping(status.get("runtime"))
    if runtime:
        rows.append(("runtime", runtime_text(runtime, status.get("effectiveSpecHash"))))
    failure = mapping(status.get("lastFailure"))
    if failure:
        rows.append(("last failure", last_failure_text(failure)))
    if status.get("metricSummary"):
        rows.append(("metric", str(status["metricSummary"])))
    if status.get("startTime"):
        rows.append(("started", f"{age_text(status['startTime'], now)} ago"))
    if status.get("completionTime"):
        rows.append(("finished", f"{age_text(status['completionTime'], now)} ago"))
    return facts(rows)


def runtime_text(runtime: Mapping[str, Any], spec_hash: object) -> str:
    """ClusterFineTuneRuntime a100 (generation 3), spec sha256:0123456789ab."""
    text = f"{runtime.get('kind', '')} {runtime.get('name', '')}"
    if runtime.get("generation") is not None:
        text += f" (generation {runtime['generation']})"
    if isinstance(spec_hash, str):
        text += f", spec {spec_hash[:19]}"
    return text


def _conditions(status: Mapping[str, Any], now: datetime) -> list[RenderableType]:
    conditions = mappings(status.get("conditions"))
    if not conditions:
        return []
    rows = [
        [
            str(c.get("type", "")),
            str(c.get("status", "")),
            str(c.get("reason", "")),
            str(c.get("message", "")),
            age_text(c.get("lastTransitionTime"), now),
        ]
        for c in conditions
    ]
    return [table("conditions", ["type", "status", "reason", "message", "age"], rows)]


def _metrics(status: Mapping[str, Any]) -> list[RenderableType]:
    metrics = mapping(status.get("metrics"))
    if not metrics:
        return []
    return [table("metrics", list(metrics), [[fmt(value) for value in metrics.values()]])]


def _diagnosis(diagnosis: Mapping[str, Any]) -> list[RenderableType]:
    style = DIAGNOSIS_STYLE.get(str(diagnosis.get("verdict")), "red")
    line = diagnosis_line(diagnosis, LABEL_WIDTH, style)
    if line is None:
        return []
    evidence = diagnosis.get("evidence")
    notes = [f"  • {escape(str(item))}" for item in evidence] if isinstance(evidence, list) else []
    return [line, *notes]


def _data(data: Mapping[str, Any]) -> list[RenderableType]:
    if not data:
        return []
    mark = "[green]✓[/]" if data.get("passed", True) else "[red]✗[/]"
    message = escape(str(data.get("message") or ""))
    lines: list[RenderableType] = [labelled("data", f"{mark} {message}".rstrip(), LABEL_WIDTH)]
    if data.get("rowsIn") is not None:
        lines.append(f"  rows: {fmt(data['rowsIn'])} in, {fmt(data.get('rowsOut'))} kept")
    for title, key in (("dropped", "dropped"), ("flagged", "flagged"), ("added", "added")):
        counts = mapping(data.get(key))
        if counts:
            lines.append(f"  {title}: {escape(counts_text(counts))}")
    classes = mapping(data.get("classCounts"))
    if classes:
        listed = ", ".join(f"{label} {fmt(n)}" for label, n in classes.items())
        ratio = data.get("imbalanceRatio")
        imbalance = f" (imbalance {fmt(ratio)}:1)" if ratio is not None else ""
        lines.append(f"  classes: {escape(listed)}{escape(imbalance)}")
    if data.get("recommendation"):
        lines.append(f"  recommendation: {escape(str(data['recommendation']))}")
    return lines


def _artifacts(artifacts: Mapping[str, Any]) -> list[RenderableType]:
    names = {
        "outputUri": "output",
        "model": "model",
        "mergedModel": "merged model",
        "report": "report.json",
        "reportHtml": "report.html",
        "lastCheckpoint": "last checkpoint",
    }
    rows = [[title, str(artifacts[key])] for key, title in names.items() if artifacts.get(key)]
    return [table("artifacts", ["", "where"], rows)] if rows else []


def _trials(status: Mapping[str, Any]) -> list[RenderableType]:
    trials = mappings(status.get("trials"))
    if not trials:
        return []
    states = Counter(str(trial.get("state")) for trial in trials)
    line = labelled("trials", f"{len(trials)}: ", LABEL_WIDTH) + escape(
        ", ".join(f"{n} {state.lower()}" for state, n in states.items())
    )
    best = mapping(status.get("bestTrial"))
    if best:
        objective = value_text(best.get("objective"))
        line += f"; best {escape(str(best.get('name')))} ({escape(objective)})"
    return [line]


def _events(events: Sequence[Mapping[str, Any]], now: datetime) -> list[RenderableType]:
    if not events:
        return []
    rows = [
        [
            age_text_of_event(event, now),
            str(event.get("type", "")),
            str(event.get("reason", "")),
            str(event.get("message", "")),
        ]
        for event in events
    ]
    return [table("events", ["age", "type", "reason", "message"], rows)]


def age_text_of_event(event: Mapping[str, Any], now: datetime) -> str:
    """How long ago an Event last happened, with its repeat count when above one."""
    moment = event_time(event)
    age = MISSING if moment == _EPOCH else duration_text((now - moment).total_seconds())
    count = event.get("count")
    return f"{age} (x{count})" if isinstance(count, int) and count > 1 else age


def search_page(job: Mapping[str, Any]) -> str:
    """search.html of a search parent, from its spec and status.trials."""
    metadata = mapping(job.get("metadata"))
    shown = f"FineTuneJob {metadata.get('namespace', '')}/{metadata.get('name', '')}"
    if not mapping(job.get("spec")).get("search"):
        raise PageError(
            f"{shown} is not a search parent (its spec has no search section); "
            "--html draws the page of a search"
        )
    checked = check_document({k: v for k, v in job.items() if k != "status"}, shown)
    if checked.job is None:
        problems = "; ".join(str(problem) for problem in checked.problems)
        raise PageError(f"{shown}: its spec is not valid ({problems})")
    from kubetune_operator.cli.views.search_page import render_search_html  # matplotlib

    trials = mappings(status_of(job).get("trials"))
    try:
        return render_search_html(checked.job.metadata.name, checked.job.spec, trials)
    except SearchError as error:
        raise PageError(f"{shown}: {error}") from None
