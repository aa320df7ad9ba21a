"""grain pipelines over in-memory blocks: an endless shuffled train stream, finite eval batches.

Multi-process runs: every process builds the same global batch of block indices and reads only
its own contiguous slice (process p gets rows [p * B_local, (p + 1) * B_local)), so the processes'
local batches, concatenated in process order, are exactly the single-process global batch.
"""

import math
from collections.abc import Iterator

import grain
import numpy as np

Batch = dict[str, np.ndarray]


class _GatherLocalRows:
    """int[global_batch] block indices -> this process's local batch of blocks.

    A top-level class (not a lambda), so grain's spawned workers can pickle it.
    """

    def __init__(self, blocks: np.ndarray, start: int, stop: int):
        self.blocks, self.start, self.stop = blocks, start, stop

    def __call__(self, indices: np.ndarray) -> Batch:
        tokens = self.blocks[indices[self.start:self.stop]]
        return {"tokens": tokens, "valid": np.ones_like(tokens)}


def train_iterator(
    blocks: np.ndarray,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """An endless iterator over this process's share of shuffled global training batches.

    Blocks are shuffled with `seed` and reshuffled every epoch (grain derives a new permutation
    per repetition); batches run across epoch boundaries. The iterator's `get_state()` is a
    JSON-serialisable dict, and `set_state(state)` on a fresh iterator built with the same
    arguments resumes with the identical next batches.

    Args:
      blocks: int32[N, L] wrapped blocks.
      global_batch_size: B, the batch summed over processes; divisible by process_count.
      seed: shuffle seed.
      process_index, process_count: this JAX process and the number of processes.
      worker_count: grain worker processes (0: read in this process, best on small machines).

    Yields:
      {"tokens": int32[B / process_count, L], "valid": int32[B / process_count, L]}; `valid` is
      all ones (wrapped blocks hold no padding).
    """
    blocks = np.asarray(blocks, np.int32)
    if blocks.ndim != 2 or len(blocks) == 0:
        raise ValueError(f"need int[N >= 1, L] train blocks, got shape {blocks.shape}")
    local = _local_batch_size(global_batch_size, process_index, process_count)
    dataset = (
        grain.MapDataset.range(len(blocks))
        .shuffle(seed=seed)
        .repeat()
        .batch(global_batch_size, drop_remainder=True)
        .map(_GatherLocalRows(blocks, process_index * local, (process_index + 1) * local))
        # Gathering rows from memory is cheap: one prefetch thread keeps it off the train loop.
        .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
    )
    if worker_count > 0:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(dataset)


def num_eval_batches(num_blocks: int, batch_size: int) -> int:
    """Number of batches `eval_batches` yields for `num_blocks` blocks (last one padded)."""
    return math.ceil(num_blocks / batch_size)


def eval_batches(
    blocks: np.ndarray, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
    """Visits every block exactly once, in order, in global batches of `batch_size`.

    The blocks are padded with zero rows up to num_eval_batches(M, batch_size) * batch_size;
    padding rows have `valid` all 0 and `weight` 0, so they count for nothing. Every process
    yields the same number of batches.

    Args:
      blocks: int32[M, L] validation blocks.
      batch_size: B, the global batch size; divisible by process_count.

    Yields:
      {"tokens": int32[B_local, L], "valid": int32[B_local, L], "weight": float32[B_local]},
      B_local = B / process_count: rows [p * B_local, (p + 1) * B_local) of each global batch.
    """
    local = _local_batch_size(batch_size, process_index, process_count)
    num_blocks, length = blocks.shape
    num_rows = num_eval_batches(num_blocks, batch_size) * batch_size
    tokens = np.zeros((num_rows, length), np.int32)
    tokens[:num_blocks] = blocks
    weight = (np.arange(num_rows) < num_blocks).astype(np.float32)
    for batch_start in range(0, num_rows, batch_size):
        rows = slice(batch_start + process_index * local, batch_start + (process_index + 1) * local)
        valid = np.broadcast_to(weight[rows, None], (local, length)).astype(np.int32)
        yield {"tokens": tokens[rows], "valid": valid, "weight": weight[rows]}


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    """global_batch_size / process_count, after checking the arguments."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"batch size {global_batch_size} must be a positive multiple of the "
            f"{process_count} processes")
    return global_batch_size // process_count
