"""A soak of kubetune's operator: many jobs, API faults, and an operator killed mid-way.

The integration tests show each behaviour once; this shows they hold together under the
conditions a cluster has on a bad day: a share of requests answered 500 or 429, slow
answers, watches cut or expired, and the operator SIGKILLed (no cleanup, no graceful
exit) and started again at seeded moments. The same jobs run once without faults; the
faulty run must end in the same state: the same children, phases, conditions and trials,
no job lost, no child made twice, and no status that claims what the children do not show.

The mix reuses the integration tests' manifests: the sentiment example as a plain job, as
a 2-point grid search (parallelism 2), and on a ClusterFineTuneRuntime whose operator
queue lets the namespace hold GPUS_IN_QUEUE GPUs at once. The emulator runs no
controllers, so `play_cluster` plays them the cheap way that scales to hundreds of jobs
on two cores: a trial's trainer writes its metrics to the trial's FineTuneJobReport, and
every unsuspended worker Job is marked Complete through its status. Its requests are the
tests' own, which the faults spare.
"""

from __future__ import annotations

import collections
import copy
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kubetune_operator.api.manifests import load_documents
from tests.kube.client import TEST_USER_AGENT, KubeClient
from tests.kube.emulator import REPO, EmulatorServer
from tests.kube.faults import Faults
from tests.kube.operators import OperatorProcess

MANIFEST: Final = REPO / "examples" / "sentiment" / "job.yaml"
RUNTIME: Final = "soak-queue"
GPUS_IN_QUEUE: Final = 4
OPERATOR_ENVIRONMENT: Final = {
    "KUBETUNE_TICK_SECONDS": "2",
    "KUBETUNE_OPERATOR_METRICS_PORT": "0",
}
"""The operator's clock (which redoes what a lost write left) ticks every 2 s rather than
30; metrics on a free port, so a restarted operator never finds its port still taken."""
POLL_S: Final = 0.5
RESTART_PAUSE_S: Final = 1.0
TERMINAL: Final = frozenset({"Succeeded", "Failed"})
SEARCH_VALUES: Final = (1, 2)

DEFAULT_FAULTS: Final = Faults(
    share=0.1,
    codes=(500, 429),
    retry_after=1,
    delay=(0.0, 0.05),
    cut_share=0.3,
    cut_after=(1.0, 5.0),
    gone_share=0.2,
    seed=18,
)


def soak_jobs(count: int) -> list[dict[str, Any]]:
    """`count` jobs: every fifth a search, every fifth (offset 2) on the queued runtime."""
    example = load_documents(MANIFEST)[0]
    jobs = []
    for index in range(count):
        job = copy.deepcopy(example)
        job["metadata"]["name"] = f"soak-{index:04d}"
        job["spec"]["resources"] = {"workers": 1, "gpusPerWorker": 0}
        if index % 5 == 0:
            parameter = {"path": "training.epochs", "type": "int", "values": list(SEARCH_VALUES)}
            job["spec"]["search"] = {"algorithm": "grid", "parallelism": 2}
            job["spec"]["search"]["parameters"] = [parameter]
        elif index % 5 == 2:
            job["spec"]["runtimeRef"] = {"name": RUNTIME}
            job["spec"]["resources"]["gpusPerWorker"] = 1
        jobs.append(job)
    return jobs


def queue_runtime() -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "ClusterFineTuneRuntime",
        "metadata": {"name": RUNTIME},
        "spec": {"queue": {"maxConcurrentGpusPerNamespace": GPUS_IN_QUEUE}},
    }


# --- playing the cluster ------------------------------------------------------------------


def accuracy_of(trial: Mapping[str, Any]) -> float:
    """The trial's objective: more epochs, better (deterministic)."""
    return 0.5 + 0.1 * int(trial["spec"]["training"]["epochs"])


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
    for body in objects:
        found[body["kind"]][body["metadata"]["name"]] = body
    return found


def _complete(job: Mapping[str, Any]) -> bool:
    conditions = job.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions)


def play_cluster(server: EmulatorServer, kube: KubeClient) -> None:
    """One round of the Job controller and the trainers: each runnable worker Job ends
    Complete, after its trial's trainer (if it is a trial's) reported the objective."""
    objects = _by_kind(server.objects())
    for name, job in objects["Job"].items():
        if job["spec"].get("suspend") or _complete(job):
            continue
        owner = job["metadata"]["labels"].get("kubetune.dev/job-name", "")
        ftj = objects["FineTuneJob"].get(owner)
        report = objects["FineTuneJobReport"].get(owner)
        if ftj is None:
            continue
        if "-trial-" in owner and report is not None and not report.get("report"):
            metrics = {"metrics": {"accuracy": accuracy_of(ftj)}, "progress": {"step": 20}}
            kube.patch("FineTuneJobReport", owner, {"report": metrics})
        status = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
        kube.patch("Job", name, {"status": status}, subresource="status")


# --- the end state --------------------------------------------------------------------------


def outcome(server: EmulatorServer) -> dict[str, Any]:
    """What a run ended in, per FineTuneJob: phase, conditions (type, status, reason),
    restarts, trials, best trial, and its children (kind, name)."""
    objects = server.objects()
    names = {o["metadata"]["uid"]: o["metadata"]["name"] for o in objects}
    children: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    for body in objects:
        for owner in body["metadata"].get("ownerReferences") or []:
            if body["kind"] != "Event":
                children[names.get(owner["uid"], "?")].add((body["kind"], body["metadata"]["name"]))
    result = {}
    for ftj in (o for o in objects if o["kind"] == "FineTuneJob"):
        status = ftj.get("status", {})
        name = ftj["metadata"]["name"]
        result[name] = {
            "phase": status.get("phase"),
            "conditions": sorted(
                (c["type"], c["status"], c.get("reason")) for c in status.get("conditions", [])
            ),
            "restarts": status.get("restarts"),
            "trials": [(t["name"], t["state"]) for t in status.get("trials", [])],
            "best": (status.get("bestTrial") or {}).get("name"),
            "children": sorted(children[name]),
        }
    return result


