"""The `kubetune` command: check manifests, run them here or submit them to a cluster.

Every user mistake ends in a message that names the file and the field, and a non-zero
exit; tracebacks are for kubetune's own bugs only. The same holds for the cluster: no
kubeconfig, an unreachable API server or a refusal is one line that says what to fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import webbrowser
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from kubetune_operator import runtimes
from kubetune_operator.api import crdgen
from kubetune_operator.api.manifests import Checked, ManifestError, check_document, check_file
from kubetune_operator.api.runtime import AnyRuntime
from kubetune_operator.api.v1alpha1 import DNS_LABEL_PATTERN, TERMINAL_PHASES, FineTuneJob
from kubetune_operator.cli import explain
from kubetune_operator.cli.local import paths, runs
from kubetune_operator.cli.views import run_summary, terminal
from kubetune_trainer.config import EXIT_STALLED

if TYPE_CHECKING:  # the cluster client and Optuna load only for the commands that use them
    from kubetune_operator import kube
    from kubetune_operator.cli.local import searches
    from kubetune_trainer.watchdog import Stall

app = typer.Typer(
    name="kubetune",
    help="Self-service fine-tuning on Kubernetes, and the same run on your laptop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Every value a user gives is printed literally: escape() keeps rich's markup out of it,
# emoji=False its emoji codes (a job named ':x:' is not a cross mark).
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


@contextlib.contextmanager
def _needs_extra(extra: str, command: str) -> Iterator[None]:
    """Around the imports of a command that needs more than the base install: a missing
    package is one line naming the extra that installs it, not an import traceback."""
    try:
        yield
    except ModuleNotFoundError as error:
        install = escape(f"python -m pip install 'kubetune[{extra}]'")
        err.print(
            f"[red]✗[/] kubetune {command} needs {escape(str(error.name))}, which is not "
            f"installed: {install}"
        )
        raise typer.Exit(1) from None


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Argument(help="Manifest files (YAML, several documents allowed).")
    ],
    runtime: Annotated[
        list[Path] | None,
        typer.Option(
            "--runtime",
            help="FineTuneRuntime/ClusterFineTuneRuntime files; each job is checked with its "
            "runtime's defaults and guardrails (repeatable).",
        ),
    ] = None,
) -> None:
    """Check FineTuneJob and runtime manifests against the API; print every problem with its
    field path, and with --runtime every broken guardrail with its value and limit.

    A job's local data and model paths must exist (see local/paths.py); other kinds of
    objects (a Kustomization beside the jobs) are skipped with a note, and only files that
    hold no kubetune resource at all, between them, are an error."""
    available = _load_runtimes(runtime) if runtime else []
    if available is None:
        raise typer.Exit(1)
    failed, kubetune = False, False
    for path in files:
        results = _checked_documents(path)
        if results is None:
            failed = True
            continue
        kubetune |= any(r.is_kubetune for r in results)
        if available:
            failed |= not _report_with(results, path, available)
        else:
            failed |= not _report_file(results, path)
    if not (kubetune or failed):
        err.print(f"[red]✗[/] {escape(_nothing_to_check(files))}")
    if failed or not kubetune:
        raise typer.Exit(1)


def _nothing_to_check(files: list[Path]) -> str:
    if len(files) == 1:
        return f"{files[0]}: holds no FineTuneJob or runtime, only other kinds (skipped)"
    return f"none of the {len(files)} files holds a FineTuneJob or runtime"


def _report_file(results: list[Checked], path: Path) -> bool:
    """Validate a file of FineTuneJobs and runtimes, printing what is valid and what is not."""
    reported = [_with_sources(r, path, _report_document) for r in results]  # report all
    return all(reported)


def _with_sources(result: Checked, manifest: Path, report: Callable[[Checked], bool]) -> bool:
    """Report a document as `report` does; for a job, its local sources must exist too, and
    a dim note says which sources this machine could not check."""
    if result.job is None:
        return report(result)
    found = paths.check_sources(result.job, manifest)
    if found.problems:
        _print_problems(escape(result.source), found.problems, "problem")
        return False
    if not report(result):
        return False
    note = found.note()
    if note is not None:
        out.print(f"    [dim]not checked here: {escape(note)}[/]")
    return True


def _valid_jobs(path: Path) -> list[FineTuneJob] | None:
    """The file's FineTuneJobs, after printing what `validate` prints; None on any problem."""
    try:
        results = check_file(path)
    except ManifestError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        return None
    if not any(r.job or r.problems for r in results):
        err.print(f"[red]✗[/] {escape(str(path))}: holds no FineTuneJob")
        return None
    reported = [_report_document(result) for result in results]  # report every document
    return [r.job for r in results if r.job] if all(reported) else None


