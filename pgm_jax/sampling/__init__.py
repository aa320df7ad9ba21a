"""Samplers: PGM's efficient-uniform sampler and MDLM's ancestral sampler."""

from __future__ import annotations

import jax
from flax import nnx

from pgm_jax.models import ModelConfig
from pgm_jax.sampling import mdlm, pgm


def generate(graphdef: nnx.GraphDef, params: dict, model_cfg: ModelConfig, key: jax.Array, *,
             num_samples: int, steps: int, bos_id: int, top_p: float = 1.0,
             temperature: float = 1.0, float64: bool = False, batch_sharding=None) -> jax.Array:
    """int32 [num_samples, L] from the sampler that fits `model_cfg.kind`."""
    common = dict(num_samples=num_samples, length=model_cfg.length, steps=steps, bos_id=bos_id,
                  top_p=top_p, temperature=temperature, float64=float64,
                  batch_sharding=batch_sharding)
    if model_cfg.kind == "pgm":
        return pgm.sample(graphdef, params, key, **common)
    return mdlm.sample(graphdef, params, key, mask_id=model_cfg.mask_index, **common)
