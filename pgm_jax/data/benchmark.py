"""Data-only mode (`--config.data.benchmark=True`): time the input pipeline without a model.

Builds exactly the train iterator a run would use (same source, batch, seed, workers and this
process's share) and times `data.benchmark_batches` batches after one warm-up batch (worker
start-up and first reads excluded).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from pgm_jax.data import load_text_data
from pgm_jax.data.images import load_image_data
from pgm_jax.data.pipeline import auto_worker_count
from pgm_jax.models.registry import IMAGE_ALGOS


def run_benchmark(config: ConfigDict, workdir: str) -> dict:
    """Times this process's train batches; returns examples/s, tokens/s and the setup."""
    if config.algo in IMAGE_ALGOS:
        data = load_image_data(config.data, config.model.length, config.model.codebook_size,
                               config.model.num_classes)
    else:
        data = load_text_data(config.data, config.model.length, workdir)
    workers = config.data.worker_count
    it = data.train_iterator(config.train.batch_size, config.seed, jax.process_index(),
                             jax.process_count(), workers)
    next(it)
    examples = tokens = 0
    start = time.perf_counter()
    for _ in range(config.data.benchmark_batches):
        batch = next(it)
        examples += len(batch["tokens"])
        tokens += int(np.sum(batch["valid"])) if "valid" in batch else batch["tokens"].size
    seconds = time.perf_counter() - start
    result = {
        "source": config.data.source, "batches": config.data.benchmark_batches,
        "local_batch": config.train.batch_size // jax.process_count(),
        "length": config.model.length, "workers": auto_worker_count() if workers < 0 else workers,
        "seconds": round(seconds, 3), "examples_per_s": round(examples / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
    }
    logging.info("data benchmark: %s", result)
    return result