def _report_document(result: Checked) -> bool:
    source = escape(result.source)
    if result.skipped_kind:
        out.print(
            f"[dim]- {source}: {escape(result.skipped_kind)} skipped (not a kubetune resource)[/]"
        )
        return True
    if result.runtime:
        return _report_runtime(result.runtime, source)
    if result.job:
        out.print(f"[green]✓[/] {source}: FineTuneJob {escape(result.name)} is valid")
        return True
    _print_problems(source, [str(p) for p in result.problems], "problem")
    return False


def _print_problems(source: str, lines: list[str], noun: str) -> None:
    count = len(lines)
    err.print(f"[red]✗[/] {source}: {count} {noun}{'s' if count != 1 else ''}")
    for line in lines:
        err.print(f"    {escape(line)}")


def _report_runtime(runtime: AnyRuntime, source: str) -> bool:
    """A runtime document: valid as a model, and its defaults keep its own guardrails."""
    conflicts = runtimes.runtime_problems(runtime)
    if conflicts:
        _print_problems(source, [v.message for v in conflicts], "problem")
        return False
    out.print(f"[green]✓[/] {source}: {escape(runtime.display_name)} is valid")
    return True


def _load_runtimes(paths: list[Path]) -> list[Checked] | None:
    """The valid runtime documents of the --runtime files; None (after printing why) otherwise."""
    found: list[Checked] = []
    for path in paths:
        try:
            results = check_file(path)
        except ManifestError as error:
            err.print(f"[red]✗[/] {escape(str(error))}")
            return None
        if not all(_report_document(r) for r in results if r.runtime or r.problems):
            return None
        found += [r for r in results if r.runtime]
    if not found:
        err.print(f"[red]✗[/] --runtime {escape(', '.join(map(str, paths)))}: holds no runtime")
        return None
    return found


def _report_with(results: list[Checked], path: Path, available: list[Checked]) -> bool:
    """Validate the file's jobs as their runtime makes them: defaults merged, guardrails kept."""

    def with_runtime(result: Checked) -> bool:
        return _report_job_with(result, available) if result.job else _report_document(result)

    reported = [_with_sources(r, path, with_runtime) for r in results]
    return all(reported)


def _checked_documents(path: Path) -> list[Checked] | None:
    """The file's checked documents; None (after printing why) when it cannot be read."""
    try:
        return check_file(path)
    except ManifestError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        return None


def _report_job_with(result: Checked, available: list[Checked]) -> bool:
    assert result.job is not None
    assert result.document is not None
    source = escape(result.source)
    try:
        chosen = _runtime_for(result.job, available)
    except runtimes.RuntimeSelectionError as error:
        _print_problems(source, [str(error)], "problem")
        return False
    effective = check_document(runtimes.effective_manifest(result.document, chosen.document), "")
    if effective.job is None:
        lines = [f"{p} (with {chosen.name}'s defaults)" for p in effective.problems]
        _print_problems(source, lines, "problem")
        return False
    assert chosen.runtime is not None
    violations = runtimes.check_guardrails(effective.job, chosen.runtime)
    if violations:
        _print_problems(source, [v.message for v in violations], "guardrail violation")
        return False
    digest = runtimes.spec_hash(effective.job.spec.model_dump(mode="json", exclude_none=True))
    out.print(
        f"[green]✓[/] {source}: FineTuneJob {escape(result.name)} is valid with "
        f"{escape(chosen.runtime.display_name)} (effective spec {digest[:19]})"
    )
    return True


