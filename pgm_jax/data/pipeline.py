"""grain pipelines shared by every text dataset: an endless shuffled train stream per process and
exact, padded evaluation batches.

The examples are shuffled globally with the seed, with a new permutation every epoch. With P
processes, fixed-length rows are read as global batches: every process walks the same stream
of global batches of example indices and reads only its own rows [p * B / P, (p + 1) * B / P),
so the processes' local batches concatenate to the single-process batch, and their iterator
states are identical (a checkpoint resumes on any process count). Examples that are packed or
wrapped into rows are split by element instead: process p reads elements p, p + P, p + 2P, ...
of the shuffled stream and arranges its own share; the streams are disjoint and together cover
the data, and each process's iterator state is its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Protocol

import grain
import numpy as np

from pgm_jax.data.examples import BlockExamples, Example, Examples

Batch = dict[str, np.ndarray]


class Arrangement(Protocol):
    """Turns a stream of variable-length {"tokens"} examples into rows of length L."""

    def __call__(self, stream: grain.IterDataset, seed: int) -> grain.IterDataset: ...


class Packing:
    """First-fit packing of [BOS] doc [EOS] sequences into rows of `length` tokens.

    Rows get {"tokens", "valid", "segment_ids"}: segment ids number the sequences of a row from
    1 (0 on padding, where `valid` is 0); the models attend only within a segment.
    """

    def __init__(self, length: int, pad_id: int, bins: int = 64):
        self.length, self.pad_id, self.bins = length, pad_id, bins

    def __call__(self, stream: grain.IterDataset, seed: int) -> grain.IterDataset:
        packed = grain.experimental.FirstFitPackIterDataset(
            stream, length_struct={"tokens": self.length}, num_packing_bins=self.bins,
            seed=seed, padding_struct={"tokens": self.pad_id})
        return packed.map(_packed_row)


def _packed_row(packed: Example) -> Example:
    segment_ids = packed["tokens_segment_ids"].astype(np.int32)
    return {"tokens": packed["tokens"].astype(np.int32),
            "valid": (segment_ids > 0).astype(np.int32), "segment_ids": segment_ids}


class Wrapping:
    """The reference's wrap layout on a stream: doc [EOS] sequences concatenated, cut into
    chunks of L - 2 tokens, each chunk framed as [BOS] chunk [EOS] (spec §4.2)."""

    def __init__(self, length: int, bos_id: int, eos_id: int):
        self.length, self.bos_id, self.eos_id = length, bos_id, eos_id

    def __call__(self, stream: grain.IterDataset, seed: int) -> grain.IterDataset:
        del seed
        chunks = grain.experimental.ConcatThenSplitIterDataset(
            stream, length_struct={"tokens": self.length - 2})
        return chunks.map(_FrameChunk(self.bos_id, self.eos_id))


class _FrameChunk:
    def __init__(self, bos_id: int, eos_id: int):
        self.bos_id, self.eos_id = bos_id, eos_id

    def __call__(self, chunk: Example) -> Example:
        tokens = np.concatenate([[self.bos_id], chunk["tokens"], [self.eos_id]]).astype(np.int32)
        return {"tokens": tokens, "valid": np.ones_like(tokens)}


class _LocalRows:
    """int[global_batch] example indices -> this process's rows [start, stop), stacked."""

    def __init__(self, examples: Examples, start: int, stop: int):
        self.examples, self.start, self.stop = examples, start, stop

    def __call__(self, indices: np.ndarray) -> Batch:
        rows = [self.examples[int(i)] for i in indices[self.start:self.stop]]
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def auto_worker_count(cpus: int | None = None) -> int:
    """grain worker processes for `data.worker_count=-1`: none on small hosts (measured: on
    2 cores extra processes are slower than reading in the trainer), else half the cores, at
    most 16 (the rest feed the accelerator runtime)."""
    cpus = cpus or os.cpu_count() or 1
    return 0 if cpus <= 4 else min(16, cpus // 2)


def train_iterator(
    examples: Examples | np.ndarray,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    arrange: Arrangement | None = None,
) -> Iterator[Batch]:
    """An endless iterator over this process's share of shuffled training batches.

    The iterator's `get_state()` is a JSON-serialisable dict, and `set_state(state)` on a fresh
    iterator built with the same arguments resumes with the identical next batches (fixed-length
    rows: with any process or worker count; packed / wrapped: with the same ones).

    Args:
      examples: fixed-length rows (or variable-length sequences with `arrange`); an int[N, L]
        array stands for wrapped blocks.
      global_batch_size: B, the batch summed over processes; divisible by process_count.
      seed: shuffle (and packing) seed.
      process_index, process_count: this JAX process and the number of processes.
      worker_count: grain worker processes; -1 = `auto_worker_count()`, 0 = in this process.
      arrange: packing / wrapping of variable-length examples into rows.

    Yields:
      {"tokens": int32[B / P, L], "valid": int32[B / P, L]} (+ "segment_ids" when packed).
    """
    if isinstance(examples, np.ndarray):
        if examples.ndim != 2 or len(examples) == 0:
            raise ValueError(f"need int[N >= 1, L] train blocks, got shape {examples.shape}")
        examples = BlockExamples(examples)
    local = local_batch_size(global_batch_size, process_index, process_count)
    workers = auto_worker_count() if worker_count < 0 else worker_count
    if arrange is None:
        batches = (
            grain.MapDataset.range(len(examples))
            .shuffle(seed=seed)
            .repeat()
            .batch(global_batch_size, drop_remainder=True)
            .map(_LocalRows(examples, process_index * local, (process_index + 1) * local))
        )
        return GlobalBatchIterator(batches, workers)
    stream = (
        grain.MapDataset.source(examples)
        .shuffle(seed=seed)
        .repeat()[process_index::process_count]
        .to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=4 * local))
    )
    return iter(_prefetched(arrange(stream, seed).batch(local, drop_remainder=True), workers))


