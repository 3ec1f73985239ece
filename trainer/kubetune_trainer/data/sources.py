"""Resolve the source URIs of a TrainingConfig to local paths.

A manifest names every model, dataset and output directory with one URI (see
`config.parse_source`), but the trainer only ever reads local files. This module maps each
scheme to where it lives in a pod or on a laptop: a path, a mounted PersistentVolumeClaim,
a directory shipped in an installed Python package, or a snapshot in the Hugging Face
cache. Every way of not finding a source becomes one `SourceError` that names the manifest
field and says what to do, because it ends up in the job's status, not in a traceback.

Pods often have no internet access, so the hub is never allowed to hang a job: offline
mode is honoured, requests time out quickly, and a cached snapshot is used when the hub
cannot be reached. It imports no torch.

A data source is read to its end (and hashed first, for the data cache), so it must be
regular files of a bounded size: a FIFO would block the reader forever, a device such as
/dev/zero would never end, and a file larger than memory would end the pod instead of
the run. `resolve_data` checks what every path is (through symlinks) and how large the
files are with stat alone, before anything is opened.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi, constants, is_offline_mode, snapshot_download
from huggingface_hub.file_download import repo_folder_name

from kubetune_trainer.config import DataSource, Source, parse_source
from kubetune_trainer.file_kinds import shown, special_kind

PVC_ROOT = "/mnt/kubetune/pvc"
"""Where the operator mounts each claim (as PVC_ROOT/<claim>) in the trainer pods."""
PVC_ROOT_ENV = "KUBETUNE_PVC_ROOT"
"""Environment variable that moves PVC_ROOT, for local runs and tests."""
HUB_TIMEOUT_SECONDS = 10.0
"""How long a request to the Hugging Face hub may wait before the cache is tried instead."""
_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})
_COMMIT = re.compile(r"[0-9a-f]{40}")
GB = 10**9
"""The unit of DataSource.maxGigabytes."""


class SourceError(Exception):
    """A source that cannot be found or fetched; the message names the field and the fix."""


def resolve_local(uri: str, field: str) -> Path:
    """The local path that `uri` (the value of manifest field `field`) names; it exists.

    Plain and file:// paths are taken as they are (relative ones from the working
    directory), pvc:// paths under the claim's mount point, pkg:// paths inside the
    installed package, and hf:// repositories are downloaded to (or found in) the
    Hugging Face cache.
    """
    try:
        source = parse_source(uri)
    except ValueError as error:
        raise SourceError(f"{field}: {uri!r} is not a valid source: {error}") from None
    path = _RESOLVERS[source.scheme](source, field)
    if not path.exists():
        raise SourceError(f"{field}: {path} does not exist{_named_as(uri, path)}")
    return path


def resolve_data(source: DataSource, field: str) -> Path:
    """The local path of a data source (manifest field `field`, e.g. data.train): a regular
    file or a directory of them, at most source.maxGigabytes in all, checked before any of
    it is opened."""
    path = resolve_local(source.source, f"{field}.source")
    size = _regular_files_size(path, f"{field}.source")
    if size > source.max_gigabytes * GB:
        holds = "holds" if path.is_dir() else "is"
        raise SourceError(
            f"{field}.source: {path} {holds} {size / GB:.3g} GB, more than {field}.maxGigabytes "
            f"({source.max_gigabytes:g} GB); raise {field}.maxGigabytes if the trainer's "
            "memory holds the rows, or give a smaller source"
        )
    return path


def _regular_files_size(path: Path, field: str) -> int:
    """The bytes of the regular file at `path`, or of every file under the directory; a
    SourceError naming anything else (FIFO, device, socket) found there."""
    entries = sorted(e for e in path.rglob("*") if not e.is_dir()) if path.is_dir() else [path]
    return sum(_regular_size(entry, field) for entry in entries)


def _regular_size(path: Path, field: str) -> int:
    try:
        info = path.stat()  # follows symlinks, and opens nothing
    except OSError as error:
        raise SourceError(f"{field}: cannot read {shown(path)}: {error.strerror}") from None
    kind = special_kind(info.st_mode)
    if kind is not None:
        raise SourceError(
            f"{field}: {shown(path)} is {kind}, not a regular file; give a data file or a "
            "directory of data files"
        )
    return info.st_size


def pvc_root() -> Path:
    """The directory holding one mount per claim (KUBETUNE_PVC_ROOT, else PVC_ROOT)."""
    return Path(os.environ.get(PVC_ROOT_ENV) or PVC_ROOT)


def _named_as(uri: str, path: Path) -> str:
    return "" if uri == str(path) else f" (from {uri})"


def _file_path(source: Source, field: str) -> Path:
    return Path.cwd() / source.location


def _claim_path(source: Source, field: str) -> Path:
    claim_dir = pvc_root() / source.authority
    if not claim_dir.is_dir():
        raise SourceError(
            f"{field}: claim {source.authority!r} is not mounted at {claim_dir}; in a cluster, "
            f"check that the PersistentVolumeClaim {source.authority!r} exists in the job's "
            f"namespace; for a local run, set {PVC_ROOT_ENV} to a directory that holds "
            f"{source.authority}/"
        )
    return claim_dir / source.location


def _package_path(source: Source, field: str) -> Path:
    directories = _package_directories(source.authority, field)
    candidates = [directory / source.location for directory in directories]
    # A namespace package spans several directories: the path may be in any of them.
    return next((path for path in candidates if path.exists()), candidates[0])


def _package_directories(package: str, field: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        distribution = package.split(".")[0].replace("_", "-")
        raise SourceError(
            f"{field}: Python package {package!r} is not installed; "
            f"pip install {distribution} (in the trainer image for a cluster run), "
            "or point the field at a directory instead"
        )
    if not spec.submodule_search_locations:
        raise SourceError(
            f"{field}: {package!r} is a Python module, not a package directory; "
            "pkg:// needs a package that ships the files"
        )
    return [Path(location) for location in spec.submodule_search_locations]


def _hub_snapshot(source: Source, field: str) -> Path:
    repo_type = "dataset" if source.authority == "datasets" else "model"
    revision = source.revision or None
    reason = "HF_HUB_OFFLINE is set" if _hub_offline() else _hub_unreachable(source, repo_type)
    if reason is not None:
        revision = _cached_commit(source, repo_type, field) or revision
    try:
        snapshot = snapshot_download(
            source.location,
            repo_type=repo_type,
            revision=revision,
            local_files_only=reason is not None,
            etag_timeout=HUB_TIMEOUT_SECONDS,
        )
    except Exception as error:  # the hub raises HTTP, connection, cache and auth errors
        cause = f"{reason} and it is not in the local cache" if reason else _first_line(error)
        raise SourceError(_hub_advice(source, field, cause)) from error
    return Path(snapshot)


def _cached_commit(source: Source, repo_type: str, field: str) -> str | None:
    """The commit that the cache's ref file for the branch or tag names; None when the
    revision is a commit already or the cache has no ref file for it.

    Offline, the hub's own lookup takes a ref file's content as a folder name below the
    repository's snapshots/, so a planted ref such as '../../../../home' would lead it out
    of the cache: the content must be a commit hash.
    """
    revision = source.revision or constants.DEFAULT_REVISION
    folder = Path(constants.HF_HUB_CACHE).expanduser() / repo_folder_name(
        repo_id=source.location, repo_type=repo_type
    )
    ref = folder / "refs" / revision
    if _COMMIT.fullmatch(revision) or not ref.is_file():
        return None
    try:
        commit = ref.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(
            f"{field}: the Hugging Face cache's {ref} cannot be read ({error})"
        ) from None
    if not _COMMIT.fullmatch(commit):
        raise SourceError(
            f"{field}: the Hugging Face cache's {ref} must hold a commit hash (40 hex digits), "
            f"not {commit[:60]!r}; delete it and download the repository again"
        )
    return commit


def _hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, now or when the hub loaded."""
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return is_offline_mode() or any((v or "").upper() in _TRUE_VALUES for v in values)


