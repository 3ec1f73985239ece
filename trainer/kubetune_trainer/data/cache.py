"""Prepare the data once: a cache of the data pipeline's output in the run's output folder.

Loading, checking, augmenting and tokenizing a large dataset can take minutes, and a job
does it again on every restart from a checkpoint, and once per worker. The cache keeps
the prepared rows (as Arrow files, memory-mapped when read back) under a key that hashes
everything the result depends on: the bytes of every data file, the data and model
sections of the config, the seed and the tokenizer. A restart, or a worker that starts
after rank 0 has prepared the data on a shared volume, reads the cache instead of doing
the work again; any change to the data or the config makes a new key and a fresh run of
the pipeline. The cache is written to a temporary folder and renamed into place, so a
crash never leaves a half-written cache that a restart would trust.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

from kubetune_trainer.config import DataSource, TrainingConfig
from kubetune_trainer.data import PreparedData
from kubetune_trainer.data.quality import QualityReport, RuleResult
from kubetune_trainer.data.report import DataReport
from kubetune_trainer.data.sources import SourceError, resolve_data
from kubetune_trainer.file_modes import publish

CACHE_FORMAT = 2
"""Bumped when the cached layout changes, so that old caches are not misread."""
_CHUNK = 1 << 20
_SPLITS = ("train", "validation")

Prepare = Callable[[TrainingConfig, PreTrainedTokenizerBase], PreparedData]


def cached_prepare(
    config: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    cache_root: Path,
    prepare: Prepare,
) -> tuple[PreparedData, bool]:
    """The prepared data, from the cache when its key matches; and whether it came from there.

    A source that cannot be resolved or read is left to `prepare`, which raises the user's
    error.
    """
    try:
        key = cache_key(config, tokenizer)
    except (SourceError, OSError):
        return prepare(config, tokenizer), False
    folder = cache_root / f"data-{key}"
    if (folder / "prepared.json").is_file():
        return load_prepared(folder), True
    prepared = prepare(config, tokenizer)
    save_prepared(prepared, folder)
    _remove_other_caches(cache_root, keep=folder)
    return prepared, False


def cache_key(config: TrainingConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything the prepared data depends on."""
    digest = hashlib.sha256()
    inputs = {
        "format": CACHE_FORMAT,
        "kubetune": _version(),
        "data": config.data.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json", exclude={"source"}),
        "seed": config.training.seed,
        "batchSize": config.training.batch_size,
        "objective": config.training.objective,  # dpo prepares preference rows
        "epochs": config.training.epochs,  # the data report's tokens over the run
        "maxSteps": config.training.max_steps,
        "tokenizer": Hasher.hash(tokenizer),
    }
    digest.update(json.dumps(inputs, sort_keys=True).encode())
    for path in _data_files(config):
        digest.update(str(path).encode())
        digest.update(_file_digest(path))
    return digest.hexdigest()[:32]


def _version() -> str:
    try:
        return metadata.version("kubetune")
    except metadata.PackageNotFoundError:
        return "unknown"


def _data_sources(config: TrainingConfig) -> Iterator[tuple[str, DataSource]]:
    data = config.data
    yield "data.train", data.train
    if data.validation is not None:
        yield "data.validation", data.validation
    if data.augmentation is not None:
        if data.augmentation.synonyms is not None:
            yield "data.augmentation.synonyms", data.augmentation.synonyms
        for index, source in enumerate(data.augmentation.synthetic_sources):
            yield f"data.augmentation.syntheticSources[{index}]", source


def _data_files(config: TrainingConfig) -> Iterator[Path]:
    """Every file the data sources name (a directory: every file under it), in order."""
    for field, source in _data_sources(config):
        path = resolve_data(source, field)
        yield from sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _file_digest(path: Path) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


# --- writing and reading -----------------------------------------------------------------


def save_prepared(prepared: PreparedData, folder: Path) -> None:
    """Write the prepared data to `folder` atomically (a temporary folder, then a rename)."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    prepared.train.save_to_disk(str(partial / "train"))
    prepared.validation.save_to_disk(str(partial / "validation"))
    for split in _SPLITS:
        _row_facts(prepared, split).save_to_disk(str(partial / f"{split}-rows"))
    (partial / "prepared.json").write_text(json.dumps(_summary(prepared)), encoding="utf-8")
    publish(partial, folder)


def load_prepared(folder: Path) -> PreparedData:
    """The prepared data that save_prepared wrote (Arrow files memory-mapped)."""
    summary = json.loads((folder / "prepared.json").read_text(encoding="utf-8"))
    facts = {split: datasets.load_from_disk(str(folder / f"{split}-rows")) for split in _SPLITS}
    return PreparedData(
        train=datasets.load_from_disk(str(folder / "train")),
        validation=datasets.load_from_disk(str(folder / "validation")),
        train_texts=facts["train"]["text"][:],
        train_groups=_groups(facts["train"]),
        train_sources=np.asarray(facts["train"]["source"][:], dtype=np.int64),
        validation_texts=facts["validation"]["text"][:],
        validation_groups=_groups(facts["validation"]),
        report=_data_report(summary.pop("report")),
        **summary,
    )


_GROUP = "group:"
"""Prefix of the per-row facts' sensitive-group columns."""


def _row_facts(prepared: PreparedData, split: str) -> datasets.Dataset:
    """Each row's text, sensitive groups and (training) source: PreparedData's per-row lists."""
    groups: dict[str, list[str]] = getattr(prepared, f"{split}_groups")
    columns = {"text": pa.array(getattr(prepared, f"{split}_texts"), pa.large_string())}
    columns |= {_GROUP + name: pa.array(values, pa.string()) for name, values in groups.items()}
    if split == "train":
        columns["source"] = pa.array(prepared.train_sources, pa.int64())
    return datasets.Dataset(datasets.table.InMemoryTable(pa.table(columns)))


def _groups(facts: datasets.Dataset) -> dict[str, list[str]]:
    names = [name for name in facts.column_names if name.startswith(_GROUP)]
    return {name.removeprefix(_GROUP): facts[name][:] for name in names}


_PER_ROW = {"train", "validation", "train_texts", "train_groups", "train_sources"}
_PER_ROW |= {"validation_texts", "validation_groups", "report"}


def _summary(prepared: PreparedData) -> dict[str, Any]:
    """The fields of PreparedData that are not per row, as JSON data."""
    summary = {
        f.name: getattr(prepared, f.name) for f in fields(prepared) if f.name not in _PER_ROW
    }
    return {**summary, "report": prepared.report.to_report() | {"labels": prepared.report.labels}}


def _data_report(saved: dict[str, Any]) -> DataReport:
    quality = saved["quality"]
    return DataReport(
        quality=QualityReport(
            rows_in=quality["rowsIn"],
            rows_out=quality["rowsOut"],
            results=[RuleResult(**result) for result in quality["results"]],
        ),
        labels=saved["labels"],
        classes=saved["classes"],
        groups=saved["groups"],
        lengths=saved["lengths"],
        added=saved["added"],
        removed=saved["removed"],
        recommendation=saved["recommendation"],
        warnings=saved["warnings"],
        conversations=saved.get("conversations"),
        tokens=saved.get("tokens"),
    )


def _remove_other_caches(cache_root: Path, keep: Path) -> None:
    """Only the newest cache is kept: an old key will not match again."""
    for folder in cache_root.glob("data-*"):
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)
