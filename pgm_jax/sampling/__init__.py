"""Samplers: PGM's efficient samplers, MDLM's ancestral sampler, the AR baseline's sampler."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from pgm_jax import sharding
from pgm_jax.models import ModelConfig
from pgm_jax.sampling import ar, mdlm, pgm

PGM_MODES = pgm.MODES


def generate(graphdef: nnx.GraphDef, params: dict, model_cfg: ModelConfig, key: jax.Array, *,
             num_samples: int, steps: int, bos_id: int, top_p: float = 1.0,
             temperature: float = 1.0, float64: bool = False, batch_sharding=None,
             mode: str = "efficient-uniform", bucket: int = 0, cond=None) -> jax.Array:
    """int32 [num_samples, L] from the sampler that fits `model_cfg.kind`.

    `steps` is the number of network calls of the diffusion samplers (the AR sampler always
    makes L-1). `mode` picks PGM's schedule (`PGM_MODES`); `bucket` (0 = automatic) the
    encoder / prefix shape granularity of the PGM and AR samplers. `cond` (a
    `prompts.Conditioning` of `num_samples` rows, optional): prompts / infilling.
    """
    common = dict(num_samples=num_samples, length=model_cfg.length, bos_id=bos_id, top_p=top_p,
                  temperature=temperature, float64=float64, batch_sharding=batch_sharding,
                  cond=cond)
    if model_cfg.kind == "pgm":
        return pgm.sample(graphdef, params, key, steps=steps, mode=mode, bucket=bucket, **common)
    if model_cfg.kind == "ar":
        return ar.sample(graphdef, params, key, bucket=bucket, **common)
    return mdlm.sample(graphdef, params, key, steps=steps, mask_id=model_cfg.mask_index,
                       **common)


def generate_many(graphdef: nnx.GraphDef, params: dict, model_cfg: ModelConfig, key: jax.Array,
                  mesh: jax.sharding.Mesh, *, num_samples: int, batch_size: int,
                  progress: bool = True, cond=None, **kwargs) -> np.ndarray:
    """int32 [num_samples, L] on the host, drawn `batch_size` at a time with `generate`.

    Batch i uses `fold_in(key, i)`, so the samples depend on the seed and batch size only.
    A batch is sharded over the mesh's data-parallel devices when they divide it, else it is
    not sharded. `progress` shows a bar on process 0. `cond` (optional, `num_samples` rows)
    is cut into batches (the last one padded by repeating its last row). Other arguments:
    `generate`'s.
    """
    dp = sharding.data_parallel_size(mesh)
    shard = sharding.batch_sharding(mesh) if batch_size % dp == 0 else None
    if shard is None and mesh.size > 1:
        logging.warning("batch size %d is not divisible by the %d data-parallel devices: the "
                        "batch is not sharded (use a multiple of %d)", batch_size, dp, dp)
    out = []
    bar = tqdm(total=num_samples, unit="sample", desc=f"sampling ({model_cfg.kind})",
               disable=not progress or jax.process_index() != 0)
    for i, start in enumerate(range(0, num_samples, batch_size)):
        rows = None
        if cond is not None:
            rows = cond.rows(np.minimum(np.arange(start, start + batch_size), num_samples - 1))
        tokens = generate(graphdef, params, model_cfg, jax.random.fold_in(key, i),
                          num_samples=batch_size, batch_sharding=shard, cond=rows, **kwargs)
        tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
        out.append(tokens[:num_samples - start])
        bar.update(len(out[-1]))
    bar.close()
    return np.concatenate(out)