def _hub_unreachable(source: Source, repo_type: str) -> str | None:
    """Why the hub cannot serve the repository now, or None when it can.

    snapshot_download's own first request has no timeout: probing with a short one first
    keeps a pod without internet access from waiting for the operating system to give up.
    """
    try:
        HfApi().repo_info(
            source.location,
            repo_type=repo_type,
            revision=source.revision or None,
            timeout=HUB_TIMEOUT_SECONDS,
        )
    except Exception as error:  # any failure: fall back to the cache, keep the reason
        return f"the hub did not answer ({_first_line(error)})"
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no details'}"


def _hub_advice(source: Source, field: str, cause: str) -> str:
    options = " --repo-type dataset" if source.authority == "datasets" else ""
    if source.revision:
        options += f" --revision {source.revision}"
    return (
        f"{field}: cannot get hf://{source.authority + '/' if source.authority else ''}"
        f"{source.location} from the Hugging Face hub: {cause}. Download it where the hub "
        f"is reachable, `hf download {source.location}{options} --local-dir DIR`, then set "
        f"{field} to file://DIR, or copy DIR into a PersistentVolumeClaim and use "
        "pvc://CLAIM/PATH"
    )


_RESOLVERS: dict[str, Callable[[Source, str], Path]] = {
    "file": _file_path,
    "pvc": _claim_path,
    "pkg": _package_path,
    "hf": _hub_snapshot,
}
