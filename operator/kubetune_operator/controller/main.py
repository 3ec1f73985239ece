"""`kubetune-operator`: what the operator Deployment runs (kopf, against the current cluster).

The operator pod's program is its own entry point, so the controller never needs the
`kubetune` command's modules (terminal views, local runs) and the command never loads the
controller's. `kubetune operator` runs this program as a child process, for a developer
who runs the operator from a laptop against a kubeconfig cluster.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="kubetune-operator",
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


@app.command()
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
    try:
        import kopf

        from kubetune_operator import kube
        from kubetune_operator.controller import (
            handlers,  # noqa: F401  (its decorators register the handlers)
        )
    except ModuleNotFoundError as error:
        install = escape("python -m pip install 'kubetune[operator]'")
        err.print(
            f"[red]✗[/] the operator needs {escape(str(error.name))}, which is not "
            f"installed: {install}"
        )
        raise typer.Exit(1) from None

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
    """Console-script entry point of the operator pod."""
    app(prog_name="kubetune-operator")
