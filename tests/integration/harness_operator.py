"""A tiny kopf operator that proves the emulator harness (tests/kube), not kubetune itself.

On a FineTuneJob's creation it does what the real operator's handlers do in miniature:
creates a ConfigMap owned by the job (`kopf.adopt`), writes the job's status through the
handler's `patch.status`, and posts an Event. It also reacts to a report written by another
process, to deletion (through kopf's finalizer), and to labelled pods and Jobs.
"""

from __future__ import annotations

import json
from typing import Any, Final

import kopf
import kubernetes

FINETUNEJOBS: Final = ("kubetune.dev", "v1alpha1", "finetunejobs")
REPORTS: Final = ("kubetune.dev", "v1alpha1", "finetunejobreports")
MANAGED: Final = {"app.kubernetes.io/managed-by": "kubetune"}


def config_map_for(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap holding a job's spec as JSON."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", "labels": dict(MANAGED)},
        "data": {"spec.json": json.dumps(spec, sort_keys=True)},
    }


@kopf.on.create(*FINETUNEJOBS)
def create_config(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    """Create the owned ConfigMap (an existing one counts as done), then say so."""
    config_map = config_map_for(name, dict(spec))
    kopf.adopt(config_map, owner=body)
    try:
        # The client serialises plain dicts as well as its typed models.
        core = kubernetes.client.CoreV1Api()
        core.create_namespaced_config_map(str(namespace), config_map)  # type: ignore[arg-type]
    except kubernetes.client.ApiException as error:
        if error.status != 409:
            raise
    patch.status["phase"] = "Pending"
    kopf.info(body, reason="ConfigCreated", message=f"created ConfigMap {name}-config")


@kopf.on.event(*REPORTS)
def see_progress(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    """Copy the step a trainer reported into its job's status, proving the operator saw
    the report change."""
    step = body.get("report", {}).get("progress", {}).get("step")
    if step is not None:
        kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
            *FINETUNEJOBS[:2], str(namespace), FINETUNEJOBS[2], name, {"status": {"seenStep": step}}
        )


@kopf.on.delete(*FINETUNEJOBS)
def say_goodbye(body: kopf.Body, **_: Any) -> None:
    """A deletion handler, so kopf guards the job with its finalizer."""
    kopf.info(body, reason="Deleting", message="the job is being deleted")


@kopf.on.event("v1", "pods", labels=MANAGED)
def see_pod(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Post an Event on each labelled pod the watch delivers."""
    if type in (None, "ADDED"):
        kopf.info(body, reason="PodSeen", message="a managed pod")


@kopf.on.create("batch", "v1", "jobs", labels=MANAGED)
def see_job(body: kopf.Body, **_: Any) -> None:
    """Post an Event on each labelled Job created."""
    kopf.info(body, reason="JobSeen", message="a managed Job")
