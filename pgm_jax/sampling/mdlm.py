"""MDLM ancestral (DDPM) sampler (spec §3.5).

Start from all-MASK with BOS at position 0; over S steps on t = linspace(1, 1e-5, S+1), each
still-masked token is unmasked with probability (alpha_s - alpha_t) / (1 - alpha_t) to a draw
from the SUBS distribution of the full-length DiT; a final noise-removal step decodes what
is left. Every step runs the network over all L positions (that is the cost PGM avoids).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import objectives
from pgm_jax.sampling.categorical import sample_tokens, top_p_filter

Array = jax.Array
T_MIN = 1e-5


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "top_p", "temperature",
                                              "float64"))
def _sample(graphdef, params, x, key, *, steps, top_p, temperature, float64):
    model = nnx.merge(graphdef, params)
    mask = model.cfg.mask_index
    ts = jnp.linspace(1.0, T_MIN, steps + 1)

    def denoise(i, x, unmask_prob):
        k_tok, k_keep = jax.random.split(jax.random.fold_in(key, i))
        logits = top_p_filter(model(x), top_p)
        logp = objectives.subs_logprobs(logits, x, mask)
        x0 = sample_tokens(k_tok, logp, float64=float64, temperature=temperature)
        reveal = jax.random.uniform(k_keep, x.shape) < unmask_prob
        return jnp.where((x == mask) & reveal, x0, x)

    def body(i, x):
        a_t, a_s = objectives.alpha(ts[i]), objectives.alpha(ts[i + 1])
        return denoise(i, x, (a_s - a_t) / (1.0 - a_t))

    x = jax.lax.fori_loop(0, steps, body, x)
    # Final noise removal at t = 1e-5 (alpha_s = 1): decode every remaining MASK. Skipped
    # (no network call) when nothing is left, as the reference's cache does.
    return jax.lax.cond(jnp.any(x == mask), lambda x: denoise(steps, x, 1.0), lambda x: x, x)


def sample(graphdef: nnx.GraphDef, params: dict, key: Array, *, num_samples: int, length: int,
           steps: int, bos_id: int, mask_id: int, top_p: float = 1.0, temperature: float = 1.0,
           float64: bool = False, batch_sharding=None) -> Array:
    """Draws `num_samples` sequences int32 [num_samples, length] with BOS at position 0."""
    x = jnp.full((num_samples, length), mask_id, jnp.int32).at[:, 0].set(bos_id)
    if batch_sharding is not None:
        x = jax.device_put(x, batch_sharding)
    return _sample(graphdef, params, x, key, steps=steps, top_p=float(top_p),
                   temperature=float(temperature), float64=float64)
