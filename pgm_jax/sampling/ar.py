"""Sampler of the autoregressive baseline (reference `algo.AR.generate_samples`).

BOS at position 0, then L-1 network calls, each drawing token i+1 from the logits at position
i (MASK excluded, as the reference's post-processing). There is no KV cache, as in the
reference; a causal model's logits at position i do not depend on later positions, so the
input only needs the prefix, and it is cut to the next multiple of `bucket` tokens: calls
that fit one bucket run inside one compiled `fori_loop` (the cost tracks the prefix, as in
PGM's sampler, instead of padding every call to L).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgm_jax.sampling.categorical import sample_logits, x64_scope
from pgm_jax.sampling.pgm import default_bucket
from pgm_jax.sampling.prompts import Conditioning

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("graphdef", "bucket", "top_p", "temperature",
                                              "float64"), donate_argnums=(2,))
def _run_bucket(graphdef, params, x, keep, key, first, last, *, bucket, top_p, temperature,
                float64):
    """Draws tokens first+1 .. last (calls [first, last)); every prefix fits in `bucket`.

    x: int32 [N, L] with tokens 0..first decoded (the rest hold anything); keep: bool [N, L]
    positions that keep their token (BOS, a prompt, what follows a sequence's completion).
    """
    model = nnx.merge(graphdef, params)

    def body(i, x):
        logits = jax.lax.dynamic_index_in_dim(model(x[:, :bucket]), i, axis=1, keepdims=False)
        new = sample_logits(jax.random.fold_in(key, i), logits, mask_index=model.cfg.mask_index,
                            top_p=top_p, temperature=temperature, float64=float64)
        kept = jax.lax.dynamic_index_in_dim(keep, i + 1, axis=1, keepdims=False)
        old = jax.lax.dynamic_index_in_dim(x, i + 1, axis=1, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(x, jnp.where(kept, old, new), i + 1, axis=1)

    return jax.lax.fori_loop(first, last, body, x)


def sample(graphdef: nnx.GraphDef, params: dict, key: Array, *, num_samples: int, length: int,
           bos_id: int, top_p: float = 1.0, temperature: float = 1.0, float64: bool = False,
           bucket: int = 0, batch_sharding=None, cond: Conditioning | None = None) -> Array:
    """Draws `num_samples` sequences int32 [num_samples, length] with BOS at position 0.

    `cond` (optional): prefix prompts (ragged across the batch); calls start after the
    shortest and stop at the last position any sequence decodes; positions a sequence does
    not decode keep `cond.tokens`.
    """
    bucket = min(bucket or default_bucket(length), length)
    x = jnp.full((num_samples, length), bos_id, jnp.int32)
    keep = np.zeros((num_samples, length), bool)
    keep[:, 0] = True
    start, stop = 0, length - 1
    if cond is not None:
        if not cond.is_prefix():
            raise ValueError("the AR sampler continues prefixes only (no infilling)")
        x, keep = jnp.asarray(cond.tokens, jnp.int32), ~cond.decode
        used = cond.given | cond.decode
        start, stop = int(cond.num_given.min()) - 1, int(used.sum(1).max()) - 1
    if batch_sharding is not None:
        x, keep = jax.device_put((x, jnp.asarray(keep)), batch_sharding)
    with x64_scope(float64):
        for size in range(bucket, length + bucket, bucket):
            # Call i reads tokens 0..i, so calls [size - bucket, size) fit `size` tokens.
            first, last = max(size - bucket, start), min(size, stop)
            if first < last:
                x = _run_bucket(graphdef, params, x, keep, key, first, last,
                                bucket=min(size, length), top_p=float(top_p),
                                temperature=float(temperature),
                                float64=float64)
    return x
