r"""Operator scale: 500 FineTuneJobs created at once, kubetune's operator against a bare one.

    python bench/operator_scale.py [--jobs 500]

Each side gets a fresh Kubernetes emulator (tests/kube/emulator.py, in this process) and a
`kopf run -A --standalone` subprocess pinned to CPU 0 (tests/kube/operators.py, with kopf's
default settings: nothing the test harness shortens). The bench itself (the emulator, the
client that creates the jobs, the poller) is pinned to CPU 1, so the operator has one core
to itself. Once the operator's FineTuneJob watch is open (kopf says it is ready earlier),
the clock starts and --jobs copies of examples/sentiment/job.yaml, named sentiment-00000,
sentiment-00001, ..., are created from 8 client threads as fast as the emulator takes them.

  (k) kubetune: `kubetune_operator.controller.handlers`; a job is done when its six children
      (ConfigMap, ServiceAccount, Role, RoleBinding, Service, batch Job) exist, owned by
      it, and its status.phase is set
  (b) baseline: the harness operator tests/integration/harness_operator.py, the least a
      kopf operator does for such a job in the same shape: one owned child (a ConfigMap),
      a status write through the handler's patch, one Event; a job is done when its
      ConfigMap exists and its status.phase is set. It is the one operator the harness
      tests prove, so the baseline is not a bench-only program; its deletion handler makes
      kopf add a finalizer (one more patch per job), so it is, if anything, a little heavy.

A poller reads the emulator's objects every POLL_S seconds, so times carry that much
resolution. Per side it prints: the seconds from the first create to the last job done,
jobs/s, p50/p99 of each job's time from its create's answer to done, the API requests the
operator made per job (all requests not from the bench's client, counted once the
operator has been quiet for QUIET_S seconds, so its trailing writes count too) broken down
by `verb resource`, and the operator's peak RSS (VmHWM). Then the ratios kubetune/baseline
and the issue's targets, each with PASS or MISS: all 500 within 60 s, at most 12 requests
per job, peak RSS under 300 MiB. It never fails on a missed target; it exits non-zero only
when a side does not finish within --timeout seconds.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import copy
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "trainer")]

from kubetune_operator.api.manifests import load_documents  # noqa: E402
from tests.kube.client import TEST_USER_AGENT, KubeClient  # noqa: E402
from tests.kube.emulator import EmulatorServer, KubetuneEmulator  # noqa: E402
from tests.kube.operators import OperatorProcess  # noqa: E402

MANIFEST: Final = REPO / "examples" / "sentiment" / "job.yaml"
OPERATOR_CPU: Final = 0
BENCH_CPU: Final = 1
CREATE_THREADS: Final = 8
POLL_S: Final = 0.05
QUIET_S: Final = 2.0
SETTLE_LIMIT_S: Final = 30.0
READY_TIMEOUT_S: Final = 60.0

TARGET_SECONDS: Final = 60.0
TARGET_JOBS: Final = 500
TARGET_REQUESTS_PER_JOB: Final = 12.0
TARGET_PEAK_RSS_MIB: Final = 300.0


@dataclass(frozen=True)
class Side:
    """One operator under test and what counts as a job being done for it."""

    key: str
    label: str
    module: str
    children: frozenset[str]


SIDES: Final = (
    Side(
        "b",
        "baseline (harness operator)",
        "tests.integration.harness_operator",
        frozenset({"ConfigMap"}),
    ),
    Side(
        "k",
        "kubetune",
        "kubetune_operator.controller.handlers",
        frozenset({"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Service", "Job"}),
    ),
)


@dataclass(frozen=True)
class Result:
    """What one side measured."""

    jobs: int
    seconds: float
    latencies: list[float]
    requests: collections.Counter[str]
    peak_rss_mib: float

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds

    @property
    def requests_per_job(self) -> float:
        return sum(self.requests.values()) / self.jobs

    def latency(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


# --- one side ----------------------------------------------------------------------------


def job_manifests(count: int) -> list[dict[str, Any]]:
    """`count` copies of the sentiment example with distinct names, read as kubectl reads
    it (YAML 1.2: `1e-4` is a number)."""
    example = load_documents(MANIFEST)[0]
    manifests = []
    for index in range(count):
        manifest = copy.deepcopy(example)
        manifest["metadata"]["name"] = f"sentiment-{index:05d}"
        manifests.append(manifest)
    return manifests


def done_jobs(emulator: KubetuneEmulator, children: frozenset[str]) -> set[str]:
    """Names of the FineTuneJobs that have all `children` (owned by them) and a phase.

    Runs on the emulator's loop (`EmulatorServer.call`), so it reads a consistent store.
    """
    owned: dict[str, set[str]] = collections.defaultdict(set)
    phased: set[str] = set()
    for _, stored in emulator.objects.items():
        if stored.deleted:
            continue
        body = stored.raw
        kind = body.get("kind")
        if kind == "FineTuneJob":
            if body.get("status", {}).get("phase"):
                phased.add(body["metadata"]["name"])
        elif kind in children:
            for owner in body["metadata"].get("ownerReferences", ()):
                if owner.get("kind") == "FineTuneJob":
                    owned[owner["name"]].add(kind)
    return {name for name in phased if owned[name] >= children}


def create_all(kubeconfig_path: Path, manifests: list[dict[str, Any]]) -> dict[str, float]:
    """Create the jobs from CREATE_THREADS threads; when each create was answered."""
    clients = threading.local()
    answered: dict[str, float] = {}

    def create(manifest: dict[str, Any]) -> None:
        if not hasattr(clients, "kube"):
            clients.kube = KubeClient(kubeconfig_path)
        clients.kube.create(manifest)
        answered[manifest["metadata"]["name"]] = time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, manifests))
    return answered


def wait_until_watched(server: EmulatorServer, operator: OperatorProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "finetunejobs" not in server.watched():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the operator never watched finetunejobs:\n{operator.log_tail()}")
        time.sleep(POLL_S)


def wait_until_done(
    server: EmulatorServer, side: Side, names: set[str], timeout_s: float
) -> dict[str, float]:
    """Poll the store; when each job was first seen done."""
    finished: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(finished) < len(names) and time.monotonic() < deadline:
        seen = server.call(lambda emulator: done_jobs(emulator, side.children))
        stamp = time.monotonic()
        for name in seen - finished.keys():
            finished[name] = stamp
        time.sleep(POLL_S)
    return finished


def operator_requests(server: EmulatorServer, since: int) -> collections.Counter[str]:
    """The operator's requests since `since`, once it has made none for QUIET_S seconds."""
    counts = server.request_counts(since, exclude_agent=TEST_USER_AGENT)
    deadline = time.monotonic() + SETTLE_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(QUIET_S)
        later = server.request_counts(since, exclude_agent=TEST_USER_AGENT)
        if later == counts:
            break
        counts = later
    return counts


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def run_side(side: Side, count: int, folder: Path, timeout_s: float) -> Result:
    """Start an emulator and the operator, create `count` jobs, measure until all are done."""
    manifests = job_manifests(count)
    names = {manifest["metadata"]["name"] for manifest in manifests}
    with EmulatorServer(folder / f"kubeconfig-{side.key}") as server:
        log_path = folder / f"kopf-{side.key}.log"
        operator = OperatorProcess(
            [side.module], server.kubeconfig_path, log_path, test_settings=False, cpu=OPERATOR_CPU
        )
        with operator:
            wait_until_watched(server, operator)
            since = len(server.requests())
            started = time.monotonic()
            answered: dict[str, float] = {}
            creating = threading.Thread(
                target=lambda: answered.update(create_all(server.kubeconfig_path, manifests))
            )
            creating.start()
            finished = wait_until_done(server, side, names, timeout_s)
            creating.join()
            if len(finished) < count:
                raise SystemExit(
                    f"{side.label}: {count - len(finished)} of {count} jobs not done after "
                    f"{timeout_s:.0f} s; operator log tail:\n{operator.log_tail()}"
                )
            requests = operator_requests(server, since)
            rss = peak_rss_mib(operator.pid)
    return Result(
        jobs=count,
        seconds=max(finished.values()) - started,
        latencies=[finished[name] - answered[name] for name in names],
        requests=requests,
        peak_rss_mib=rss,
    )