def _runtime_for(job: FineTuneJob, available: list[Checked]) -> Checked:
    """The runtime the cluster would pick among the given ones; the only one given, when the
    job names none and none is a default (the user named it on the command line)."""
    documents = {id(r.document): r for r in available}
    namespaced = [
        r.document for r in available if r.document and r.runtime and _is_namespaced(r.runtime)
    ]
    cluster = [
        r.document for r in available if r.document and r.runtime and not _is_namespaced(r.runtime)
    ]
    picked = runtimes.pick_runtime(job, namespaced, cluster)
    if picked is not None:
        return documents[id(picked)]
    if len(available) == 1:
        return available[0]
    raise runtimes.RuntimeSelectionError(
        "spec.runtimeRef: not set, and none of the given runtimes is labelled as the default; "
        "name one in spec.runtimeRef"
    )


def _is_namespaced(runtime: AnyRuntime) -> bool:
    return runtime.kind == "FineTuneRuntime"


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="A FineTuneJob manifest.")],
    output: Annotated[
        Path | None,
        typer.Option(
            help="Output directory; relative paths: from the current directory (default: "
            "spec.output.uri, whose relative paths are from the manifest's folder, else "
            "./runs/NAME)."
        ),
    ] = None,
    processes: Annotated[
        int, typer.Option(min=1, max=64, help="Training processes (CPU, gloo) on this machine.")
    ] = 1,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a finished run in the output directory (only a directory that holds "
            "nothing but a run's files: nothing else is deleted).",
        ),
    ] = False,
    parallel: Annotated[
        int,
        typer.Option(
            min=1,
            max=100,
            help="A search's trials at once, as subprocesses (at most search.parallelism).",
        ),
    ] = 1,
) -> None:
    """Run a FineTuneJob on this machine, no cluster needed; print where the results are.

    A job with spec.search runs its trials here into OUTPUT/trial-<n>/; run it again to
    resume an interrupted search. A run that makes no progress for runPolicy.stallTimeout
    is stopped (exit code 6); run it again to continue from its last checkpoint.
    """
    job = _single_job(manifest)
    with _needs_extra("trainer", "run"):
        runs.check_trainer_installed(search=job.spec.search is not None)
    try:
        plan = runs.plan_local_run(job, manifest, output)
        runs.prepare_output(plan, overwrite)
        if job.spec.search is not None:
            from kubetune_operator.cli.local import searches

            _run_search(searches.plan_search(job, plan, manifest, parallel, processes))
            return
        out.print(f"Training [bold]{escape(plan.name)}[/] into {escape(str(plan.output_dir))}")
        again = _run_command(manifest, output, processes)

        def stalled(stall: Stall) -> None:
            _print_stall(plan.name, stall, again)

        report = (
            runs.run_in_process(plan, on_stall=stalled)
            if processes == 1
            else runs.run_with_accelerate(plan, processes)
        )
    except runs.StalledRunError as stopped:
        _print_stall(job.metadata.name, stopped.stall, again)
        raise typer.Exit(EXIT_STALLED) from None
    except runs.LocalRunError as error:
        err.print(f"[red]✗[/] {escape(job.metadata.name)}: {escape(str(error))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(
            f"[red]✗[/] {escape(job.metadata.name)}: interrupted; run the same command again "
            "to continue from the last checkpoint saved in its output directory, if any"
        )
        raise typer.Exit(128 + signal.SIGINT) from None  # as a shell reports Ctrl-C
    _print_summary(report)
    if report.get("outcome") == "interrupted":  # by Ctrl-C, with a checkpoint
        raise typer.Exit(128 + signal.SIGINT)
    if not report["succeeded"]:
        raise typer.Exit(1)


def _run_command(manifest: Path, output: Path | None, processes: int) -> str:
    """The `kubetune run` command line that continues this run."""
    words = ["kubetune", "run", str(manifest)]
    words += ["--output", str(output)] if output is not None else []
    words += ["--processes", str(processes)] if processes > 1 else []
    return shlex.join(words)


