"""The on-disk format of a prepared dataset, written by `pgm_jax.data.prepare`.

  DIR/manifest.json            format, layout, length, token dtype, tokenizer ids, split sizes
  DIR/tokenizer/               the tokenizer's own files (see `tokenizers`)
  DIR/<split>-00000-of-00042.array_record   one record per row: the raw bytes of a token array

Layouts: `wrap`, every record a block of exactly `length` tokens ([BOS] ... [EOS], spec §4.2);
`pad`, every record one document's tokens without BOS/EOS, at most `length - 2` of them, padded
(or packed) when read. Splits are `train` and `validation`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from pgm_jax.data.errors import DataError
from pgm_jax.data.tokenizers import TextTokenizer, load_saved

FORMAT = "pgm_jax.prepared.v1"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "validation")
LAYOUTS = ("wrap", "pad")


def token_dtype(vocab_size: int) -> str:
    """Records hold uint16 ids when the vocabulary fits (GPT-2, BERT), else int32."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def write_records(path: str, rows: Iterable[np.ndarray], dtype: str) -> int:
    """Writes `rows` (int arrays) as one ArrayRecord file, atomically; returns the row count."""
    tmp = path + ".tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")  # one record per chunk: cheap random reads
    count = 0
    for row in rows:
        writer.write(np.asarray(row, dtype).tobytes())
        count += 1
    writer.close()
    os.replace(tmp, path)
    return count


def write_json(path: str, value: dict) -> None:
    """Writes JSON atomically (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


class Records:
    """Random access to the records of one split: `records[i]` -> int32[n]."""

    def __init__(self, paths: list[str], dtype: str):
        self.dtype = np.dtype(dtype)
        self._source = grain.sources.ArrayRecordDataSource(paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.frombuffer(self._source[index], self.dtype).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An opened prepared dataset."""

    path: str
    manifest: dict
    tokenizer: TextTokenizer
    splits: dict[str, Records]

    @property
    def layout(self) -> str:
        return self.manifest["layout"]

    @property
    def length(self) -> int:
        return self.manifest["length"]


def read_manifest(path: str, prepare_hint: str) -> dict:
    """DIR/manifest.json; a missing one is a DataError that names the command to run."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise DataError(
            f"data.path={path!r} holds no prepared dataset ({MANIFEST} missing): run "
            f"`{prepare_hint}` first")
    with open(manifest_path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT!r}: "
                        f"prepare the data again with `{prepare_hint}`")
    return manifest


def open_prepared(path: str, prepare_hint: str) -> Prepared:
    """Opens the prepared dataset in `path` (manifest, tokenizer, ArrayRecord splits)."""
    manifest = read_manifest(path, prepare_hint)
    tokenizer = load_saved(os.path.join(path, TOKENIZER_DIR), manifest["tokenizer"])
    splits = {}
    for split in SPLITS:
        files = [os.path.join(path, name) for name in manifest["splits"][split]["files"]]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise DataError(f"{missing[0]} is missing ({len(missing)} {split} shards in all): "
                            f"copy the whole folder or run `{prepare_hint}` again")
        splits[split] = Records(files, manifest["dtype"])
    return Prepared(path, manifest, tokenizer, splits)
