"""Sharded training (training.sharding: fsdp) end to end: two CPU processes (gloo) under the
pods' launcher, a tiny GPT-2, real sharded checkpoints.

A sharded run follows the loss curve of a plain data-parallel run of the same model, data
and seed (the gradients are averaged over the same rows, only the collectives differ:
reduce-scatter instead of all-reduce, so the sums may differ in their last bits), and its
final model/ is the whole model, gathered from the shards: it loads with
`from_pretrained` and answers as the plain run's model does. A sharded run killed mid-run
(SIGKILL of the whole group, no checkpoint on the way out) starts again from its last
sharded checkpoint and finishes on the curve of the run that was never stopped (it shards
gradients and optimizer state only, `training.fsdp.strategy: gradients-and-optimizer`,
which changes where parameters live between the passes, not the arithmetic).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.hang import HANG_ENV, MARKER
from tests.tiny import make_tiny_causal_lm

pytestmark = pytest.mark.slow

MAX_STEPS = 6
LAUNCH = [sys.executable, "-m", "kubetune_trainer.launch", "--multi_gpu", "--num_machines", "1"]
LAUNCH += ["--num_processes", "2", "--main_process_port", "0"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kubetune_trainer"]
LOSS_TOLERANCE = 1e-4
"""Relative: the averaged gradients differ only in the order of their float sums."""


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory, small_data: tuple[Path, Path]) -> Path:
    with small_data[0].open() as handle:
        texts = [row["text"] + " " + row["label"] for row in csv.DictReader(handle)]
    return make_tiny_causal_lm(tmp_path_factory.mktemp("gpt") / "model", texts)


def write_config(
    folder: Path,
    model: Path,
    data: tuple[Path, Path],
    sharding: str,
    strategy: str = "full",
    **output: Any,
) -> Path:
    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "task": "causal-lm"},
            "data": {
                "train": {"source": str(data[0])},
                "validation": {"source": str(data[1])},
                "textColumn": "text",
                "textPairColumn": "label",
                "maxLength": 48,
            },
            "training": {
                "maxSteps": MAX_STEPS,
                "batchSize": 8,
                "learningRate": 3e-3,
                "seed": 3,
                "sharding": sharding,
                "gradientCheckpointing": sharding == "fsdp",
                "fsdp": {"strategy": strategy},
            },
            "regularization": {"dropout": 0.0, "attentionDropout": 0.0},
            "output": {"uri": str(folder / "out"), **output},
        },
        by_name=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(config.model_dump_json(exclude_none=True))
    return path


def launcher(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LAUNCH, "--config", str(config), "--output", str(config.parent / "out")],
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_with_its_trainers(pid: int) -> None:
    """SIGKILL to the launcher and every trainer (torch's agent starts each in a session of
    its own): a node that dies, nothing saved on the way out."""
    launcher = psutil.Process(pid)
    for process in [launcher, *launcher.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def finish(run: subprocess.Popen[str]) -> str:
    try:
        output, _ = run.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        kill_with_its_trainers(run.pid)
        raise
    assert run.returncode == 0, output
    return output


def report(folder: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((folder / "out/report.json").read_text())
    return loaded


def train_losses(folder: Path) -> list[tuple[int, float]]:
    return [(int(step), float(loss)) for step, loss in report(folder)["curves"]["trainLoss"]]


def grad_norms(folder: Path) -> list[float]:
    lines = (folder / "out/metrics.jsonl").read_text().splitlines()
    return [event["gradNorm"] for event in map(json.loads, lines) if event["event"] == "step"]


def assert_same_curve(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [step for step, _ in got] == [step for step, _ in expected]
    assert [loss for _, loss in got] == pytest.approx(
        [loss for _, loss in expected], rel=LOSS_TOLERANCE
    )


@pytest.fixture(scope="module")
def sharded(
    tmp_path_factory: pytest.TempPathFactory, gpt: Path, small_data: tuple[Path, Path]
) -> Path:
    """A sharded run that nothing stopped."""
    folder = tmp_path_factory.mktemp("sharded")
    finish(launcher(write_config(folder, gpt, small_data, "fsdp")))
    return folder


def test_a_sharded_run_follows_the_plain_curve_and_saves_the_whole_model(
    tmp_path: Path, gpt: Path, small_data: tuple[Path, Path], sharded: Path
) -> None:
    from transformers import AutoModelForCausalLM

    finish(launcher(write_config(tmp_path / "plain", gpt, small_data, "none")))
    assert len(train_losses(sharded)) == MAX_STEPS
    assert_same_curve(train_losses(sharded), train_losses(tmp_path / "plain"))
    # Clipping takes the norm of the whole gradient, not of one process's shard.
    assert grad_norms(sharded) == pytest.approx(grad_norms(tmp_path / "plain"), rel=1e-4)
    assert report(sharded)["succeeded"]
    assert list((sharded / "out/checkpoints").glob("*/pytorch_model_fsdp_0/__1_0.distcp"))

    config = json.loads((sharded / "out/model/config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    gathered = AutoModelForCausalLM.from_pretrained(sharded / "out/model")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain/out/model")
    untrained = AutoModelForCausalLM.from_pretrained(gpt)
    tokens = torch.arange(2, 30).reshape(2, 14)
    with torch.no_grad():
        logits = gathered(input_ids=tokens).logits
        assert torch.allclose(logits, plain(input_ids=tokens).logits, atol=1e-4)
        assert not torch.allclose(logits, untrained(input_ids=tokens).logits, atol=1e-2)


def test_a_killed_sharded_run_resumes_from_its_sharded_checkpoint(
    tmp_path: Path, gpt: Path, small_data: tuple[Path, Path], sharded: Path
) -> None:
    # The other strategy: the same arithmetic, so the same curve as the full sharding's.
    config = write_config(
        tmp_path, gpt, small_data, "fsdp", "gradients-and-optimizer", checkpointEverySteps=2
    )
    # Every process blocks before its third batch, once step 2's checkpoint is saved.
    run = launcher(config, {HANG_ENV: "dataloader"})
    deadline = time.monotonic() + 180
    try:
        while not (tmp_path / "out" / MARKER).exists() and run.poll() is None:
            assert time.monotonic() < deadline, "the run never reached its hang"
            time.sleep(0.5)
    finally:
        kill_with_its_trainers(run.pid)
        run.communicate(timeout=60)
    assert (tmp_path / "out/checkpoints/step-00000002").is_dir()
    assert not (tmp_path / "out/report.json").exists()  # killed: it said nothing

    output = finish(launcher(config))
    assert f"Resuming from {tmp_path / 'out/checkpoints/step-00000002'}" in output
    assert_same_curve(train_losses(tmp_path), train_losses(sharded))
    assert report(tmp_path)["succeeded"]


def test_a_sharded_lora_run_saves_the_adapter_of_the_plain_run(
    tmp_path: Path, gpt: Path, small_data: tuple[Path, Path]
) -> None:
    from safetensors.torch import load_file

    adapters = {}
    for sharding in ("fsdp", "none"):
        config = write_config(tmp_path / sharding, gpt, small_data, sharding)
        settings = json.loads(config.read_text())
        settings["training"]["lora"] = {"rank": 4, "alpha": 8, "dropout": 0.0}
        settings["training"]["learningRate"] = 1e-2
        config.write_text(json.dumps(settings))
        finish(launcher(config))
        adapters[sharding] = load_file(tmp_path / sharding / "out/model/adapter_model.safetensors")
    assert_same_curve(train_losses(tmp_path / "fsdp"), train_losses(tmp_path / "none"))
    # The gathered adapter is the adapter: the same tensors, trained away from B = 0.
    assert adapters["fsdp"].keys() == adapters["none"].keys()
    for name, tensor in adapters["fsdp"].items():
        assert torch.allclose(tensor, adapters["none"][name], atol=1e-5), name
    trained = [t for name, t in adapters["fsdp"].items() if "lora_B" in name]
    assert trained
    assert all(t.abs().max() > 1e-3 for t in trained)