def _print_stall(name: str, stall: Stall, again: str) -> None:
    """The one line of a run its watchdog stopped (see kubetune_trainer.watchdog)."""
    err.print(f"[red]✗[/] {escape(name)}: {escape(stall.verdict(again))}")


def _run_search(plan: searches.SearchPlan) -> None:
    """Run or resume the search; print its trials, best trial and importance; exit 1 unless
    it succeeded."""
    from kubetune_operator.cli.local import searches

    report = searches.run_search(plan, lambda line: out.print(escape(line)))
    for part in run_summary.renderables(report, plan.output_dir):
        out.print(part)
    if not report["succeeded"]:
        err.print(f"[red]✗[/] {escape(plan.job.metadata.name)}: {escape(report['message'])}")
        raise typer.Exit(1)


def _single_job(manifest: Path) -> FineTuneJob:
    try:
        results = check_file(manifest)
    except ManifestError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        raise typer.Exit(1) from None
    jobs = [r for r in results if r.job or r.problems]
    if len(jobs) != 1:
        err.print(f"[red]✗[/] {escape(str(manifest))}: holds {len(jobs)} FineTuneJobs; run one")
        raise typer.Exit(1)
    if jobs[0].job is None:
        _report_document(jobs[0])
        raise typer.Exit(1)
    return jobs[0].job


OUTCOME_WORDS = {
    "succeeded": "finished",
    "interrupted": "interrupted (run it again to resume from its checkpoint)",
    "budgetExceeded": "stopped: the GPU budget is spent (a checkpoint is kept)",
    "stalled": "stopped: no progress for runPolicy.stallTimeout (run it again to continue)",
}
"""How `kubetune run` names report.json's outcome; "failed" says itself."""


def _print_summary(report: dict[str, Any]) -> None:
    succeeded = bool(report["succeeded"])
    mark = "[green]✓[/]" if succeeded else "[red]✗[/]"
    outcome = report.get("outcome") or ("succeeded" if succeeded else "failed")
    out.print(f"{mark} {escape(str(report['job']))} {OUTCOME_WORDS.get(outcome, outcome)}")
    best = report.get("bestMetrics") or {}
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in best.items() if v is not None)
    rows = [("metrics", metrics)] if metrics else []
    if outcome in runs.CONTINUED_OUTCOMES:  # unfinished curves: no verdict on them yet
        rows.append(("stopped at", f"step {report.get('steps')}"))
    else:
        diagnosis = report.get("diagnosis") or {}
        rows.append(("diagnosis", f"{diagnosis.get('verdict')}: {diagnosis.get('suggestion', '')}"))
    artifacts = report.get("artifacts") or {}
    rows += [
        (name, str(artifacts[name]))
        for name in ("model", "mergedModel", "report", "reportHtml", "lastCheckpoint")
        if artifacts.get(name)
    ]
    for name, value in rows:
        out.print(f"  [bold]{name:<15}[/]{escape(value)}")
    bias = terminal.bias_line(report)
    if bias is not None:
        out.print(f"  [bold]{'bias audit':<15}[/]{bias}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run's output directory (holds report.json).")],
    open_page: Annotated[
        bool,
        typer.Option(
            "--open", help="Open the page (report.html; a search's search.html) in the web browser."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON instead.")
    ] = False,
) -> None:
    """Summarize a finished run from its report.json: outcome, metrics, data, bias audit
    (a search: its trials, best trial and parameter importance)."""
    try:
        content = run_summary.load_report(run_dir)
    except run_summary.ReportError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        raise typer.Exit(1) from None
    if as_json:
        out.out(json.dumps(run_summary.summary(content, run_dir), indent=2, ensure_ascii=False))
    else:
        for part in run_summary.renderables(content, run_dir):
            out.print(part)
    if open_page:
        _open_page(run_summary.page_path(content, run_dir))


def _open_page(page: Path) -> None:
    if not page.exists():
        err.print(f"[red]✗[/] {escape(str(page))}: no such file (the run drew no page)")
        raise typer.Exit(1)
    webbrowser.open(page.as_uri())


