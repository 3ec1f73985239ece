"""The `kubetune` command: check manifests, generate the CRD, explain fields.

Every user mistake ends in a message that names the file and the field, and a non-zero
exit; tracebacks are for kubetune's own bugs only.
"""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kubetune_operator import crdgen, explain, local, run_report
from kubetune_operator.api.v1alpha1 import FineTuneJob
from kubetune_operator.manifests import Checked, ManifestError, check_file

app = typer.Typer(
    name="kubetune",
    help="Self-service fine-tuning on Kubernetes, and the same run on your laptop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Argument(help="Manifest files (YAML, several documents allowed).")
    ],
) -> None:
    """Check FineTuneJob manifests against the API; print every problem with its field path."""
    failed = False
    for path in files:
        failed |= not _report_file(path)
    if failed:
        raise typer.Exit(1)


def _report_file(path: Path) -> bool:
    try:
        results = check_file(path)
    except ManifestError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        return False
    if not any(r.job or r.problems for r in results):
        err.print(f"[red]✗[/] {escape(str(path))}: holds no FineTuneJob")
        return False
    reported = [_report_document(result) for result in results]  # report every document
    return all(reported)


def _report_document(result: Checked) -> bool:
    source = escape(result.source)
    if result.skipped_kind:
        out.print(f"[dim]- {source}: {escape(result.skipped_kind)} skipped (not a FineTuneJob)[/]")
        return True
    if result.job:
        out.print(f"[green]✓[/] {source}: FineTuneJob {escape(result.name)} is valid")
        return True
    count = len(result.problems)
    err.print(f"[red]✗[/] {source}: {count} problem{'s' if count != 1 else ''}")
    for problem in result.problems:
        err.print(f"    {escape(str(problem))}")
    return False


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="A FineTuneJob manifest.")],
    output: Annotated[
        Path | None, typer.Option(help="Output directory (default: spec.output.uri or runs/NAME).")
    ] = None,
    processes: Annotated[
        int, typer.Option(min=1, max=64, help="Training processes (CPU, gloo) on this machine.")
    ] = 1,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a finished run in the output directory.")
    ] = False,
) -> None:
    """Run a FineTuneJob on this machine, no cluster needed; print where the results are."""
    job = _single_job(manifest)
    try:
        plan = local.plan_local_run(job, manifest, output)
        local.prepare_output(plan, overwrite)
        out.print(f"Training [bold]{escape(plan.name)}[/] into {escape(str(plan.output_dir))}")
        report = (
            local.run_in_process(plan)
            if processes == 1
            else local.run_with_accelerate(plan, processes)
        )
    except local.LocalRunError as error:
        err.print(f"[red]✗[/] {escape(job.metadata.name)}: {escape(str(error))}")
        raise typer.Exit(1) from None
    _print_summary(report)
    if not report["succeeded"]:
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


def _print_summary(report: dict[str, Any]) -> None:
    succeeded = bool(report["succeeded"])
    mark = "[green]✓[/]" if succeeded else "[red]✗[/]"
    out.print(f"{mark} {escape(str(report['job']))} {'finished' if succeeded else 'failed'}")
    best = report.get("bestMetrics") or {}
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in best.items() if v is not None)
    diagnosis = report.get("diagnosis") or {}
    rows = [
        ("metrics", metrics),
        ("diagnosis", f"{diagnosis.get('verdict')}: {diagnosis.get('suggestion', '')}"),
    ]
    artifacts = report.get("artifacts") or {}
    rows += [
        (name, str(artifacts[name]))
        for name in ("model", "report", "reportHtml", "lastCheckpoint")
        if artifacts.get(name)
    ]
    for name, value in rows:
        out.print(f"  [bold]{name:<15}[/]{escape(value)}")
    bias = run_report.bias_line(report)
    if bias is not None:
        out.print(f"  [bold]{'bias audit':<15}[/]{bias}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run's output directory (holds report.json).")],
    open_page: Annotated[
        bool, typer.Option("--open", help="Open report.html in the web browser.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON instead.")
    ] = False,
) -> None:
    """Summarize a finished run from its report.json: outcome, metrics, data, bias audit."""
    try:
        content = run_report.load_report(run_dir)
    except run_report.ReportError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        raise typer.Exit(1) from None
    if as_json:
        out.out(json.dumps(run_report.summary(content, run_dir), indent=2, ensure_ascii=False))
    else:
        for part in run_report.renderables(content, run_dir):
            out.print(part)
    if open_page:
        _open_page(run_report.html_path(run_dir))


def _open_page(page: Path) -> None:
    if not page.exists():
        err.print(f"[red]✗[/] {escape(str(page))}: no such file (the run drew no page)")
        raise typer.Exit(1)
    webbrowser.open(page.as_uri())


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
    """Generate the FineTuneJob CRD from the API models into crds/ and the Helm chart, and
    the field reference into docs/reference.md."""
    if stdout:
        out.out(crdgen.render_crd(), end="")
        return
    reference = root / explain.REFERENCE_FILE
    if check:
        stale = crdgen.stale_crds(root) + ([reference] if explain.reference_is_stale(root) else [])
        for path in stale:
            err.print(f"[red]✗[/] {escape(str(path))} differs from the models: run `kubetune crd`")
        if stale:
            raise typer.Exit(1)
        out.print("[green]✓[/] the CRD files and the field reference match the models")
        return
    changed = crdgen.write_crds(root)
    for path in crdgen.crd_paths(root):
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


@app.command(name="operator")
def run_operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            help="Watch only this namespace (repeat for several; globs allowed). "
            "Default: every namespace.",
        ),
    ] = None,
    peering: Annotated[
        str | None,
        typer.Option(
            help="kopf peering name: replicas that share it elect one active operator. "
            "Default: standalone (run one replica)."
        ),
    ] = None,
    liveness: Annotated[
        str, typer.Option(help="Where kopf serves the health probe.")
    ] = "http://0.0.0.0:8081/healthz",
    log_format: Annotated[
        str, typer.Option(help="json (structured, one object per line) or plain.")
    ] = "json",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
) -> None:
    """Run the FineTuneJob operator against the current cluster (in-cluster or kubeconfig)."""
    import kopf

    from kubetune_operator import (
        handlers,  # noqa: F401  (its decorators register the handlers)
        kube,
    )

    formats = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.FULL}
    if log_format not in formats:
        err.print(f"[red]✗[/] --log-format must be json or plain (got {escape(log_format)})")
        raise typer.Exit(2)
    try:
        kube.connect()
    except kube.KubeError as error:
        err.print(f"[red]✗[/] {escape(str(error))}")
        raise typer.Exit(1) from None
    kopf.configure(verbose=verbose, log_format=formats[log_format], log_refkey="object")
    namespaces = namespace or []
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=peering is None,
        peering_name=peering,
        liveness_endpoint=liveness,
    )


def main() -> None:
    """Console-script entry point."""
    app()
