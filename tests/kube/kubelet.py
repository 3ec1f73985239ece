"""A test kubelet and batch Job controller, so e2e tests run real pods against the emulator.

The emulator runs no controllers: a Job creates no pods and a pod never runs. `TestKubelet`
plays both parts from a background thread that polls the API through `KubeClient`, and
writes what it does back through the API the way a cluster would, so the operator under
test sees the same objects and status fields it sees on a cluster.

The Job controller (Indexed Jobs only, as kubetune creates them): `parallelism` pods named
`<job>-<index>-<random>` with the completion-index label and annotation, the controller-uid
label, a controller ownerReference to the Job, hostname `<job>-<index>` and the template's
subdomain; Job status (active, succeeded, failed, startTime, completedIndexes, conditions
Complete, Failed with BackoffLimitExceeded, Suspended). A failed Job's other pods are
deleted; `suspend: true` deletes the pods. When a Job is gone, its pods are killed and
deleted: the emulator has no garbage collector, so this stands in for the cascade a real
cluster does through ownerReferences.

The kubelet runs each pod's single container as a local process tree (`python` is this
interpreter; a kill takes the whole tree) with a per-pod directory that mirrors the
container's filesystem: every volume mount is a symlink at its mountPath under that
directory (ConfigMap volumes hold the ConfigMap's files, emptyDirs are fresh directories,
a claim is `<root>/pvc/<claim>` shared by every pod and restart, the projected service
account volume holds `token` and `namespace`). Env values (`value`, and `fieldRef` for
metadata fields) are resolved and `$(VAR)` references in values and args are expanded as
Kubernetes does; then every env value and arg that is a mounted path, under one, or a
directory above one (e.g. the claims' root), or the terminationMessagePath, is moved under
the pod's directory. Pods share the host's loopback, so the in-cluster names of the pods
it runs (`<hostname>.<subdomain>.<namespace>.svc`) become 127.0.0.1, and each declared
containerPort gets one host port (env values naming a containerPort are rewritten; tests
read the mapping with `host_port`). KUBETUNE_API_URL points the trainer at the emulator.
The termination message file is reported as `state.terminated.message` (the log tail on
failure when the file is empty and the policy is FallbackToLogsOnError), and phases go
Pending -> Running -> Succeeded/Failed through the pods' status subresource.

With `stand_in=True` the kubelet runs, instead of each container's own command, a small
Python process that waits until `release(...)` names its pod and then exits 0: operator
tests that need pods to appear, run and succeed on cue, but no training, use it.

What it does not emulate: scheduling (every pod runs at once, node selectors, tolerations
and priority are ignored), images (the container runs this checkout's Python and sources,
whatever `image` says), resource requests and limits (no CPU shares, no memory limit, so
no OOMKilled), the security context (processes run as the test's user, read-only root file
systems are not read-only), network isolation and real DNS (one loopback for all pods, so
two groups of the same job cannot run at once), container restarts (restartPolicy is taken
as Never), Job deadlines and pod failure policies, secret and ConfigMap env references
(such pods stay waiting with CreateContainerConfigError), and graceful termination (pods
are SIGKILLed, never sent SIGTERM).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psutil  # type: ignore[import-untyped]

from tests.kube.client import KubeApiError, KubeClient

INDEX_KEY: Final = "batch.kubernetes.io/job-completion-index"
CONTROLLER_UID: Final = "batch.kubernetes.io/controller-uid"
POLL_INTERVAL_S: Final = 0.2
LOG_TAIL_CHARS: Final = 4000
MAX_TERMINATION_MESSAGE: Final = 4096
LOOPBACK: Final = "127.0.0.1"
IMAGE_ENV: Final = (
    "PATH",
    "PYTHONPATH",
    "LANG",
    "LC_ALL",
    "HF_HUB_OFFLINE",
    "VIRTUAL_ENV",
    "KUBETUNE_TEST_HANG",
)
"""What the 'image' contributes to a container's environment: taken from the test's own
(KUBETUNE_TEST_HANG: the trainer's test hook that makes a worker group hang once)."""
STAND_IN: Final = (
    "import pathlib, sys, time\n"
    "release = pathlib.Path(sys.argv[1])\n"
    "while not release.exists():\n"
    "    time.sleep(0.05)\n"
)
"""What a stand-in container runs: it waits for its release file, then exits 0."""
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_KEY = re.compile(r"^metadata\.(annotations|labels)\['(.+)'\]$")

logger = logging.getLogger(__name__)


class ContainerConfigError(Exception):
    """The container cannot be set up (a kubelet reports CreateContainerConfigError)."""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, undefined ones stay
    as written, and `$$` is a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API fieldRef of the pod: its name, namespace, an annotation or a label."""
    metadata = pod["metadata"]
    if path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(metadata[path.removeprefix("metadata.")])
    if path == "status.podIP":
        return LOOPBACK
    keyed = _FIELD_KEY.match(path)
    if keyed is None:
        raise ContainerConfigError(f"the test kubelet does not resolve fieldRef {path!r}")
    return str(metadata.get(keyed.group(1), {}).get(keyed.group(2), ""))


def resolve_env(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """The container's `env`, in order: values (expanded) and fieldRefs."""
    if container.get("envFrom"):
        raise ContainerConfigError("the test kubelet does not resolve envFrom")
    resolved: dict[str, str] = {}
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            field_ref = variable["valueFrom"].get("fieldRef")
            if field_ref is None:
                raise ContainerConfigError(
                    f"the test kubelet resolves only fieldRef (env {variable['name']})"
                )
            resolved[variable["name"]] = field_value(pod, field_ref["fieldPath"])
        else:
            resolved[variable["name"]] = expand_references(variable.get("value", ""), resolved)
    return resolved


def dns_names(pod: Mapping[str, Any]) -> list[str]:
    """The in-cluster names of a pod with a hostname and a subdomain (headless Service)."""
    spec, namespace = pod.get("spec", {}), pod["metadata"].get("namespace", "default")
    if not spec.get("hostname") or not spec.get("subdomain"):
        return []
    name = f"{spec['hostname']}.{spec['subdomain']}.{namespace}.svc"
    return [name, f"{name}.cluster.local"]


def exit_code(returncode: int) -> int:
    """A container's exit code: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Container:
    """A running pod's process and where its files are."""

    pod: str
    namespace: str
    index: str | None
    process: subprocess.Popen[bytes]
    root: Path
    log_path: Path
    termination_path: Path
    fallback_to_logs: bool
    started_at: str


class PodFilesystem:
    """A pod's directory: each mount as a symlink at its mountPath, and path rewriting."""

    def __init__(self, root: Path, mount_paths: Sequence[str], termination_path: str) -> None:
        self.root = root
        self.mount_paths = [path.rstrip("/") or "/" for path in mount_paths]
        self.termination_path = termination_path

    def local(self, path: str) -> Path:
        """Where a container path lies on this machine."""
        return self.root / path.lstrip("/")

    def mount(self, mount_path: str, source: Path) -> None:
        link = self.local(mount_path)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source, target_is_directory=True)

    def rewrite(self, value: str) -> str:
        """A container path that reaches a mount (or the termination file), made local."""
        if not value.startswith("/") or value == "/":
            return value
        for mount_path in [*self.mount_paths, self.termination_path]:
            under = value == mount_path or value.startswith(mount_path + "/")
            above = mount_path.startswith(value.rstrip("/") + "/")
            if under or above:
                return str(self.local(value))
        return value