MAX_NAMESPACE_LENGTH = 63
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="Namespace (default: the manifest's, else the kubeconfig context's, else default).",
    ),
]


@app.command()
def submit(
    manifest: Annotated[Path, typer.Argument(help="A FineTuneJob manifest.")],
    namespace: NamespaceOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and show what would be created; send nothing.")
    ] = False,
) -> None:
    """Check a manifest like `validate`, then create its FineTuneJobs in the current cluster."""
    jobs = _valid_jobs(manifest)
    if jobs is None:
        raise typer.Exit(1)
    _check_namespace_option(namespace)
    for job in jobs:
        for field_path, uri in _laptop_paths(job):
            err.print(
                f"[yellow]![/] {escape(field_path)}: {escape(uri)} is a path on this machine, "
                "which the pods cannot see; use pvc://CLAIM/PATH (a volume the pods mount) "
                "or an absolute path inside the trainer image"
            )
    with _needs_extra("operator", "submit"):
        from kubetune_operator import kube
    if dry_run:
        for job in jobs:
            target = _namespace_for(job, namespace)
            out.print(f"dry run: would create FineTuneJob {escape(target)}/{job.metadata.name}")
        return
    with _kube_errors():
        cluster = kube.Cluster(kube.connect())
        created = [_create(cluster, job, _namespace_for(job, namespace)) for job in jobs]
    if not all(created):
        raise typer.Exit(1)


def _check_namespace_option(namespace: str | None) -> None:
    if namespace is None:
        return
    if len(namespace) > MAX_NAMESPACE_LENGTH or not re.fullmatch(DNS_LABEL_PATTERN, namespace):
        err.print(
            f"[red]✗[/] --namespace {escape(namespace)!r}: must be a DNS label "
            "(lowercase letters, digits and '-', at most 63 characters)"
        )
        raise typer.Exit(1)


def _namespace_for(job: FineTuneJob, namespace: str | None) -> str:
    from kubetune_operator import kube

    return namespace or job.metadata.namespace or kube.current_namespace()


def _laptop_paths(job: FineTuneJob) -> list[tuple[str, str]]:
    """(field path, value) of every source or output that names a file of this machine:
    a relative path, or an absolute one that exists here (the pods see the image's)."""
    located = paths.job_sources(job, ("source", "uri"))
    return [(path, uri) for path, uri in located if _names_a_local_file(uri)]


def _names_a_local_file(uri: str) -> bool:
    if uri.startswith("file://"):
        return os.path.exists(uri.removeprefix("file://"))
    if "://" in uri:
        return False
    return not os.path.isabs(uri) or os.path.exists(uri)


def _create(cluster: kube.Cluster, job: FineTuneJob, namespace: str) -> bool:
    from kubetune_operator import kube

    body = job.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"status"})
    body["metadata"]["namespace"] = namespace
    name = job.metadata.name
    with kube.explained(f"create FineTuneJob {namespace}/{name}"):
        created = cluster.create(body)
    if not created:
        err.print(
            f"[red]✗[/] FineTuneJob {escape(namespace)}/{name} already exists, and its spec "
            f"cannot change once it started: delete it first (kubectl delete ftj {name} "
            f"-n {escape(namespace)}) or give the manifest a new metadata.name"
        )
        return False
    out.print(f"[green]✓[/] created FineTuneJob {escape(namespace)}/{name}")
    out.print(f"  follow it: kubetune status {name} -n {escape(namespace)} --watch")
    return True