# --- the report --------------------------------------------------------------------------


def report(results: Mapping[str, Result]) -> None:
    count = results["k"].jobs
    print(
        f"operator scale: {count} FineTuneJobs created at once, operator on CPU {OPERATOR_CPU}, "
        f"emulator and client on CPU {BENCH_CPU}, poll {POLL_S * 1000:.0f} ms"
    )
    for side in SIDES:
        result = results[side.key]
        print(
            f"  ({side.key}) {side.label:<28} {result.seconds:7.2f} s  "
            f"{result.jobs_per_second:7.1f} jobs/s  p50 {result.latency(0.5):6.2f} s  "
            f"p99 {result.latency(0.99):6.2f} s  {result.requests_per_job:5.2f} requests/job  "
            f"peak RSS {result.peak_rss_mib:6.1f} MiB"
        )
    for side in SIDES:
        result = results[side.key]
        print(f"  ({side.key}) requests per job by verb and resource:")
        for label, number in sorted(result.requests.items(), key=lambda item: -item[1]):
            print(f"        {number / result.jobs:6.2f}  {label}  ({number})")
    kubetune, baseline = results["k"], results["b"]
    print(f"  k/b seconds          {kubetune.seconds / baseline.seconds:6.2f}")
    print(f"  k/b p50 latency      {kubetune.latency(0.5) / baseline.latency(0.5):6.2f}")
    print(f"  k/b requests per job {kubetune.requests_per_job / baseline.requests_per_job:6.2f}")
    print(f"  k/b peak RSS         {kubetune.peak_rss_mib / baseline.peak_rss_mib:6.2f}")
    report_targets(kubetune)


