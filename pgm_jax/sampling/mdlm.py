"""MDLM ancestral (DDPM) sampler with the reference's cache (spec §3.5).

Start from all-MASK with BOS at position 0; over S steps on t = linspace(1, 1e-5, S+1), each
still-masked token is unmasked with probability (alpha_s - alpha_t) / (1 - alpha_t) to a draw
from the SUBS distribution of the full-length DiT; a final noise-removal step (alpha_s = 1)
decodes what is left. Every network call runs the DiT over all L positions (that is the cost
PGM avoids).

The cache (`ddpm_cache`): when a step changes no token in the batch, the next step's network
input is the same, so the reference reuses its p_x0 [N, L, V] (float64: 13 GB at N=32, L=1024,
V=50258). We carry the DiT's last hidden state [N, L, H] instead (H/V = 1.5% of that memory,
100 MB there) and skip the backbone under `lax.cond`; the head re-runs, and the draws are the
same as with cached probabilities. Like the reference, the cache is off under time
conditioning (the network input then changes with t).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax.objectives import schedule
from pgm_jax.sampling.categorical import sample_logits, x64_scope
from pgm_jax.sampling.prompts import Conditioning

Array = jax.Array
T_MIN = 1e-5


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "top_p", "temperature",
                                              "float64", "cache"))
def _sample(graphdef, params, x, key, *, steps, top_p, temperature, float64, cache):
    model = nnx.merge(graphdef, params)
    mask, n = model.cfg.mask_index, x.shape[0]
    last_block = f"block{model.cfg.n_blocks - 1}"
    ts = jnp.linspace(1.0, T_MIN, steps + 1, dtype=jnp.float32)
    real = jnp.float64 if float64 else jnp.float32  # the reference draws reveals in float64

    def features(x, t):
        """(last hidden [N, L, H], conditioning [N, C]); the head's output is left unused."""
        debug: dict = {}
        sigma = jnp.full((n,), -jnp.log(schedule.alpha(t)), jnp.float32)
        model(x, sigma=sigma, debug=debug)
        return debug[last_block], debug["cond"]

    def update(i, state, t, unmask_prob):
        x, hidden, cond, stale = state
        hidden, cond = jax.lax.cond(stale, features, lambda x, t: (hidden, cond), x, t)
        k_tok, k_keep = jax.random.split(jax.random.fold_in(key, i))
        # SUBS would also pin unmasked positions to their token; only masked positions are
        # revealed below, so MASK removal alone gives the same draws.
        x0 = sample_logits(k_tok, model.output_layer(hidden, cond), mask_index=mask,
                           top_p=top_p, temperature=temperature, float64=float64)
        reveal = jax.random.uniform(k_keep, x.shape, real) < unmask_prob
        new = jnp.where((x == mask) & reveal, x0, x)
        stale = jnp.any(new != x) | (not cache) | model.cfg.time_conditioning
        return new, hidden, cond, stale

    def body(i, state):
        a_t, a_s = schedule.alpha(ts[i]), schedule.alpha(ts[i + 1])
        return update(i, state, ts[i], (a_s - a_t) / (1.0 - a_t))

    h, c = model.cfg.hidden_size, model.cfg.cond_dim
    state = (x, jnp.zeros((*x.shape, h), jnp.float32), jnp.zeros((n, c), jnp.float32),
             jnp.array(True))
    state = jax.lax.fori_loop(0, steps, body, state)
    # Final noise removal at t = 1e-5 (alpha_s = 1): decode every remaining MASK. Skipped
    # when nothing is left (it would change nothing).
    return jax.lax.cond(jnp.any(state[0] == mask),
                        lambda s: update(steps, s, ts[steps], 1.0)[0], lambda s: s[0], state)


def sample(graphdef: nnx.GraphDef, params: dict, key: Array, *, num_samples: int, length: int,
           steps: int, bos_id: int, mask_id: int, top_p: float = 1.0, temperature: float = 1.0,
           float64: bool = False, cache: bool = True, batch_sharding=None,
           cond: Conditioning | None = None) -> Array:
    """Draws `num_samples` sequences int32 [num_samples, length] with BOS at position 0.

    `cache=False` runs the backbone at every step (the reference's plain `ddpm`); the samples
    are the same. `cond` (optional): its given tokens start unmasked, so they are never
    resampled (only MASK positions are revealed); the other positions are all decoded.
    """
    x = jnp.full((num_samples, length), mask_id, jnp.int32).at[:, 0].set(bos_id)
    if cond is not None:
        x = jnp.where(cond.given, jnp.asarray(cond.tokens, jnp.int32), x)
    if batch_sharding is not None:
        x = jax.device_put(x, batch_sharding)
    with x64_scope(float64):
        return _sample(graphdef, params, x, key, steps=steps, top_p=float(top_p),
                       temperature=float(temperature), float64=float64, cache=cache)
