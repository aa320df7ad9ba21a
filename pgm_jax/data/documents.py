"""Raw text documents and the fixed document-level train/validation split."""

import glob
import math
import os
from pydoc_data import topics as pydoc_topics

from pgm_jax.data.corpus import read_documents
from pgm_jax.data.errors import DataError


def load_documents(source: str, files: str = "") -> list[str]:
    """Returns the documents of `source`, in a deterministic order.

    Args:
      source: 'pydoc' (CPython's English documentation, one document per topic, sorted by
        topic name) or 'files' (the local text files named by `files`).
      files: comma-separated paths or globs, used when source == 'files'. A `.jsonl` file holds
        one document per line in its "text" field, a `.parquet` / `.arrow` file one per row of
        its "text" column; any other file is one document.
    """
    if source == "pydoc":
        return [pydoc_topics.topics[name] for name in sorted(pydoc_topics.topics)]
    if source == "files":
        return [doc for path in _expand_paths(files) for doc in _read_file(path)]
    raise DataError(f"data.source={source!r} has no documents in memory: use 'pydoc' or 'files'")


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Splits `docs` into (train, validation): the last ceil(val_fraction * n) (>= 1) documents
    are validation. No randomness, so every run and every process sees the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction={val_fraction} must be in (0, 1)")
    if len(docs) < 2:
        raise DataError(f"need at least 2 documents for a train/validation split, got {len(docs)}")
    n_val = min(max(1, math.ceil(val_fraction * len(docs))), len(docs) - 1)
    return docs[:-n_val], docs[-n_val:]


def _expand_paths(files: str) -> list[str]:
    """Comma-separated paths/globs -> existing file paths (globs sorted, duplicates dropped)."""
    patterns = [p.strip() for p in files.split(",") if p.strip()]
    if not patterns:
        raise DataError("data.source=files needs data.files=PATH[,PATH...] (paths or globs)")
    paths: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"data.files: glob {pattern!r} matches no file")
        elif os.path.isfile(pattern):
            matches = [pattern]
        else:
            raise DataError(f"data.files: {pattern!r} does not exist or is not a file")
        paths.extend(p for p in matches if p not in paths)
    return paths


def _read_file(path: str) -> list[str]:
    """The non-blank documents of one file (see `load_documents`)."""
    docs = [doc for doc in read_documents(path) if doc.strip()]
    if not docs:
        raise DataError(f"data.files: {path!r} holds no text")
    return docs