class TestKubelet:
    """The Job controller and the kubelet of one test cluster, in a background thread."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        kube: KubeClient,
        api_url: str,
        root: Path,
        *,
        ports: Mapping[int, int] | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        stand_in: bool = False,
    ) -> None:
        self.kube = kube
        self.stand_in = stand_in
        self.api_url = api_url
        self.root = root
        self.poll_interval_s = poll_interval_s
        self._ports = dict(ports or {})
        self._containers: dict[str, Container] = {}
        self._finished: dict[str, Container] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    # Public: what tests use.

    def start(self) -> TestKubelet:
        self._thread = threading.Thread(target=self._run, name="test-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and kill every container."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for container in self._containers.values():
                self._kill_process(container)

    def __enter__(self) -> TestKubelet:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def pvc_dir(self, claim: str) -> Path:
        """The directory that stands for a claim, shared by every pod and restart."""
        path = self.root / "pvc" / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def host_port(self, container_port: int) -> int:
        """The loopback port that stands for a containerPort (the same for every pod)."""
        with self._lock:
            return self._host_port(container_port)

    def kill(self, pod: str | int) -> str:
        """SIGKILL a running container, named by pod name or completion index; its pod name."""
        with self._lock:
            for container in self._containers.values():
                if str(pod) in (container.pod, container.index):
                    self._kill_process(container)
                    return container.pod
            running = sorted(self._containers)
        raise KeyError(f"no running pod {pod!r}; running: {running}")

    def release(self, prefix: str) -> list[str]:
        """Let the stand-in containers of the running pods whose names start with `prefix`
        exit 0; their pod names."""
        with self._lock:
            names = sorted(name for name in self._containers if name.startswith(prefix))
        for name in names:
            self._release_path(name).touch()
        return names

    def running_pods(self) -> list[str]:
        """The pods whose containers run now, by name."""
        with self._lock:
            return sorted(self._containers)

    def _release_path(self, pod: str) -> Path:
        return self.root / "pods" / pod / "release"

    def pod_logs(self) -> dict[str, str]:
        """Each pod's output so far (its tail), by pod name, in start order."""
        with self._lock:
            containers = [*self._finished.values(), *self._containers.values()]
        return {c.pod: _tail(c.log_path) for c in sorted(containers, key=lambda c: c.started_at)}

    def log_path(self, pod: str) -> Path:
        return self.root / "pods" / pod / "log"

    def describe(self) -> str:
        """The pods' logs, for failure messages."""
        shown = [f"--- pod {pod} ---\n{log}" for pod, log in self.pod_logs().items()]
        failure = f"kubelet failed: {self.failure!r}\n" if self.failure else ""
        return failure + ("\n".join(shown) or "(no pods ran)")

    # The loop.

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as error:  # shown in describe(); the loop keeps going
                logger.exception("test kubelet pass failed")
                self.failure = error
            self._stop.wait(self.poll_interval_s)

    def _sync(self) -> None:
        jobs = {job["metadata"]["uid"]: job for job in self.kube.list_objects("Job")}
        pods = self.kube.list_objects("Pod")
        for job in jobs.values():
            self._control_job(job, [p for p in pods if _owner_uid(p) == job["metadata"]["uid"]])
        pods = self.kube.list_objects("Pod")
        for pod in pods:
            owner = _owner_uid(pod)
            if owner is not None and owner not in jobs:
                self._delete_pod(pod)  # the stand-in for garbage collection
            else:
                self._run_pod(pod, pods)
        self._forget_deleted({pod["metadata"]["name"] for pod in pods})

    # Job controller.

    def _control_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        status = job.get("status", {})
        if _job_finished(status) or job["metadata"].get("deletionTimestamp"):
            return
        if job["spec"].get("suspend"):
            for pod in pods:
                self._delete_pod(pod)
            self._write_job_status(job, _suspended_status(status))
            return
        failed = [pod for pod in pods if _phase(pod) == "Failed"]
        if len(failed) > int(job["spec"].get("backoffLimit", 6)):
            for pod in pods:
                if _phase(pod) not in ("Failed", "Succeeded"):
                    self._delete_pod(pod)
            self._write_job_status(job, _failed_status(job, pods))
            return
        pods = self._create_missing_pods(job, pods)
        self._write_job_status(job, _progress_status(job, pods))

    def _create_missing_pods(
        self, job: dict[str, Any], pods: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        covered = {_index(pod) for pod in pods if _phase(pod) != "Failed"}
        for index in range(int(job["spec"].get("parallelism", 1))):
            if str(index) not in covered:
                pods.append(self.kube.create(_pod_for(job, index), job["metadata"]["namespace"]))
        return pods

    def _write_job_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        current = job.get("status", {})
        if all(current.get(key) == value for key, value in status.items()):
            return
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        with contextlib.suppress(KubeApiError):  # deleted meanwhile: nothing to report
            self.kube.patch("Job", name, {"status": status}, namespace, subresource="status")

    # Kubelet.

    def _run_pod(self, pod: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            container = self._containers.get(name)
        if container is None:
            if _phase(pod) in ("", "Pending") and not pod["metadata"].get("deletionTimestamp"):
                self._start_pod(pod, pods)
            return
        returncode = container.process.poll()
        if returncode is not None:
            self._report_terminated(container, returncode)

    def _start_pod(self, pod: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        (spec,) = pod["spec"]["containers"]
        try:
            container = self._launch(pod, spec, pods)
        except ContainerConfigError as error:
            waiting = {"reason": "CreateContainerConfigError", "message": str(error)}
            self._patch_pod(name, namespace, "Pending", {"waiting": waiting}, spec)
            return
        with self._lock:
            self._containers[name] = container
        running = {"running": {"startedAt": container.started_at}}
        self._patch_pod(name, namespace, "Running", running, spec, started=container.started_at)

    def _launch(
        self, pod: dict[str, Any], spec: dict[str, Any], pods: list[dict[str, Any]]
    ) -> Container:
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        pod_dir = self.root / "pods" / name
        shutil.rmtree(pod_dir, ignore_errors=True)
        termination = spec.get("terminationMessagePath", "/dev/termination-log")
        mounts = spec.get("volumeMounts", [])
        files = PodFilesystem(pod_dir / "root", [m["mountPath"] for m in mounts], termination)
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        for mount in mounts:
            source = self._volume_dir(pod, volumes[mount["name"]], pod_dir / "volumes")
            files.mount(mount["mountPath"], source)
        termination_path = files.local(termination)
        termination_path.parent.mkdir(parents=True, exist_ok=True)
        termination_path.touch()
        env = self._container_env(pod, spec, files, pods)
        args = [self._localize(expand_references(a, env), files, pods) for a in spec["args"]]
        command = [expand_references(part, env) for part in spec["command"]]
        if command[0] == "python":
            command[0] = sys.executable
        log_path = self.log_path(name)
        argv = [*command, *args]
        if self.stand_in:
            argv = [sys.executable, "-c", STAND_IN, str(self._release_path(name))]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=files.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Container(
            pod=name,
            namespace=namespace,
            index=pod["metadata"].get("annotations", {}).get(INDEX_KEY),
            process=process,
            root=files.root,
            log_path=log_path,
            termination_path=termination_path,
            fallback_to_logs=spec.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            started_at=now_rfc3339(),
        )

    def _container_env(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        files: PodFilesystem,
        pods: list[dict[str, Any]],
    ) -> dict[str, str]:
        image = {key: os.environ[key] for key in IMAGE_ENV if key in os.environ}
        resolved = resolve_env(pod, spec)
        declared = {str(port["containerPort"]) for port in spec.get("ports", [])}
        for key, value in resolved.items():
            if value in declared:
                with self._lock:
                    resolved[key] = str(self._host_port(int(value)))
            else:
                resolved[key] = self._localize(value, files, pods)
        return {**image, **resolved, "KUBETUNE_API_URL": self.api_url}

    def _localize(self, value: str, files: PodFilesystem, pods: list[dict[str, Any]]) -> str:
        """A container path made local; an in-cluster pod name made the loopback address."""
        if value in {name for pod in pods for name in dns_names(pod)}:
            return LOOPBACK
        return files.rewrite(value)

    def _host_port(self, container_port: int) -> int:
        if container_port not in self._ports:
            self._ports[container_port] = free_port()
        return self._ports[container_port]

    def _volume_dir(self, pod: dict[str, Any], volume: dict[str, Any], under: Path) -> Path:
        if "persistentVolumeClaim" in volume:
            return self.pvc_dir(str(volume["persistentVolumeClaim"]["claimName"]))
        path = under / str(volume["name"])
        path.mkdir(parents=True)
        if "configMap" in volume:
            self._write_config_map(pod, volume["configMap"], path)
        elif "projected" in volume:
            self._write_projected(pod, volume["projected"], path)
        elif "emptyDir" not in volume:
            raise ContainerConfigError(f"the test kubelet cannot mount volume {volume['name']}")
        return path

    def _write_config_map(self, pod: dict[str, Any], source: dict[str, Any], path: Path) -> None:
        namespace = pod["metadata"]["namespace"]
        found = self.kube.get("ConfigMap", source["name"], namespace)
        if found is None:
            raise ContainerConfigError(f'configmap "{source["name"]}" not found')
        data: dict[str, str] = found.get("data", {})
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            (path / item["path"]).write_text(data[item["key"]], encoding="utf-8")

    def _write_projected(self, pod: dict[str, Any], projected: dict[str, Any], path: Path) -> None:
        for source in projected.get("sources", []):
            if "serviceAccountToken" in source:
                token = f"test-kubelet-token-{pod['metadata']['name']}"
                (path / source["serviceAccountToken"]["path"]).write_text(token)
            for item in source.get("downwardAPI", {}).get("items", []):
                (path / item["path"]).write_text(field_value(pod, item["fieldRef"]["fieldPath"]))
            if "configMap" in source and self.kube.get(
                "ConfigMap", source["configMap"]["name"], pod["metadata"]["namespace"]
            ):
                self._write_config_map(pod, source["configMap"], path)

    def _report_terminated(self, container: Container, returncode: int) -> None:
        code = exit_code(returncode)
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": container.started_at,
            "finishedAt": now_rfc3339(),
        }
        message = _termination_message(container, failed=code != 0)
        if message:
            terminated["message"] = message
        with self._lock:
            self._finished[container.pod] = self._containers.pop(container.pod)
        phase = "Succeeded" if code == 0 else "Failed"
        spec = {"name": "trainer", "image": ""}
        with contextlib.suppress(KubeApiError):
            self._patch_pod(
                container.pod, container.namespace, phase, {"terminated": terminated}, spec
            )

    def _patch_pod(
        self,
        name: str,
        namespace: str,
        phase: str,
        state: dict[str, Any],
        spec: dict[str, Any],
        *,
        started: str | None = None,
    ) -> None:
        status: dict[str, Any] = {
            "phase": phase,
            "podIP": LOOPBACK,
            "hostIP": LOOPBACK,
            "containerStatuses": [
                {
                    "name": spec["name"],
                    "image": spec.get("image", ""),
                    "state": state,
                    "ready": "running" in state,
                    "restartCount": 0,
                }
            ],
        }
        if started is not None:
            status["startTime"] = started
        self.kube.patch("Pod", name, {"status": status}, namespace, subresource="status")

    def _delete_pod(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            container = self._containers.pop(name, None)
        if container is not None:
            self._kill_process(container)
            self._finished[name] = container
        with contextlib.suppress(KubeApiError):  # gone already
            self.kube.delete("Pod", name, pod["metadata"]["namespace"])

    def _forget_deleted(self, existing: set[str]) -> None:
        """Kill the containers of pods that someone else deleted."""
        with self._lock:
            gone = [name for name in self._containers if name not in existing]
            for name in gone:
                self._kill_process(self._containers[name])
                self._finished[name] = self._containers.pop(name)

    @staticmethod
    def _kill_process(container: Container) -> None:
        """SIGKILL the container's whole process tree: torchrun starts the trainer in a
        session of its own, so killing the launcher's process group alone would leave the
        trainer running (and holding its ports) as an orphan."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(container.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(container.process.pid, signal.SIGKILL)
        container.process.wait()


# Pure helpers of the Job controller.


def _pod_for(job: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The pod of one completion index, as the Indexed Job controller makes it."""
    name, uid = job["metadata"]["name"], job["metadata"]["uid"]
    template = copy.deepcopy(job["spec"]["template"])
    metadata = template.get("metadata", {})
    metadata["name"] = f"{name}-{index}-{secrets.token_hex(3)}"
    metadata.setdefault("labels", {}).update({INDEX_KEY: str(index), CONTROLLER_UID: uid})
    metadata.setdefault("annotations", {})[INDEX_KEY] = str(index)
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid}
    metadata["ownerReferences"] = [{**owner, "controller": True, "blockOwnerDeletion": True}]
    spec = template["spec"]
    spec["hostname"] = f"{name}-{index}"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _owner_uid(pod: Mapping[str, Any]) -> str | None:
    uid: str | None = pod["metadata"].get("labels", {}).get(CONTROLLER_UID)
    return uid


def _index(pod: Mapping[str, Any]) -> str | None:
    index: str | None = pod["metadata"].get("annotations", {}).get(INDEX_KEY)
    return index


def _phase(pod: Mapping[str, Any]) -> str:
    return str(pod.get("status", {}).get("phase", ""))


def _job_finished(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions", [])
    )


def _condition(kind: str, reason: str, message: str, status: str = "True") -> dict[str, Any]:
    moment = now_rfc3339()
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": moment,
        "lastTransitionTime": moment,
    }


def _counts(pods: list[dict[str, Any]]) -> dict[str, int]:
    phases = [_phase(pod) for pod in pods]
    return {
        "active": sum(phase not in ("Succeeded", "Failed") for phase in phases),
        "succeeded": phases.count("Succeeded"),
        "failed": phases.count("Failed"),
    }


def _progress_status(job: Mapping[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    status: dict[str, Any] = {
        **_counts(pods),
        "startTime": job.get("status", {}).get("startTime") or now_rfc3339(),
    }
    done = sorted({int(i) for pod in pods if _phase(pod) == "Succeeded" if (i := _index(pod))})
    if done:
        status["completedIndexes"] = ",".join(map(str, done))
    if len(done) >= int(job["spec"].get("completions", 1)):
        status["completionTime"] = now_rfc3339()
        message = "Reached expected number of succeeded pods"
        status["conditions"] = [_condition("Complete", "CompletionsReached", message)]
    elif _suspended(job.get("status", {})):
        status["conditions"] = [_condition("Suspended", "JobResumed", "Job resumed", "False")]
    return status


def _failed_status(job: Mapping[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    counts = _counts(pods)
    message = "Job has reached the specified backoff limit"
    return {
        **counts,
        "active": 0,
        "startTime": job.get("status", {}).get("startTime") or now_rfc3339(),
        "conditions": [_condition("Failed", "BackoffLimitExceeded", message)],
    }


def _suspended(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Suspended" and c.get("status") == "True"
        for c in status.get("conditions", [])
    )


def _suspended_status(status: Mapping[str, Any]) -> dict[str, Any]:
    if _suspended(status):
        return {"active": 0}
    return {"active": 0, "conditions": [_condition("Suspended", "JobSuspended", "Job suspended")]}


def _termination_message(container: Container, *, failed: bool) -> str:
    with contextlib.suppress(OSError):
        message = container.termination_path.read_text(errors="replace").strip()
        if message:
            return message[:MAX_TERMINATION_MESSAGE]
    if failed and container.fallback_to_logs:
        return _tail(container.log_path, 2048)
    return ""


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no output)"
