"""Local text corpora: find the files of a folder, count their documents, read document ranges.

A document is a whole `.txt` file (UTF-8), one non-blank line of a `.jsonl` file (its text
field), or one row of a `.parquet` / `.arrow` file (its text column; `.arrow` is the Hugging
Face datasets cache format, Arrow IPC stream or file). Files are visited in sorted path order,
so a corpus always yields the same documents in the same order.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pgm_jax.data.errors import DataError

SUFFIXES = (".txt", ".jsonl", ".parquet", ".arrow")


@dataclasses.dataclass(frozen=True)
class CorpusFile:
    """One file of a corpus: its document count and, for .jsonl, each document's byte offset."""

    path: str
    documents: int
    offsets: np.ndarray | None = None  # int64[documents], .jsonl only


def find_files(directory: str) -> list[str]:
    """The corpus files under `directory` (recursive, sorted; hidden entries and Hugging Face
    `cache-*.arrow` map caches skipped)."""
    if not os.path.isdir(directory):
        raise DataError(f"--input={directory!r} is not a directory")
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, n) for n in names
                     if n.endswith(SUFFIXES) and not n.startswith((".", "cache-")))
    if not found:
        raise DataError(
            f"--input={directory!r} holds no {', '.join(SUFFIXES)} files")
    return sorted(found)


def scan(path: str, text_field: str = "text") -> CorpusFile:
    """Counts the documents of one file (reads .jsonl line starts, Arrow/Parquet metadata)."""
    if path.endswith(".jsonl"):
        offsets, position = [], 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(position)
                position += len(line)
        return CorpusFile(path, len(offsets), np.asarray(offsets, np.int64))
    if path.endswith(".parquet"):
        file = _parquet(path)
        _require_column(path, file.schema_arrow.names, text_field)
        return CorpusFile(path, file.metadata.num_rows)
    if path.endswith(".arrow"):
        return CorpusFile(path, _arrow_table(path, text_field).num_rows)
    return CorpusFile(path, 1)


def read_documents(path: str, start: int = 0, stop: int | None = None, text_field: str = "text",
                   byte_offset: int = 0) -> list[str]:
    """Documents [start, stop) of one file (stop None: to the end).

    byte_offset: .jsonl only, where document `start`'s line begins (`CorpusFile.offsets`); the
      file is read from there, so `start` then only numbers the documents in error messages.
    """
    if path.endswith(".jsonl"):
        return list(_jsonl_documents(path, start, stop, text_field, byte_offset))
    if path.endswith(".parquet"):
        return _parquet_documents(path, start, stop, text_field)
    if path.endswith(".arrow"):
        table = _arrow_table(path, text_field)
        stop = table.num_rows if stop is None else stop
        return _strings(path, table.column(text_field).slice(start, stop - start).to_pylist())
    try:
        with open(path, encoding="utf-8") as f:
            return [f.read()][start:stop]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}): convert or remove it") from None


def _jsonl_documents(path: str, start: int, stop: int | None, text_field: str,
                     byte_offset: int) -> Iterator[str]:
    with open(path, "rb") as f:
        f.seek(byte_offset)
        index = start
        for line in f:
            if stop is not None and index >= stop:
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(
                    f"{path}: document {index + 1} is not valid JSON ({e}): fix or remove the "
                    "line") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(
                    f"{path}: document {index + 1} has no string field {text_field!r}: set the "
                    "text field name or fix the line")
            yield text
            index += 1


def _parquet(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read Parquet file {path}: {e}") from None


def _parquet_documents(path: str, start: int, stop: int | None, text_field: str) -> list[str]:
    """Reads only the row groups that overlap [start, stop)."""
    file = _parquet(path)
    stop = file.metadata.num_rows if stop is None else stop
    docs: list[str] = []
    first = 0
    for group in range(file.metadata.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        if first < stop and first + rows > start:
            column = file.read_row_group(group, columns=[text_field]).column(text_field)
            lo, hi = max(start - first, 0), min(stop - first, rows)
            docs.extend(_strings(path, column.slice(lo, hi - lo).to_pylist()))
        first += rows
    return docs


def _arrow_table(path: str, text_field: str) -> pa.Table:
    """The table of an Arrow IPC stream (Hugging Face) or file, memory-mapped (no copy)."""
    try:
        source = pa.memory_map(path, "r")
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read Arrow file {path}: {e}") from None
    _require_column(path, table.schema.names, text_field)
    return table


def _require_column(path: str, names: list[str], text_field: str) -> None:
    if text_field not in names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {', '.join(names)}): "
                        "set the text field name")


def _strings(path: str, values: list) -> list[str]:
    if any(not isinstance(v, str) for v in values):
        raise DataError(f"{path}: the text column holds non-string values")
    return values
