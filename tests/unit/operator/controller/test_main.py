"""The operator pod's program (`kubetune-operator`): its refusals, before kopf starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubetune_operator.controller.main import app

runner = CliRunner()


def test_the_operator_without_a_cluster_says_so_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    result = runner.invoke(app, [])
    assert result.exit_code == 1
    assert "cannot find a cluster to talk to" in result.output
    assert "Traceback" not in result.output


def test_the_operator_refuses_an_unknown_log_format() -> None:
    result = runner.invoke(app, ["--log-format", "xml"])
    assert result.exit_code == 2
    assert "--log-format must be json or plain (got xml)" in result.output