def report_targets(kubetune: Result) -> None:
    scaled = kubetune.seconds * TARGET_JOBS / kubetune.jobs
    checks = (
        (
            f"{kubetune.jobs} jobs in {kubetune.seconds:.1f} s",
            scaled <= TARGET_SECONDS,
            f"all {TARGET_JOBS} within {TARGET_SECONDS:.0f} s"
            + ("" if kubetune.jobs == TARGET_JOBS else f" (pro rata: {scaled:.1f} s)"),
        ),
        (
            f"{kubetune.requests_per_job:.2f} requests/job",
            kubetune.requests_per_job <= TARGET_REQUESTS_PER_JOB,
            f"at most {TARGET_REQUESTS_PER_JOB:.0f} per job",
        ),
        (
            f"peak RSS {kubetune.peak_rss_mib:.1f} MiB",
            kubetune.peak_rss_mib < TARGET_PEAK_RSS_MIB,
            f"under {TARGET_PEAK_RSS_MIB:.0f} MiB",
        ),
    )
    for measured, passed, target in checks:
        print(f"  {'PASS' if passed else 'MISS'}  {measured}  (target: {target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=TARGET_JOBS)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per side")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) > 1:
        # Before the emulator's thread starts, so it inherits the CPU.
        os.sched_setaffinity(0, {BENCH_CPU})
    os.environ["KUBETUNE_OPERATOR_METRICS_PORT"] = "0"
    with tempfile.TemporaryDirectory() as folder:
        results = {
            side.key: run_side(side, args.jobs, Path(folder), args.timeout) for side in SIDES
        }
    report(results)


if __name__ == "__main__":
    main()
