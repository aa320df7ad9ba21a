"""Training heads shared by the models: log p(target) from logits, optionally in chunks.

Lives in models/ (not objectives/) so that models never import objectives.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def target_logprob(logits: Array, targets: Array, mask_index: int) -> Array:
    """log p(targets) under PGM post-processing without materialising log_softmax.

    logits: [batch, L, V]; targets: int [batch, L] -> float32 [batch, L].
    """
    logits = logits.astype(jnp.float32)
    masked = jnp.where(jnp.arange(logits.shape[-1]) == mask_index, -jnp.inf, logits)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(masked, axis=-1)


def chunked_target_logprob(head: Callable[[Array], Array], h: Array, targets: Array,
                           mask_index: int, chunk: int) -> Array:
    """`target_logprob(head(h), targets)` computed `chunk` positions at a time.

    head: features [batch, c, H] -> logits [batch, c, V]; h: [batch, n, H]; targets: int
    [batch, n] -> float32 [batch, n]. Each chunk's logits are rebuilt in the backward pass
    (`jax.checkpoint`), so forward and backward hold [batch, chunk, V] logits at a time instead
    of [batch, n, V] (a 50k vocabulary at L = 1024 is 200 MB per sequence in float32).
    chunk <= 0 or >= n: one piece. The sequence is zero-padded to a multiple of `chunk`.
    """
    n = h.shape[1]
    if chunk <= 0 or chunk >= n:
        return target_logprob(head(h), targets, mask_index)
    pad = -n % chunk
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    b, pieces = h.shape[0], (n + pad) // chunk
    hs = h.reshape(b, pieces, chunk, h.shape[-1]).swapaxes(0, 1)  # [pieces, batch, chunk, H]
    ts = targets.reshape(b, pieces, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def piece(hc: Array, tc: Array) -> Array:
        return target_logprob(head(hc), tc, mask_index)

    out = jax.lax.map(lambda xs: piece(*xs), (hs, ts))  # [pieces, batch, chunk]
    return out.swapaxes(0, 1).reshape(b, pieces * chunk)[:, :n]
