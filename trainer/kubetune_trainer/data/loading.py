"""Reading a data source into an Arrow table: one file, or a directory of shards.

Users hand over CSV exported from spreadsheets, JSON lines from services and parquet from
pipelines, and each reader has its own way of failing. This module reads each format the
same way (CSV cells as text, so "007" stays "007"; JSON lines columns of mixed types as
text), checks that the bytes look like the declared format, and turns every reader's
failure into a DataError that names the manifest field, the file, and for a ragged CSV
the row.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from kubetune_trainer.config import DataFormat, DataSource, infer_format
from kubetune_trainer.data.rows import DataError, Rows
from kubetune_trainer.data.sources import SourceError, resolve_data
from kubetune_trainer.formatting import first_line


def load_table(source: DataSource, field: str) -> datasets.Dataset:
    """The rows of `source` (one file, or a directory of shards of one format).

    `field` is the manifest path of the source (e.g. `data.train`) for messages. CSV cells
    are read as text; JSON lines columns that mix types are read as text.
    """
    return datasets.Dataset(InMemoryTable(read_source(source, field).table))


def read_source(source: DataSource, field: str) -> Rows:
    """The rows of `source`, numbered by their position in it, for the pipeline's stages."""
    try:
        path = resolve_data(source, field)
    except SourceError as error:
        raise DataError(str(error)) from error
    data_format, files = _data_files(path, source.resolved_format(), field)
    table = _concat_shards([_read_file(file, data_format, field) for file in files], path, field)
    if table.num_rows == 0:
        raise DataError(f"{field}.source: {path} has no rows")
    positions = np.arange(table.num_rows, dtype=np.int64)
    return Rows(table, str(path), positions, np.full(table.num_rows, source.source, dtype=object))


def _concat_shards(tables: list[pa.Table], path: Path, field: str) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as error:
        raise DataError(
            f"{field}.source: the files in {path} do not share their columns' types ({error})"
        ) from None


def _data_files(
    path: Path, declared: DataFormat | None, field: str
) -> tuple[DataFormat, list[Path]]:
    """The format and the data files at `path`: the file itself, or a directory's shards."""
    if path.is_file():
        data_format = declared or infer_format(path.name)
        if data_format is None:
            raise DataError(f"{field}.format: cannot tell the format of {path}; set it")
        return data_format, [path]
    by_format = _shards_by_format(path)
    if declared is None and len(by_format) > 1:
        found = ", ".join(f"{len(files)} {kind}" for kind, files in sorted(by_format.items()))
        raise DataError(f"{field}.format: {path} holds files of several formats ({found}); set it")
    data_format = declared or next(iter(by_format), None)
    if data_format is None or not by_format.get(data_format):
        kind = declared or "csv, jsonl or parquet"
        raise DataError(f"{field}.source: directory {path} holds no {kind} files")
    return data_format, by_format[data_format]


def _shards_by_format(directory: Path) -> dict[DataFormat, list[Path]]:
    by_format: dict[DataFormat, list[Path]] = {}
    for file in sorted(directory.rglob("*")):
        hidden = any(part.startswith(".") for part in file.relative_to(directory).parts)
        data_format = infer_format(file.name)
        if file.is_file() and not hidden and data_format is not None:
            by_format.setdefault(data_format, []).append(file)
    return by_format


def _read_file(path: Path, data_format: DataFormat, field: str) -> pa.Table:
    try:
        _check_looks_like(path, data_format, field)
        _check_not_wide_unicode(path, field)
        table = _READERS[data_format](path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise DataError(_read_failure(path, data_format, field, error)) from None
    _check_unique_columns(table, path, field)
    return table


def _check_looks_like(path: Path, data_format: DataFormat, field: str) -> None:
    looks_like = _sniff_format(path)
    if looks_like is not None and looks_like != data_format:
        raise DataError(
            f"{field}.source: {path} looks like {looks_like}, not {data_format}; "
            f"set {field}.format to {looks_like} or give a {data_format} file"
        )


WIDE_UNICODE_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
"""Byte-order marks of the encodings spreadsheets save as "Unicode text", longest first."""


def _check_not_wide_unicode(path: Path, field: str) -> None:
    """Text is read as UTF-8: a UTF-16 file would otherwise fail as rows of NUL bytes."""
    with path.open("rb") as handle:
        head = handle.read(4)
    for mark, encoding in WIDE_UNICODE_MARKS:
        if head.startswith(mark):
            raise DataError(
                f"{field}.source: {path} is {encoding} text; kubetune reads UTF-8: save it "
                "as UTF-8 (a spreadsheet's CSV UTF-8)"
            )


def _sniff_format(path: Path) -> DataFormat | None:
    """The format the first bytes of an uncompressed file give away, if they do."""
    with path.open("rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    return None


def _read_csv(path: Path) -> pa.Table:
    parse = pacsv.ParseOptions(newlines_in_values=True)
    names = pacsv.open_csv(path, parse_options=parse).schema.names
    text = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names}, strings_can_be_null=False
    )
    return pacsv.read_csv(path, parse_options=parse, convert_options=text)


def _read_jsonl(path: Path) -> pa.Table:
    try:
        return pajson.read_json(path)
    except pa.ArrowInvalid as error:
        if "changed from" not in str(error):
            raise
        return _read_jsonl_mixed_types(path)


def _read_jsonl_mixed_types(path: Path) -> pa.Table:
    """Arrow needs one type per column; pandas reads mixed ones as objects, made text here:
    lists and objects as JSON (a conversation whose contents are strings in some messages
    and lists of parts in others reads back from it), the rest as str() writes them."""
    frame = pd.read_json(path, lines=True, dtype=False)
    for name in frame.columns:
        if pd.api.types.infer_dtype(frame[name], skipna=True) in ("mixed", "mixed-integer"):
            frame[name] = frame[name].map(_as_json_if_nested).astype("string")
    return pa.Table.from_pandas(frame, preserve_index=False)


def _as_json_if_nested(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else value


def _read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path)


_READERS: dict[DataFormat, Callable[[Path], pa.Table]] = {
    "csv": _read_csv,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
}


def _read_failure(path: Path, data_format: DataFormat, field: str, error: Exception) -> str:
    detail = first_line(error)
    where = f"{field}.source: {path}"
    if detail.startswith(("Empty CSV file", "Empty JSON file")):
        return f"{where} is empty"
    if "Expected" in detail and "columns, got" in detail:
        return f"{where} has a row with the wrong number of cells: {_ragged_row(path, detail)}"
    other_format = f"set {field}.format if the file is in another format"
    return f"{where} is not a readable {data_format} file ({detail}); {other_format}"


def _ragged_row(path: Path, detail: str) -> str:
    """pyarrow numbers the bad row only when it parses on one thread: parse again to ask."""
    found: list[str] = []

    def note(row: Any) -> str:
        found.append(
            f"row {row.number} (counting the header), {row.actual_columns} cells "
            f"where the header has {row.expected_columns}: {row.text[:200]}"
        )
        return "error"

    single = pacsv.ReadOptions(use_threads=False)
    parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=note)
    with contextlib.suppress(pa.ArrowInvalid):
        pacsv.read_csv(path, read_options=single, parse_options=parse)
    return found[0] if found else detail.removeprefix("CSV parse error: ")


def _check_unique_columns(table: pa.Table, path: Path, field: str) -> None:
    names: list[str] = table.column_names
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{field}.source: {path} has the column {repeated[0]!r} more than once")
