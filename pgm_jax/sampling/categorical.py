"""Categorical draws shared by every sampler (spec §3.4).

The reference samples `argmax_v p_v / E_v` with E_v = 1e-10 - log(U_v + 1e-10) ~ Exp(1),
p = exp(float64(log p)): Gumbel-max on log p. In float32 the noise cannot reach the far
tail (U is never below ~6e-8), so rare tokens are truncated; `float64=True` reproduces the
reference arithmetic (jax x64 enabled only around that computation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def categorical_from_uniform(logp: Array, u: Array) -> Array:
    """The reference `sample_categorical`: argmax_v exp(logp_v) / (1e-10 - log(u_v + 1e-10)).

    logp, u: [..., V] (same float dtype decides the precision) -> int32 [...].
    """
    p = jnp.exp(logp.astype(u.dtype))
    return jnp.argmax(p / (1e-10 - jnp.log(u + 1e-10)), axis=-1).astype(jnp.int32)


def top_p_filter(logits: Array, top_p: float) -> Array:
    """Nucleus filtering: keep the smallest prefix (by probability) whose mass reaches top_p.

    As the reference (`utils.top_k_top_p_filtering`): sort descending, drop tokens whose
    cumulative probability exceeds top_p, shifted by one so the crossing token stays;
    dropped logits become -inf. logits: [..., V].
    """
    if top_p >= 1.0:
        return logits
    logits = logits.astype(jnp.float32)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = jnp.concatenate(
        [jnp.zeros_like(cum[..., :1], bool), (cum > top_p)[..., :-1]], axis=-1
    )
    remove = jnp.zeros_like(remove_sorted).at[
        tuple(jnp.indices(order.shape)[:-1]) + (order,)
    ].set(remove_sorted)
    return jnp.where(remove, -jnp.inf, logits)


def sample_tokens(key: Array, logp: Array, *, float64: bool = False,
                  temperature: float = 1.0) -> Array:
    """Draws one token per row from log-probabilities logp [..., V] -> int32 [...].

    temperature 0 is greedy (argmax). `float64` draws the uniforms and divides in float64.
    """
    if temperature == 0.0:
        return jnp.argmax(logp, axis=-1).astype(jnp.int32)
    if temperature != 1.0:
        logp = jax.nn.log_softmax(logp.astype(jnp.float32) / temperature, axis=-1)
    if not float64:
        u = jax.random.uniform(key, logp.shape, jnp.float32)
        return categorical_from_uniform(logp, u)
    with jax.enable_x64(True):
        u = jax.random.uniform(key, logp.shape, jnp.float64)
        return categorical_from_uniform(logp, u)
