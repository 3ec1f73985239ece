"""The `kubetune` command as a user meets it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kubetune_operator.api import crdgen
from kubetune_operator.cli import console
from kubetune_operator.cli.app import app
from kubetune_operator.cli.local import runs
from kubetune_trainer.data.conversations import CHATML_TEMPLATE
from kubetune_trainer.diagnosis import EvalPoint, RunSetup, diagnose
from tests.conftest import AFTER_ANOTHER_RUN, EXAMPLE_MANIFESTS, REPO
from tests.tiny import make_tiny_chat_lm

runner = CliRunner()
SENTIMENT = REPO / "examples/sentiment/job.yaml"


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user would."""
    executable = shutil.which("kubetune")
    assert executable, "the kubetune console script is not installed (pip install -e .)"
    return subprocess.run([executable, *args], capture_output=True, text=True, check=False)


def test_validate_passes_the_examples() -> None:
    standalone = [str(p) for p in EXAMPLE_MANIFESTS if p not in AFTER_ANOTHER_RUN]
    result = kubetune("validate", *standalone)
    assert result.returncode == 0, result.stderr
    assert "FineTuneJob sentiment is valid" in result.stdout
    assert "FineTuneJob sentiment-every-section is valid" in result.stdout


def test_the_dpo_example_is_valid_once_the_sft_example_made_its_model(tmp_path: Path) -> None:
    example = tmp_path / "examples/chat"
    shutil.copytree(REPO / "examples/chat", example)
    missing = kubetune("validate", str(example / "dpo.yaml"))
    assert missing.returncode == 1
    assert "spec.model.source" in missing.stderr
    assert "examples/chat/../../runs/chat-sft/merged does not exist" in missing.stderr

    # In place of what `kubetune run examples/chat/sft.yaml` writes there:
    make_tiny_chat_lm(tmp_path / "runs/chat-sft/merged", ["a name"], CHATML_TEMPLATE)
    result = kubetune("validate", str(example / "dpo.yaml"))
    assert result.returncode == 0, result.stderr
    assert "FineTuneJob chat-dpo is valid" in result.stdout


def test_validate_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    broken = (
        SENTIMENT.read_text()
        .replace("epochs: 2", "epochs: 0")
        .replace("batchSize: 32", "batchSize: 32\n    optimiser: adamw")
    )
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    result = kubetune("validate", str(path), str(SENTIMENT))
    assert result.returncode == 1
    assert f"✗ {path}: 2 problems" in result.stderr
    assert "spec.training.epochs: must be >= 1 (got 0)" in result.stderr
    assert "spec.training.optimiser: unknown field; did you mean optimizer?" in result.stderr
    assert "FineTuneJob sentiment is valid" in result.stdout
    assert "Traceback" not in result.stderr


