"""How many CPU threads each trainer process computes with.

torch starts one intra-op thread per core it sees. In a container it sees the node's cores,
not the CPU quota the pod was given, and each of several trainer processes on one machine
starts that many: the threads then outnumber the cores, wait on each other, and a busy
machine ran the README example 4-5 times slower than with one thread per process
(docs/performance.md). The trainer therefore counts the CPUs it may really use (its CPU
affinity, capped by the cgroup's CPU quota) and divides them among its processes on this
machine, unless the manifest (training.cpuThreads) or OMP_NUM_THREADS says otherwise.
Threads that wait for each other spin only briefly before they sleep, so a machine shared
with other programs does not slow them down tenfold.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

OPENMP_SPIN_COUNT = "10000"
"""GOMP_SPINCOUNT: how long a waiting OpenMP thread spins before it sleeps. GNU OpenMP's
default (300,000) makes threads that share their cores with other programs spin through
each other's time slices: on a busy 2-core machine the README example ran at 10 samples/s
with it and 23 with this, while an idle machine keeps its full speed (docs/performance.md)."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """Threads per process, and the line that says where the number comes from."""

    threads: int
    reason: str

    def line(self) -> str:
        plural = "s" if self.threads != 1 else ""
        return f"cpu threads: {self.threads} thread{plural} per process ({self.reason})"


def choose_threads(
    configured: int | None,
    env: Mapping[str, str],
    *,
    affinity: int,
    quota: float | None,
) -> ThreadChoice:
    """training.cpuThreads, else OMP_NUM_THREADS (the operator sets it from the pod's CPU
    request), else the usable CPUs shared by the processes on this machine, at least 1."""
    if configured is not None:
        return ThreadChoice(configured, "training.cpuThreads")
    from_env = env.get("OMP_NUM_THREADS", "")
    if from_env.isdigit() and int(from_env) > 0:
        return ThreadChoice(int(from_env), "OMP_NUM_THREADS")
    processes = local_processes(env)
    usable = affinity if quota is None else max(1, min(affinity, math.floor(quota)))
    limit = "no CPU quota" if quota is None else f"a CPU quota of {quota:g}"
    share = max(1, usable // processes)
    sharing = "1 process" if processes == 1 else f"{processes} processes share them"
    return ThreadChoice(share, f"{usable} usable CPUs: affinity {affinity}, {limit}; {sharing}")


def local_processes(env: Mapping[str, str]) -> int:
    """The trainer processes on this machine (torchrun's LOCAL_WORLD_SIZE; else 1)."""
    value = env.get("LOCAL_WORLD_SIZE", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def affinity_cpus() -> int:
    """The CPUs the scheduler lets this process run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_quota(root: Path = CGROUP_ROOT, membership: Path = PROC_CGROUP) -> float | None:
    """CPUs the cgroup quota allows this process (cgroup v2 cpu.max or v1 cfs_quota_us),
    the smallest along its cgroup's path; None when no quota limits it."""
    try:
        lines = membership.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            quotas += [_v2_quota(d) for d in _up_to(root, path.lstrip("/"))]
        elif "cpu" in controllers.split(","):
            mount = root / controllers
            mount = mount if mount.is_dir() else root / "cpu"
            quotas += [_v1_quota(d) for d in _up_to(mount, path.lstrip("/"))]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _up_to(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory under `mount` and each parent up to the mount."""
    directory = mount / path
    return [directory, *(p for p in directory.parents if p.is_relative_to(mount))]


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text(encoding="ascii").split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period = int((directory / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


def quiet_openmp_waits(env: MutableMapping[str, str] = os.environ) -> None:
    """Have OpenMP threads sleep soon when they wait, unless GOMP_SPINCOUNT or
    OMP_WAIT_POLICY says otherwise. Takes effect only before torch is imported."""
    if "GOMP_SPINCOUNT" not in env and "OMP_WAIT_POLICY" not in env:
        env["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT


def threads_for(configured: int | None, env: Mapping[str, str]) -> ThreadChoice:
    """The choice for this process on this machine."""
    return choose_threads(configured, env, affinity=affinity_cpus(), quota=cpu_quota())
