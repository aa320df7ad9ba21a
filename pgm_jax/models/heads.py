"""Output heads shared by the models: the adaLN final layer, and logits or log p(target)
from it, optionally in chunks.

Lives in models/ (not objectives/) so that models never import objectives.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import sharding
from pgm_jax.models import layers
from pgm_jax.models.blocks import adaln, adaln_chunks, modulate
from pgm_jax.models.config import ModelConfig

Array = jax.Array


class FinalLayer(nnx.Module):
    """`logits = modulate(LN(y), shift, scale) @ W + b` with zero-initialised W, b, adaLN."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.norm_final = layers.LayerNorm(cfg.hidden_size)
        self.linear = layers.Linear(
            cfg.hidden_size, cfg.vocab_size, rngs=rngs, zero_init=True, axes=("embed", "vocab"),
            dtype=cfg.compute_dtype,
        )
        self.adaLN_modulation = adaln(cfg, 2, rngs=rngs)

    def __call__(self, y: Array, c: Array) -> Array:
        """y: [batch, n, H] -> logits [batch, n, V] in the compute dtype."""
        shift, scale = adaln_chunks(self.adaLN_modulation, c, 2)
        logits = self.linear(modulate(self.norm_final(y), shift, scale))
        return sharding.constrain(logits, layers.LOGITS)


def logits_or_logprob(final: FinalLayer, y: Array, c: Array, targets: Array | None,
                      cfg: ModelConfig) -> Array:
    """The output layer on features y [batch, n, H] with conditioning c [batch, C]: logits
    [batch, n, V], or with `targets` (int [batch, n]) their log-probabilities float32
    [batch, n] under PGM post-processing (`cfg.mask_index` excluded), computed
    `cfg.logits_chunk` positions at a time so the full logits never exist."""
    if targets is None:
        return final(y, c)
    return chunked_target_logprob(lambda h: final(h, c), y, targets, cfg.mask_index,
                                  cfg.logits_chunk)


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