def test_validate_refuses_a_freezing_section_that_freezes_everything(tmp_path: Path) -> None:
    frozen = SENTIMENT.read_text().replace(
        "  evaluation:\n", "  freezing:\n    frozenModules: ['*']\n  evaluation:\n", 1
    )
    path = tmp_path / "frozen.yaml"
    path.write_text(frozen)
    result = kubetune("validate", str(path))
    assert result.returncode == 1
    assert (
        "spec.freezing: frozenModules: '*' freezes every parameter, so nothing would train"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_passes_every_example_and_skips_the_kustomization_with_a_note() -> None:
    examples = sorted(
        str(p) for p in (REPO / "examples").rglob("*.yaml") if p not in AFTER_ANOTHER_RUN
    )
    assert str(REPO / "examples/gitops/kustomization.yaml") in examples

    result = kubetune("validate", *examples)

    assert result.returncode == 0, result.stderr
    assert f"- {REPO}/examples/gitops/kustomization.yaml: Kustomization skipped " in result.stdout
    assert "FineTuneJob sentiment-debiased is valid" in result.stdout
    assert "ClusterFineTuneRuntime a100 is valid" in result.stdout
    assert (
        "    not checked here: spec.data.train.source pvc://kubetune-data/sentiment/train.csv, "
        "spec.data.validation.source pvc://kubetune-data/sentiment/validation.csv "
        "(on a PersistentVolumeClaim, mounted only in the pods)"
    ) in result.stdout
    assert result.stderr == ""


def copy_of_the_sentiment_job(folder: Path, *data: str) -> Path:
    """The sentiment manifest in `folder`, with only the named files of its data/ beside it."""
    (folder / "data").mkdir(parents=True)
    for name in data:
        shutil.copy(SENTIMENT.parent / "data" / name, folder / "data" / name)
    return Path(shutil.copy(SENTIMENT, folder / "job.yaml"))


def test_validate_names_a_missing_data_file_by_field_and_resolved_path(tmp_path: Path) -> None:
    manifest = copy_of_the_sentiment_job(tmp_path, "validation.csv")

    result = kubetune("validate", str(manifest))

    assert result.returncode == 1
    assert f"✗ {manifest}: 1 problem" in result.stderr
    assert (
        f"    spec.data.train.source: {tmp_path}/data/train.csv does not exist "
        "(relative to the manifest's folder)"
    ) in result.stderr
    assert "is valid" not in result.stdout


def test_validate_checks_the_columns_of_a_local_audit_file_not_the_validation_file(
    tmp_path: Path,
) -> None:
    manifest = copy_of_the_sentiment_job(tmp_path, "train.csv")
    (tmp_path / "data/validation.csv").write_text("text,label\nit is good,positive\n")
    job = yaml.safe_load(manifest.read_text())
    job["spec"]["bias"]["auditData"] = {"source": "audit.csv"}
    manifest.write_text(yaml.safe_dump(job))
    audit = tmp_path / "audit.csv"

    audit.write_text("text,label,dialect\nI reckon it is good,positive,regional\n")
    accepted = runner.invoke(app, ["validate", str(manifest)], terminal_width=400)
    audit.write_text("text,label\nI reckon it is good,positive\n")
    refused = runner.invoke(app, ["validate", str(manifest)], terminal_width=400)

    assert accepted.exit_code == 0, accepted.output
    assert refused.exit_code == 1
    assert (
        f"spec.data.sensitiveColumns: column 'dialect' is not in the audit file {audit} "
        "(spec.bias.auditData; columns: text, label)"
    ) in refused.output


def test_validate_resolves_data_paths_against_the_manifests_folder_not_the_working_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of_the_sentiment_job(tmp_path / "jobs", "train.csv", "validation.csv")
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(app, ["validate", "jobs/job.yaml"], terminal_width=400)

    assert result.exit_code == 0, result.output
    assert "✓ jobs/job.yaml: FineTuneJob sentiment is valid" in result.output


def test_validate_checks_local_paths_with_a_runtime_too(tmp_path: Path) -> None:
    manifest = copy_of_the_sentiment_job(tmp_path, "train.csv")

    result = runner.invoke(
        app,
        ["validate", str(manifest), "--runtime", str(REPO / "examples/runtimes/small-cpu.yaml")],
        terminal_width=400,
    )

    assert result.exit_code == 1
    assert f"spec.data.validation.source: {tmp_path}/data/validation.csv does not exist" in (
        result.output
    )


def test_validate_of_only_other_kinds_says_so_and_exits_1(tmp_path: Path) -> None:
    pod = tmp_path / "pod.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    kustomization = str(REPO / "examples/gitops/kustomization.yaml")

    alone = kubetune("validate", kustomization)
    both = kubetune("validate", kustomization, str(pod))

    assert alone.returncode == 1
    assert f"- {kustomization}: Kustomization skipped (not a kubetune resource)" in alone.stdout
    assert f"✗ {kustomization}: holds no FineTuneJob or runtime, only other kinds (skipped)" in (
        alone.stderr
    )
    assert both.returncode == 1
    assert f"- {pod}: Pod skipped (not a kubetune resource)" in both.stdout
    assert "✗ none of the 2 files holds a FineTuneJob or runtime" in both.stderr


def test_validate_still_calls_a_near_miss_kind_of_kubetunes_group_an_error(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(SENTIMENT.read_text().replace("kind: FineTuneJob", "kind: FinetuneJob"))

    result = kubetune("validate", str(REPO / "examples/gitops/kustomization.yaml"), str(typo))

    assert result.returncode == 1
    assert "did you mean FineTuneJob?" in result.stderr
    assert "none of the" not in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe\x00junk", "not UTF-8 text (byte 0)"),
        (b"a: [1, 2\n", "line 2, column 1"),
        (b"[" * 10_000, "nested deeper than 64 levels"),
        (b"apiVersion: v1\nkind: Pod\n", "holds no FineTuneJob"),
        (b"", "holds no YAML document"),
        (b"- just\n- a list\n", "must be a mapping (got a list)"),
    ],
)
def test_validate_refuses_hostile_files_without_a_traceback(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    result = kubetune("validate", str(path))
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def written(manifest: dict[str, Any], folder: Path) -> Path:
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True))
    return path


