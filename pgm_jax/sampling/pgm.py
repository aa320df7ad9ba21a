"""PGM's efficient-uniform sampler (spec §3.1), with the encoder cost tracking decoded length.

Every sequence starts as [BOS] at position 0; the other L-1 positions are visited in a
per-sequence random order, k = L / S of them per step (the last step gets k-1). Each step runs
the encoder on the clean tokens only, packed with their absolute positions, and the decoder
on the k positions being decoded.

Why buckets: under jit shapes are static. Padding the encoder input to L at every step would
make each step cost as much as the last one and lose most of PGM's speed-up. Instead the
clean prefix is padded to the next multiple of `bucket` tokens (key-padding masked, so the
padding has no effect); all steps that fit one bucket run inside one compiled `fori_loop`,
and only L / bucket shapes are ever compiled.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import objectives
from pgm_jax.sampling.categorical import sample_tokens, top_p_filter

Array = jax.Array


def tokens_per_step(length: int, steps: int) -> int:
    """k = L / S; the reference requires S to divide L (checked by the caller's config)."""
    if length % steps:
        raise ValueError(f"sample.steps={steps} must divide model.length={length}")
    return length // steps


def default_bucket(length: int) -> int:
    """Bucket size: L/8 rounded up to a multiple of 8 (8 compiled shapes), at least 8."""
    return max(8, int(math.ceil(length / 8 / 8) * 8))


@functools.partial(
    jax.jit, static_argnames=("graphdef", "bucket", "k", "top_p", "temperature", "float64")
)
def _run_bucket(graphdef, params, x, order, key, first_step, last_step, *, bucket, k, top_p,
                temperature, float64):
    """Runs steps [first_step, last_step) whose clean prefix fits in `bucket` tokens.

    x: int32 [N, L] tokens in natural order (undecoded positions hold anything);
    order: int32 [N, L] = [decoding order of positions 1..L-1, then one pad entry 0].
    """
    model = nnx.merge(graphdef, params)
    n = x.shape[0]
    # Packed clean positions: BOS at 0, then the first bucket-1 decoded positions in order.
    clean_pos = jnp.concatenate([jnp.zeros((n, 1), jnp.int32), order[:, : bucket - 1]], axis=1)
    num_queries = order.shape[1] - 1  # L - 1 real positions

    def body(s, x):
        n_clean = 1 + s * k
        clean_tok = jnp.take_along_axis(x, clean_pos, axis=1)
        q_idx = s * k + jnp.arange(k)
        q_pos = jax.lax.dynamic_slice_in_dim(order, s * k, k, axis=1)
        logits = model.infer(clean_tok, clean_pos, q_pos, jnp.full((n,), n_clean, jnp.int32))
        logp = objectives.pgm_logprobs(top_p_filter(logits, top_p), model.cfg.mask_index)
        new = sample_tokens(jax.random.fold_in(key, s), logp, float64=float64,
                            temperature=temperature)
        # Query slots past L-1 (the last step's padding) point at position 0: keep BOS there.
        new = jnp.where(q_idx[None] < num_queries, new, jnp.take_along_axis(x, q_pos, axis=1))
        return x.at[jnp.arange(n)[:, None], q_pos].set(new)

    return jax.lax.fori_loop(first_step, last_step, body, x)


def sample(graphdef: nnx.GraphDef, params: dict, key: Array, *, num_samples: int, length: int,
           steps: int, bos_id: int, top_p: float = 1.0, temperature: float = 1.0,
           float64: bool = False, bucket: int | None = None, batch_sharding=None) -> Array:
    """Draws `num_samples` sequences int32 [num_samples, length] with BOS at position 0."""
    k = tokens_per_step(length, steps)
    bucket = min(bucket or default_bucket(length), length)
    k_order, k_steps = jax.random.split(key)
    # Per-sequence uniformly random order of positions 1..L-1 (argsort of uniforms).
    u = jax.random.uniform(k_order, (num_samples, length - 1))
    order = (jnp.argsort(u, axis=1) + 1).astype(jnp.int32)
    order = jnp.concatenate([order, jnp.zeros((num_samples, 1), jnp.int32)], axis=1)
    x = jnp.full((num_samples, length), bos_id, jnp.int32)
    if batch_sharding is not None:
        x, order = jax.device_put((x, order), batch_sharding)
    s = 0
    while s < steps:
        # Largest step whose clean prefix (1 + s*k tokens) still fits in the current bucket.
        size = min(int(math.ceil((1 + s * k) / bucket)) * bucket, length)
        last = min(steps, (size - 1) // k + 1)
        x = _run_bucket(graphdef, params, x, order, k_steps, s, last, bucket=size, k=k,
                        top_p=float(top_p), temperature=float(temperature), float64=float64)
        s = last
    return x