def false_claims(server: EmulatorServer) -> list[str]:
    """Statuses that claim what the children do not show: a Succeeded job whose worker
    Job is not Complete, a trial recorded Complete that is not Succeeded."""
    objects = _by_kind(server.objects())
    claims = []
    for name, ftj in objects["FineTuneJob"].items():
        status = ftj.get("status", {})
        workers = objects["Job"].get(f"{name}-workers")
        succeeded = not ftj["spec"].get("search") and status.get("phase") == "Succeeded"
        if succeeded and (workers is None or not _complete(workers)):
            claims.append(f"{name} is Succeeded but its worker Job is not Complete")
        for trial in status.get("trials", []):
            child = objects["FineTuneJob"].get(trial["name"], {})
            if trial["state"] == "Complete" and child.get("status", {}).get("phase") != "Succeeded":
                claims.append(f"{name} records {trial['name']} Complete; it is not Succeeded")
    return claims


def unfinished(server: EmulatorServer, names: set[str]) -> set[str]:
    """The jobs (of `names`, and every trial) not yet in a terminal phase."""
    left = set()
    for ftj in server.objects("FineTuneJob"):
        name = ftj["metadata"]["name"]
        top = name in names
        if (top or "-trial-" in name) and ftj.get("status", {}).get("phase") not in TERMINAL:
            left.add(name)
    return left | (names - {f["metadata"]["name"] for f in server.objects("FineTuneJob")})


# --- one run --------------------------------------------------------------------------------


@dataclass
class SoakRun:
    """One run of the jobs against a fresh emulator: what it measured and ended in."""

    jobs: int
    seconds: float = 0.0
    restarts: int = 0
    requests: int = 0
    injected: collections.Counter[str] = field(default_factory=collections.Counter)
    outcome: dict[str, Any] = field(default_factory=dict)
    false_claims: list[str] = field(default_factory=list)
    left: set[str] = field(default_factory=set)
    logs: list[Path] = field(default_factory=list)

    @property
    def requests_per_job(self) -> float:
        return self.requests / self.jobs


@dataclass
class Soak:
    """How to run: the jobs, the faults (None: none), operator kills, the time limit."""

    jobs: int
    folder: Path
    faults: Faults | None = None
    kills: int = 0
    kill_window_s: tuple[float, float] = (3.0, 30.0)
    seed: int = 18
    timeout_s: float = 600.0

    def kill_times(self) -> list[float]:
        """Seconds after the first create at which the operator is SIGKILLed (seeded)."""
        chance = random.Random(self.seed)
        return sorted(chance.uniform(*self.kill_window_s) for _ in range(self.kills))

    def run(self) -> SoakRun:
        result = SoakRun(self.jobs)
        saved = dict(os.environ)
        os.environ.update(OPERATOR_ENVIRONMENT)
        try:
            with EmulatorServer(self.folder / "kubeconfig") as server:
                self._serve(server, result)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return result

    def _serve(self, server: EmulatorServer, result: SoakRun) -> None:
        kube = KubeClient(server.kubeconfig_path)
        try:
            self._run(server, kube, result)
        finally:
            kube.close()

    def _run(self, server: EmulatorServer, kube: KubeClient, result: SoakRun) -> None:
        operators = self._operators(server, result)
        operator = next(operators).start()
        plan = server.inject(self.faults) if self.faults else None
        kube.create(queue_runtime())
        jobs = soak_jobs(self.jobs)
        started = time.monotonic()
        for job in jobs:
            kube.create(job)
        names = {job["metadata"]["name"] for job in jobs}
        kills = self.kill_times()
        deadline = started + self.timeout_s
        try:
            while (left := unfinished(server, names)) and time.monotonic() < deadline:
                if kills and time.monotonic() - started >= kills[0]:
                    kills.pop(0)
                    operator = self._restart(operator, next(operators))
                    result.restarts += 1
                play_cluster(server, kube)
                time.sleep(POLL_S)
            result.seconds = time.monotonic() - started
            result.left = left
        finally:
            operator.stop()
        if plan is not None:
            result.injected = server.call(lambda _: collections.Counter(plan.injected))
        result.requests = sum(server.request_counts(exclude_agent=TEST_USER_AGENT).values())
        result.outcome = outcome(server)
        result.false_claims = false_claims(server)

    def _operators(self, server: EmulatorServer, result: SoakRun) -> Iterator[OperatorProcess]:
        for number in range(self.kills + 1):
            log = self.folder / f"kopf-{'faulty' if self.faults else 'clean'}-{number}.log"
            result.logs.append(log)
            yield OperatorProcess(
                ["kubetune_operator.controller.handlers"], server.kubeconfig_path, log
            )

    @staticmethod
    def _restart(operator: OperatorProcess, fresh: OperatorProcess) -> OperatorProcess:
        """SIGKILL the operator (no graceful exit) and start another."""
        assert operator.process is not None
        operator.process.kill()
        operator.process.wait()
        time.sleep(RESTART_PAUSE_S)
        return fresh.start()


def differences(clean: SoakRun, faulty: SoakRun) -> list[str]:
    """Where the faulty run ended otherwise than the clean one."""
    found = []
    for name in sorted(clean.outcome.keys() | faulty.outcome.keys()):
        a, b = clean.outcome.get(name), faulty.outcome.get(name)
        if a != b:
            found.append(f"{name}: fault-free {a} != faulty {b}")
    return found