@pytest.mark.parametrize("command", ["validate", "run"])
def test_quantities_not_above_zero_are_refused_by_name(
    tmp_path: Path, sentiment: dict[str, Any], command: str
) -> None:
    sentiment["spec"]["resources"].update(cpu="-2", memory="-4Gi", sharedMemory="0")
    result = runner.invoke(app, [command, str(written(sentiment, tmp_path))], terminal_width=400)
    assert result.exit_code == 1
    for field, value in (("cpu", "-2"), ("memory", "-4Gi"), ("sharedMemory", "0")):
        assert (
            f"spec.resources.{field}: must be a Kubernetes quantity above zero such as 4, 500m, "
            f"16Gi (got '{value}')"
        ) in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_label_with_a_bidi_override_is_refused_by_code_point(
    tmp_path: Path, sentiment: dict[str, Any], command: str
) -> None:
    sentiment["spec"]["model"]["labels"] = ["negative", "evil\u202e"]
    result = runner.invoke(app, [command, str(written(sentiment, tmp_path))], terminal_width=400)
    assert result.exit_code == 1
    assert (
        "    spec.model.labels[1]: must not contain U+202E RIGHT-TO-LEFT OVERRIDE: control and "
        "bidirectional-override characters would reach terminals and reports\n"
    ) in result.output
    assert "\u202e" not in result.output


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_hf_revision_that_climbs_out_is_refused_by_field(
    tmp_path: Path, sentiment: dict[str, Any], command: str
) -> None:
    sentiment["spec"]["model"]["source"] = "hf://org/name@../../../etc"
    result = runner.invoke(app, [command, str(written(sentiment, tmp_path))], terminal_width=400)
    assert result.exit_code == 1
    assert (
        "    spec.model.source: hf://ORG/NAME@REVISION: revision '../../../etc' is not a git "
        "branch, tag or commit ("
    ) in result.output
    assert "Traceback" not in result.output


def test_validate_echoes_a_name_with_an_emoji_code_as_it_is(
    tmp_path: Path, sentiment: dict[str, Any]
) -> None:
    sentiment["metadata"]["name"] = ":x:"
    result = kubetune("validate", str(written(sentiment, tmp_path)))
    assert result.returncode == 1
    assert "    metadata.name: must be a DNS-1123 label" in result.stderr
    assert "(got ':x:')" in result.stderr
    assert "\N{CROSS MARK}" not in result.stderr


def test_validate_a_missing_file() -> None:
    result = runner.invoke(app, ["validate", "no/such/job.yaml"])
    assert result.exit_code == 1
    assert "no/such/job.yaml: cannot read: No such file or directory" in result.output


def test_crd_check_passes_on_the_checkout() -> None:
    result = runner.invoke(app, ["crd", "--check", "--root", str(REPO)])
    assert result.exit_code == 0, result.output


