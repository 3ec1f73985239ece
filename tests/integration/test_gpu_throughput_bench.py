"""bench/gpu_throughput.py's smoke mode runs its three loops end to end on the CPU.

No timing is asserted (a model this small on a shared CPU measures noise): the test checks
that every loop trained the planned steps and that the output has its structure and sane
values. The GPU figures themselves come from the bench on a GPU (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    output = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "bench/gpu_throughput.py"), *options, "--json"]
    path = os.pathsep.join([str(REPO / "trainer"), str(REPO / "operator"), str(REPO)])
    env = {**os.environ, "PYTHONPATH": path}
    finished = subprocess.run(
        [*command, str(output)], capture_output=True, text=True, env=env, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    results: dict[str, Any] = json.loads(output.read_text())
    return results, finished.stdout


@pytest.mark.slow  # three fresh processes that import torch: about 30 s on an idle 2-core machine
def test_the_tiny_cpu_mode_measures_all_three_loops(tmp_path: Path) -> None:
    options = ("--device", "cpu", "--tiny", "--rows", "tiny-bert/32", "--steps", "6")
    results, printed = run_bench(tmp_path, *options, "--warmup", "2")
    assert results["precision"] == "fp32"
    assert results["device"].startswith("CPU")
    (row,) = results["rows"]
    assert (row["row"], row["seqLen"], row["batchSize"]) == ("tiny-bert/32", 32, 8)
    # 2 layers x (4 x 64^2 + 2 x 64 x 256) x 6, attention 12 x 2 x 64 x 32, head once a row.
    assert row["flopsPerToken"] == 6 * 2 * (4 * 64**2 + 2 * 64 * 256) + 12 * 2 * 64 * 32 + (
        6 * (64 * 64 + 64 * 2) / 32
    )
    assert set(row["loops"]) == {"kubetune", "bare", "trainer"}
    for measured in row["loops"].values():
        assert measured["tokens_per_second"] == measured["samples_per_second"] * 32
        assert measured["samples_per_second"] > 0
        assert measured["peak_memory_mib"] > 100  # torch alone takes more
        assert measured["mfu"] is None  # no peak for a CPU
    kubetune = row["loops"]["kubetune"]["tokens_per_second"]
    assert row["kubetuneOverBare"] == kubetune / row["loops"]["bare"]["tokens_per_second"]
    assert "kubetune/trainer" in printed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_every_loop_has_an_mfu_and_gpu_memory(tmp_path: Path) -> None:
    options = ("--rows", "minilm-l6/128", "--steps", "30", "--warmup", "10")
    results, _ = run_bench(tmp_path, *options)
    assert results["precision"] == "bf16"
    (row,) = results["rows"]
    for measured in row["loops"].values():
        assert 0 < measured["mfu"] < 1
        assert measured["peak_memory_mib"] > 47  # its 12.5M fp32 parameters alone are 47.9 MiB