def _prefetched(stream: grain.IterDataset, workers: int) -> grain.IterDataset:
    """`stream` read ahead by `workers` grain processes (none: as is)."""
    if workers > 0:
        return stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return stream


class GlobalBatchIterator:
    """This process's rows of global batches 0, 1, 2, ... of a random-access batch stream.

    Its state is just the next global batch number, the same on every process and for any
    worker count, so a checkpoint resumes on another process count or `data.worker_count`
    (grain's own iterator state records the workers' positions). Restoring starts reading at
    that batch directly; nothing is replayed.
    """

    def __init__(self, batches: grain.MapDataset, workers: int):
        self._batches, self._workers = batches, workers
        self._next = 0
        self._it: Iterator[Batch] | None = None  # started on first use (workers spawn then)

    def __iter__(self) -> GlobalBatchIterator:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            # Threads read the next batches while the trainer works on this one.
            stream = self._batches[self._next:].to_iter_dataset(
                grain.ReadOptions(num_threads=4, prefetch_buffer_size=8))
            self._it = iter(_prefetched(stream, self._workers))
        batch = next(self._it)
        self._next += 1
        return batch

    def get_state(self) -> dict:
        return {"next_batch": self._next}

    def set_state(self, state: dict) -> None:
        self._next, self._it = int(state["next_batch"]), None


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    """Number of batches `eval_batches` yields for `num_examples` examples (last one padded)."""
    return math.ceil(num_examples / batch_size)


class _EvalRows:
    """int[B_local] row indices -> a local eval batch; indices past the data are padding rows
    (every field zero). Every field of the examples is stacked (text: tokens, valid; images:
    tokens, label), plus `weight` float32 [B_local]: 1 on real rows, 0 on padding."""

    def __init__(self, examples: Examples):
        self.examples = examples
        first = examples[0]
        self.blank = {k: np.zeros_like(v) for k, v in first.items()}

    def __call__(self, indices: np.ndarray) -> Batch:
        n = len(self.examples)
        rows = [self.examples[int(i)] if i < n else self.blank for i in indices]
        batch = {k: np.stack([r[k] for r in rows]) for k in self.blank}
        batch["weight"] = (indices < n).astype(np.float32)
        return batch


def eval_batches(
    examples: Examples | np.ndarray, batch_size: int, process_index: int = 0,
    process_count: int = 1
) -> Iterator[Batch]:
    """Visits every example exactly once, in order, in global batches of `batch_size`.

    The data is padded with zero rows up to num_eval_batches(M, batch_size) * batch_size rows;
    padding rows have every field 0 (text: `valid` all 0) and `weight` 0, so they count for
    nothing. Every process yields the same number of batches.

    Args:
      examples: M fixed-length rows (text {"tokens", "valid"}, images {"tokens", "label"});
        an int[M, L] array stands for wrapped blocks.
      batch_size: B, the global batch size; divisible by process_count.

    Yields:
      the examples' fields stacked ({"tokens": int32[B_local, L], "valid": int32[B_local, L]}
      for text) and "weight": float32[B_local], B_local = B / process_count: rows
      [p * B_local, (p + 1) * B_local) of each global batch.
    """
    if isinstance(examples, np.ndarray):
        examples = BlockExamples(examples)
    local = local_batch_size(batch_size, process_index, process_count)
    num_rows = num_eval_batches(len(examples), batch_size) * batch_size
    batches = (
        grain.MapDataset.range(num_rows)
        .batch(local)[process_index::process_count]
        .map(_EvalRows(examples))
        .to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=4))
    )
    yield from batches


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    """global_batch_size / process_count, after checking the arguments."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"batch size {global_batch_size} must be a positive multiple of the "
            f"{process_count} processes")
    return global_batch_size // process_count