def test_crd_writes_then_check_detects_drift(tmp_path: Path) -> None:
    (tmp_path / "charts/kubetune").mkdir(parents=True)
    result = runner.invoke(app, ["crd", "--root", str(tmp_path)])
    assert result.exit_code == 0
    written = tmp_path / "crds/finetunejobs.kubetune.dev.yaml"
    assert written.read_text() == crdgen.render_crd()
    assert (tmp_path / "charts/kubetune/crds/finetunejobs.kubetune.dev.yaml").exists()
    written.write_text(written.read_text().replace("maximum: 1000", "maximum: 1001", 1))
    result = runner.invoke(app, ["crd", "--check", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "differs from the models: run `kubetune crd`" in result.output


def test_crd_writes_the_field_reference_and_check_detects_its_drift(tmp_path: Path) -> None:
    assert runner.invoke(app, ["crd", "--root", str(tmp_path)]).exit_code == 0
    reference = tmp_path / "docs/reference.md"
    text = reference.read_text()
    assert "## `spec.training`" in text
    assert "| `learningRate` | number |" in text
    assert "## `status.biasAudit`" in text
    reference.write_text(text.replace("learningRate", "learning_rate"))
    result = runner.invoke(app, ["crd", "--check", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "docs/reference.md differs from the models" in result.output


def test_crd_check_names_missing_files_as_missing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["crd", "--check", "--root", str(tmp_path)], terminal_width=400)
    assert result.exit_code == 1
    assert f"{tmp_path / 'crds/finetunejobs.kubetune.dev.yaml'} is missing: run `kubetune crd`" in (
        result.output
    )
    assert "differs" not in result.output


@pytest.mark.parametrize("check", [[], ["--check"]])
def test_crd_with_a_root_that_is_not_a_directory_says_so(tmp_path: Path, check: list[str]) -> None:
    root = tmp_path / "file"
    root.write_text("mine")
    result = runner.invoke(app, ["crd", "--root", str(root), *check], terminal_width=400)
    assert result.exit_code == 1
    assert f"--root {root}: not a directory (the checkout's root)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_crd_that_cannot_write_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "crds").write_text("a file where the folder goes")
    result = runner.invoke(app, ["crd", "--root", str(tmp_path)], terminal_width=400)
    assert result.exit_code == 1
    assert f"{tmp_path / 'crds'}: cannot be written (File exists)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_crd_to_stdout_is_the_committed_file() -> None:
    result = runner.invoke(app, ["crd", "--stdout"])
    assert result.stdout == (REPO / "crds/finetunejobs.kubetune.dev.yaml").read_text()


def test_explain_a_section_and_a_field() -> None:
    result = runner.invoke(app, ["explain", "spec.training"], terminal_width=200)
    assert result.exit_code == 0
    assert "spec.training <object>" in result.stdout
    assert "learningRate" in result.stdout
    assert "default 5e-05; > 0; <= 10" in result.stdout
    result = runner.invoke(app, ["explain", "spec.training.scheduler"], terminal_width=200)
    assert "default linear; one of linear, cosine, cosine-with-restarts" in result.stdout


def test_explain_an_unknown_field() -> None:
    result = runner.invoke(app, ["explain", "spec.trainig"])
    assert result.exit_code == 1
    assert "spec has no field 'trainig'" in result.output


def test_kubetune_operator_runs_the_operator_program_with_its_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubetune_operator", "operator", "--log-format", "xml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--log-format must be json or plain (got xml)" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_overwrite_keeps_a_directory_that_holds_files_no_run_wrote(tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    shutil.copy(SENTIMENT, manifest)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "report.json").write_text("{}")
    result = runner.invoke(
        app, ["run", str(manifest), "--output", str(tmp_path), "--overwrite"], terminal_width=400
    )
    assert result.exit_code == 1
    assert (
        f"output directory {tmp_path}: --overwrite deletes it, and it holds what no run wrote "
        "(job.yaml, notes.txt)" in result.output
    )
    assert manifest.read_text() == SENTIMENT.read_text()
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_run_into_an_output_that_is_a_file_says_so(tmp_path: Path, overwrite: list[str]) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine")
    result = runner.invoke(
        app, ["run", str(SENTIMENT), "--output", str(taken), *overwrite], terminal_width=400
    )
    assert result.exit_code == 1
    assert f"output directory {taken}: is a file, not a directory" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert taken.read_text() == "mine"


def test_run_into_an_output_below_a_file_says_it_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("mine")
    below = tmp_path / "taken/run"
    result = runner.invoke(app, ["run", str(SENTIMENT), "--output", str(below)], terminal_width=400)
    assert result.exit_code == 1
    assert f"output directory {below}: cannot be written (Not a directory)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


class InterruptedImport:
    """Stands for the CLI module while a Ctrl-C arrives during its import."""

    def __getattr__(self, name: str) -> object:
        raise KeyboardInterrupt


def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "kubetune_operator.cli.app", InterruptedImport())
    with pytest.raises(SystemExit) as exited:
        console.main()
    assert exited.value.code == 130
    assert capsys.readouterr().err == "kubetune: interrupted\n"


def test_python_dash_m_runs_the_command(tmp_path: Path) -> None:
    environment = {"PYTHONPATH": f"{REPO / 'trainer'}:{REPO / 'operator'}", "PATH": ""}
    command = [sys.executable, "-m", "kubetune_operator", "validate"]
    valid = subprocess.run(
        [*command, str(SENTIMENT)], capture_output=True, text=True, env=environment
    )
    assert valid.returncode == 0, valid.stderr
    assert "FineTuneJob sentiment is valid" in valid.stdout
    missing = subprocess.run(
        [*command, str(tmp_path / "none.yaml")], capture_output=True, text=True, env=environment
    )
    assert missing.returncode == 1
    assert "none.yaml: cannot read: No such file or directory" in missing.stderr


def test_ctrl_c_during_a_run_exits_130_and_says_how_to_continue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupted(run: object, **_: object) -> dict[str, object]:
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "run_in_process", interrupted)
    result = runner.invoke(
        app, ["run", str(SENTIMENT), "--output", str(tmp_path / "run")], terminal_width=400
    )
    assert result.exit_code == 130
    assert (
        "✗ sentiment: interrupted; run the same command again to continue from the last "
        "checkpoint saved in its output directory, if any" in result.output
    )


def test_run_summary_warns_of_a_perfect_validation_score(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The training is left out (it is the trainer's to test); its diagnosis is real.
    evals = [
        EvalPoint(step, epoch, {"loss": loss, "accuracy": accuracy}, {"accuracy": accuracy})
        for step, epoch, loss, accuracy in [(19, 1.0, 0.21, 0.97), (38, 2.0, 0.02, 1.0)]
    ]
    losses = [(step, 0.7 * 0.9**step) for step in range(1, 39)]
    diagnosis = diagnose(
        losses,
        evals,
        "accuracy",
        setup=RunSetup(),
        max_gap=None,
        underfitting_floor=None,
        majority_rate=0.5,
        diverged=None,
    )

    def finished(run: runs.LocalRun, **_: object) -> dict[str, object]:
        return {
            "job": run.name,
            "succeeded": True,
            "outcome": "succeeded",
            "bestMetrics": {"accuracy": 1.0, "loss": 0.02},
            "diagnosis": diagnosis.to_status(),
        }

    monkeypatch.setattr(runs, "run_in_process", finished)
    result = runner.invoke(
        app, ["run", str(SENTIMENT), "--output", str(tmp_path / "run")], terminal_width=400
    )
    assert result.exit_code == 0, result.output
    assert (
        "  diagnosis      Healthy: Check the data before trusting a perfect validation score: "
        "it usually means leakage between the splits" in result.output
    )
