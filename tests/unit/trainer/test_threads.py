"""The trainer's CPU threads: the manifest, then OMP_NUM_THREADS, then the CPUs this process
may use (affinity capped by the cgroup quota) shared by its processes on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune_trainer.threads import choose_threads, cpu_quota, quiet_openmp_waits, threads_for


def test_the_manifest_wins_over_everything() -> None:
    choice = choose_threads(3, {"OMP_NUM_THREADS": "8"}, affinity=16, quota=2.0)
    assert choice.threads == 3
    assert choice.line() == "cpu threads: 3 threads per process (training.cpuThreads)"


def test_omp_num_threads_comes_next() -> None:
    choice = choose_threads(None, {"OMP_NUM_THREADS": "4"}, affinity=16, quota=None)
    assert (choice.threads, choice.reason) == (4, "OMP_NUM_THREADS")


@pytest.mark.parametrize("value", ["", "0", "four", "-2"])
def test_a_meaningless_omp_num_threads_is_ignored(value: str) -> None:
    choice = choose_threads(None, {"OMP_NUM_THREADS": value}, affinity=6, quota=None)
    assert choice.threads == 6


def test_the_quota_caps_the_affinity_and_the_processes_share_it() -> None:
    choice = choose_threads(None, {"LOCAL_WORLD_SIZE": "2"}, affinity=64, quota=8.0)
    assert choice.threads == 4
    assert choice.line() == (
        "cpu threads: 4 threads per process "
        "(8 usable CPUs: affinity 64, a CPU quota of 8; 2 processes share them)"
    )


def test_a_fractional_quota_rounds_down_but_never_below_one_thread() -> None:
    assert choose_threads(None, {}, affinity=64, quota=2.5).threads == 2
    assert choose_threads(None, {}, affinity=64, quota=0.5).threads == 1
    assert choose_threads(None, {"LOCAL_WORLD_SIZE": "8"}, affinity=4, quota=None).threads == 1


def test_one_process_without_quota_uses_its_affinity() -> None:
    choice = choose_threads(None, {}, affinity=2, quota=None)
    assert choice.line() == (
        "cpu threads: 2 threads per process (2 usable CPUs: affinity 2, no CPU quota; 1 process)"
    )


def cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return root, proc


def test_cgroup_v2_cpu_max_of_the_process_cgroup(tmp_path: Path) -> None:
    root, proc = cgroup(
        tmp_path, "0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "150000 100000\n"}
    )
    assert cpu_quota(root, proc) == 1.5


def test_cgroup_v2_the_smallest_quota_on_the_path_counts(tmp_path: Path) -> None:
    root, proc = cgroup(
        tmp_path,
        "0::/kubepods/pod1/c1\n",
        {"kubepods/pod1/c1/cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "300000 100000\n"},
    )
    assert cpu_quota(root, proc) == 3.0


def test_cgroup_v2_max_is_no_quota(tmp_path: Path) -> None:
    root, proc = cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cpu_quota(root, proc) is None


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root, proc = cgroup(
        tmp_path,
        "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu_quota(root, proc) == 4.0


def test_cgroup_v1_minus_one_is_no_quota(tmp_path: Path) -> None:
    root, proc = cgroup(
        tmp_path,
        "1:cpu:/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert cpu_quota(root, proc) is None


def test_no_cgroup_file_is_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path, tmp_path / "missing") is None


def test_this_machine() -> None:
    """Without a setting, the real affinity of this process decides (the CI machine has
    no CPU quota below its cores)."""
    choice = threads_for(None, {})
    usable = len(os.sched_getaffinity(0))
    quota = cpu_quota()
    expected = usable if quota is None else max(1, min(usable, int(quota)))
    assert choice.threads == expected


def test_openmp_threads_spin_briefly_unless_told_otherwise() -> None:
    env: dict[str, str] = {}
    quiet_openmp_waits(env)
    assert env == {"GOMP_SPINCOUNT": "10000"}
    for told in ({"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "ACTIVE"}):
        kept = dict(told)
        quiet_openmp_waits(kept)
        assert kept == told


def test_importing_the_trainer_sets_it_before_torch_loads() -> None:
    code = (
        "import sys, os\n"
        "import kubetune_trainer.config\n"
        "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["10000", "False"]