@contextlib.contextmanager
def _kube_errors() -> Iterator[None]:
    from kubetune_operator import kube

    try:
        yield
    except kube.KubeError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        raise typer.Exit(1) from None


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="The FineTuneJob's name.")],
    namespace: NamespaceOption = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow the job until it succeeds (exit 0) or fails (exit 1).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw status (a line per change with --watch).")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between polls with --watch.")
    ] = 2.0,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="FILE",
            help="Write a search parent's page (trials, objective, slice plots, importance).",
        ),
    ] = None,
) -> None:
    """Show a FineTuneJob: phase, conditions, progress, metrics, verdicts and recent Events.

    A search parent's page (trials, objective, slice plots, importance): --html FILE.
    """
    _check_namespace_option(namespace)
    if html is not None:
        _check_page_options(html, watch=watch, as_json=as_json)
    with _needs_extra("operator", "status"):
        from kubetune_operator import kube
    if html is not None:
        with _needs_extra("report", "status --html"):
            import matplotlib  # noqa: F401  (the page's charts; refused before the cluster is asked)
    with _kube_errors():
        cluster = kube.Cluster(kube.connect())
        target = namespace or kube.current_namespace()
        if html is not None:
            _write_search_page(cluster, target, name, html)
            return
        if not watch:
            _show(*_fetch(cluster, target, name), as_json=as_json, compact=False)
            return
        final = _watch(cluster, target, name, interval, as_json)
    if final != "Succeeded":
        raise typer.Exit(1)


def _check_page_options(page: Path, *, watch: bool, as_json: bool) -> None:
    if watch or as_json:
        err.print("[red]✗[/] --html writes the page once; leave out --watch and --json")
        raise typer.Exit(1)
    if not page.parent.is_dir():
        err.print(
            f"[red]✗[/] --html {escape(str(page))}: the folder {escape(str(page.parent))} "
            "does not exist"
        )
        raise typer.Exit(1)


def _write_search_page(cluster: kube.Cluster, namespace: str, name: str, page: Path) -> None:
    from kubetune_operator.cli.views import job_status
    from kubetune_trainer.report.files import write_text_atomically

    job, _ = _fetch(cluster, namespace, name)
    try:
        write_text_atomically(page, job_status.search_page(job))
    except job_status.PageError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        raise typer.Exit(1) from None
    except OSError as error:
        err.print(f"[red]✗[/] --html {escape(str(page))}: cannot be written ({escape(str(error))})")
        raise typer.Exit(1) from None
    trials = len(job_status.status_of(job).get("trials") or [])
    out.print(
        f"[green]✓[/] wrote {escape(str(page))}: the search page of FineTuneJob "
        f"{escape(namespace)}/{escape(name)} ({trials} trials)"
    )


