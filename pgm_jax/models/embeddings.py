"""Embeddings shared by the models: token and lookup tables, class labels, diffusion time,
and the position tables (RoPE, GroupSwap's sinusoids).

Tables are float32 parameters; position tables are constants rebuilt from the config (not
parameters), cached per shape.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgm_jax.models import layers

Array = jax.Array


# ----------------------------------------------------------------------------- lookup tables
class Embedding(nnx.Module):
    """Token embedding `[V, H]`, init U(-1/sqrt(H), 1/sqrt(H)); no scaling, no tying."""

    def __init__(self, vocab_size: int, hidden: int, *, rngs: nnx.Rngs):
        init = layers.torch_uniform(hidden)
        self.embedding = nnx.Param(init(rngs.params(), (vocab_size, hidden)),
                                   logical_axes=("vocab", "embed"))

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding[...], tokens, axis=0)


class Table(nnx.Module):
    """A learned lookup table `embedding` [rows, H] (torch `nn.Embedding.weight`)."""

    def __init__(self, rows: int, dim: int, *, rngs: nnx.Rngs, std: float,
                 axes: tuple[str | None, str | None] = (None, "embed")):
        self.embedding = nnx.Param(std * jax.random.normal(rngs.params(), (rows, dim)),
                                   logical_axes=axes)

    def __call__(self, ids: Array) -> Array:
        """ids: int [...] -> float32 [..., H]."""
        return jnp.take(self.embedding[...], ids, axis=0)


class ClassEmbedding(nnx.Module):
    """`cls_embed.embedding_table` [num_classes + 1, H], N(0, 1); the last row is the null
    class that classifier-free guidance's unconditional pass (and label dropout) uses."""

    def __init__(self, num_classes: int, dim: int, *, rngs: nnx.Rngs, std: float = 1.0):
        self.num_classes = num_classes
        self.embedding_table = Table(num_classes + 1, dim, rngs=rngs, std=std)

    def __call__(self, labels: Array, drop_label: Array) -> Array:
        """labels: int [B]; drop_label: bool [B] -> c float32 [B, H]."""
        y = jnp.where(drop_label.astype(bool), self.num_classes, labels)
        return self.embedding_table(y)


# ----------------------------------------------------------------------------- timestep embedding
class TimestepEmbedder(nnx.Module):
    """`c = silu(mlp(emb(sigma)))`, the reference `sigma_map` (256 sinusoid features -> C).

    PGM never uses time (sigma is always 0), so `c` is a learned constant; the module is kept
    so that checkpoints convert unchanged and the baselines can switch time conditioning on.
    """

    frequency_size = 256

    def __init__(self, cond_dim: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.mlp = layers.Mlp(
            self.frequency_size, cond_dim, cond_dim, rngs=rngs, activation="silu", dtype=dtype,
            axes=(None, "cond"),
        )

    def __call__(self, sigma: Array) -> Array:
        """sigma: float[batch] -> c: float32[batch, C]."""
        half = self.frequency_size // 2
        freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
        args = sigma.astype(jnp.float32)[:, None] * freqs[None]
        emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
        return jax.nn.silu(self.mlp(emb).astype(jnp.float32))


# ----------------------------------------------------------------------------- rotary embeddings
def rope_inv_freq(head_dim: int, base: float = 10000.0) -> np.ndarray:
    """The reference buffer `rotary_emb.inv_freq`, float32 [head_dim // 2]."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(base) ** exponent)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def rope_table(length: int, head_dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin tables float32 [length, head_dim // 2] for absolute positions 0..length-1."""
    t = np.arange(length, dtype=np.float32)
    freqs = np.outer(t, rope_inv_freq(head_dim, base)).astype(np.float32)
    return np.cos(freqs), np.sin(freqs)


def rope_at(positions: Array, length: int, head_dim: int, base: float = 10000.0
            ) -> tuple[Array, Array]:
    """positions: int [batch|1, n] -> cos, sin float32 [batch|1, n, head_dim // 2].

    Gathered from the constant `rope_table(length, ...)` at absolute positions.
    """
    cos, sin = rope_table(length, head_dim, base)
    return jnp.asarray(cos)[positions], jnp.asarray(sin)[positions]


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """NeoX (rotate-half) rotary embedding.

    x: [batch, n, heads, d]; cos, sin: [batch or 1, n, d/2] gathered at absolute positions.
    """
    d2 = x.shape[-1] // 2
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :d2], x[..., d2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@functools.lru_cache(maxsize=16)
def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> np.ndarray:
    """GroupSwap's `pos_freqs` float32 [length, dim]: cos half then sin half (not interleaved)."""
    i = np.arange(dim // 2, dtype=np.float64)
    angles = np.arange(length, dtype=np.float64)[:, None] / base ** (2 * i / dim)[None]
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)