def _fetch(
    cluster: kube.Cluster, namespace: str, name: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from kubetune_operator import kube

    with kube.explained(f"read FineTuneJob {namespace}/{name}"):
        try:
            job = cluster.get_job(namespace, name)
        except kube.KubeError:
            raise kube.KubeError(_not_found(cluster, namespace, name)) from None
        uid = job.get("metadata", {}).get("uid")
        events = cluster.list_events(namespace, uid) if uid else []
    return job, events


def _not_found(cluster: kube.Cluster, namespace: str, name: str) -> str:
    from kubetune_operator import kube

    message = f"FineTuneJob {namespace}/{name} not found"
    with contextlib.suppress(kube.KubeError), kube.explained("list FineTuneJobs"):
        names = cluster.list_job_names(namespace)
        message += f"; {namespace} holds " + (", ".join(names) if names else "no FineTuneJob")
    return message


def _show(
    job: Mapping[str, Any], events: list[dict[str, Any]], *, as_json: bool, compact: bool
) -> None:
    from kubetune_operator.cli.views import job_status

    if as_json:
        status = job_status.status_of(job)
        out.out(json.dumps(status, ensure_ascii=False, indent=None if compact else 2))
        return
    for part in job_status.renderables(job, events, datetime.now(UTC)):
        out.print(part)


def _watch(
    cluster: kube.Cluster, namespace: str, name: str, interval: float, as_json: bool
) -> str | None:
    """Poll until the job finishes, showing each change; the final phase."""
    from kubetune_operator.cli.views import job_status

    live = out.is_terminal and not as_json
    shown: object = None
    with Live(console=out, auto_refresh=False) if live else contextlib.nullcontext() as screen:
        while True:
            job, events = _fetch(cluster, namespace, name)
            if screen is not None:  # a terminal: redraw in place, so the ages tick too
                parts = job_status.renderables(job, events, datetime.now(UTC))
                screen.update(Group(*parts), refresh=True)
            elif (job.get("status"), events) != shown:
                if shown is not None and not as_json:
                    out.rule(datetime.now().strftime("%H:%M:%S"), style="dim")
                _show(job, events, as_json=as_json, compact=True)
                shown = (job.get("status"), events)
            if job_status.phase(job) in TERMINAL_PHASES:
                return job_status.phase(job)
            time.sleep(interval)


@app.command()
def crd(
    root: Annotated[
        Path, typer.Option(help="Checkout root holding crds/ and charts/kubetune/.")
    ] = Path("."),
    check: Annotated[
        bool, typer.Option("--check", help="Only check that the files are current; exit 1 if not.")
    ] = False,
    stdout: Annotated[
        bool, typer.Option("--stdout", help="Print the CRD instead of writing files.")
    ] = False,
) -> None:
    """Generate the CRDs from the API models into crds/ and the Helm chart, the chart's
    values schema for defaultPolicy, and the field reference into docs/reference.md."""
    if stdout:
        out.out(crdgen.render_crd(), end="")
        return
    if not root.is_dir():
        err.print(f"[red]✗[/] --root {escape(str(root))}: not a directory (the checkout's root)")
        raise typer.Exit(1)
    reference = root / explain.REFERENCE_FILE
    if check:
        _check_crds(root, reference)
        return
    try:
        _write_crds(root, reference)
    except OSError as error:
        where, reason = error.filename or root, error.strerror or str(error)
        err.print(f"[red]✗[/] {escape(str(where))}: cannot be written ({escape(reason)})")
        raise typer.Exit(1) from None


def _check_crds(root: Path, reference: Path) -> None:
    stale = crdgen.stale_crds(root) + ([reference] if explain.reference_is_stale(root) else [])
    for path in stale:
        state = "differs from the models" if path.exists() else "is missing"
        err.print(f"[red]✗[/] {escape(str(path))} {state}: run `kubetune crd`")
    if stale:
        raise typer.Exit(1)
    out.print("[green]✓[/] the CRD files and the field reference match the models")


def _write_crds(root: Path, reference: Path) -> None:
    changed = crdgen.write_crds(root)
    for path in crdgen.generated_files(root):
        out.print(f"{'wrote' if path in changed else 'unchanged'} {escape(str(path))}")
    wrote = explain.write_reference(root)
    out.print(f"{'wrote' if wrote else 'unchanged'} {escape(str(reference))}")


@app.command(name="explain")
def explain_field(
    path: Annotated[str, typer.Argument(help="A field path such as spec.training.")] = "spec",
) -> None:
    """Describe a FineTuneJob field and the fields below it, from the CRD schema."""
    try:
        node = explain.schema_at(path)
    except explain.UnknownFieldPathError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        raise typer.Exit(1) from None
    out.print(f"[bold]{escape(path)}[/] <{escape(explain.type_name(node))}>")
    if node.get("description"):
        out.print(escape(node["description"]))
    details = explain.constraints(node)
    if details:
        out.print(f"[dim]{escape(details)}[/]")
    fields = explain.describe(node)
    if fields:
        out.print(_fields_table(fields))


def _fields_table(fields: list[explain.FieldDoc]) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("field", "type", "description"):
        table.add_column(column)
    for doc in fields:
        name = f"{doc.name} [red]*[/]" if doc.required else doc.name
        text = escape(doc.description) + (
            f"\n[dim]{escape(doc.constraints)}[/]" if doc.constraints else ""
        )
        table.add_row(name, escape(doc.type), text)
    return table


@app.command(
    name="operator",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def run_operator(context: typer.Context) -> None:
    """Run the FineTuneJob operator against the current cluster (in-cluster or kubeconfig).

    The options are those of `kubetune-operator`, the operator pod's own program, which
    this runs (see `kubetune operator --help`)."""
    with _needs_extra("operator", "operator"):
        import kopf  # noqa: F401  (refused here, before a second Python starts)
    command = [sys.executable, "-m", "kubetune_operator.controller", *context.args]
    raise typer.Exit(subprocess.call(command))


def main() -> None:
    """The command line (the console script wraps it: kubetune_operator.cli.console)."""
    app()
