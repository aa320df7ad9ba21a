"""Categorical draws shared by every sampler (spec §3.4).

The reference post-processes logits (nucleus filter on the raw logits, MASK removed,
log-softmax) and samples `argmax_v p_v / E_v` with E_v = 1e-10 - log(U_v + 1e-10) ~ Exp(1),
p = exp(float64(log p)), U float64: Gumbel-max on log p. Rare tokens win when their E_v is
tiny, so what decides the tail is how finely E resolves values near 0.

* `float64=True` is that arithmetic exactly, V float64 uniforms per position. It needs jax's
  x64 mode on when the *outermost* jitted sampler is traced (an `enable_x64` context inside a
  trace does not survive lowering); the samplers wrap their calls in `x64_scope(float64)`.
* The float32 default draws the same distribution with far less randomness: a block of
  `block_size(V)` ~ sqrt(V) tokens by Gumbel-max on the blocks' masses (logsumexp), then a
  token inside it by Gumbel-max, 2 sqrt(V) noise values per position instead of V (MDLM draws
  at all L positions every step: V = 50k noise values per position cost more than its
  network on a CPU). Gumbel-max is shift-invariant, so logits need no normalisation. E comes
  from 32 random bits, E = -log1p(-W), W = (bits + 1/2) / 2^32, so it resolves down to 2^-32;
  plain float32 uniforms would floor it at 2^-24 and truncate the tail.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp

Array = jax.Array


def x64_scope(float64: bool):
    """Context for calling a jitted sampler: x64 on for the float64 path, else nothing."""
    return jax.enable_x64(True) if float64 else contextlib.nullcontext()


def categorical_from_uniform(logp: Array, u: Array) -> Array:
    """The reference `sample_categorical`: argmax_v exp(logp_v) / (1e-10 - log(u_v + 1e-10)).

    logp, u: [..., V] (u's float dtype decides the precision) -> int32 [...].
    """
    p = jnp.exp(logp.astype(u.dtype))
    return jnp.argmax(p / (1e-10 - jnp.log(u + 1e-10)), axis=-1).astype(jnp.int32)


def exponential_float32(key: Array, shape: tuple[int, ...]) -> Array:
    """Exp(1) variates float32 `shape` from 32 random bits each, fine-grained near 0.

    E = -log1p(-W), W = (bits + 1/2) 2^-32 in (0, 1): the smallest E is 2^-32 (float32 keeps
    24 significant bits there, unlike a uniform whose spacing near 1 is 2^-24).
    """
    bits = jax.random.bits(key, shape, jnp.uint32)
    w = (bits.astype(jnp.float32) + 0.5) * jnp.float32(2.0**-32)
    # Rounding can carry W up to 1.0 (E = inf); cap it where U = 1 - W reaches float32's 2^-24.
    w = jnp.minimum(w, jnp.float32(1.0 - 2.0**-24))
    return -jnp.log1p(-w)


def block_size(vocab: int) -> int:
    """Tokens per block of the two-level draw: the power of two nearest above sqrt(V)."""
    return 1 << math.ceil(math.log2(max(math.sqrt(vocab), 1.0)))


def gumbel_argmax_float32(key: Array, scores: Array) -> Array:
    """A draw from softmax(scores) [..., V] (float32, -inf allowed) -> int32 [...], two-level.

    P(token) = P(its block) P(token | block): the block is drawn from the blocks' masses, the
    token from the block's scores, each by Gumbel-max with `exponential_float32` noise.
    """
    vocab = scores.shape[-1]
    size = block_size(vocab)
    blocks = -(-vocab // size)
    scores = jnp.pad(scores.astype(jnp.float32), [(0, 0)] * (scores.ndim - 1)
                     + [(0, blocks * size - vocab)], constant_values=-jnp.inf)
    scores = scores.reshape(*scores.shape[:-1], blocks, size)
    k_block, k_token = jax.random.split(key)
    mass = jax.nn.logsumexp(scores, axis=-1)  # -inf for a block with nothing to draw
    b = jnp.argmax(mass - jnp.log(exponential_float32(k_block, mass.shape)), axis=-1)
    inner = jnp.take_along_axis(scores, b[..., None, None], axis=-2)[..., 0, :]
    j = jnp.argmax(inner - jnp.log(exponential_float32(k_token, inner.shape)), axis=-1)
    return (b * size + j).astype(jnp.int32)


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
    remove = jnp.put_along_axis(jnp.zeros_like(remove_sorted), order, remove_sorted, axis=-1,
                                inplace=False)
    return jnp.where(remove, -jnp.inf, logits)


def sample_logits(key: Array, logits: Array, *, mask_index: int | None, top_p: float = 1.0,
                  temperature: float = 1.0, float64: bool = False) -> Array:
    """One token per row of raw model logits [..., V] -> int32 [...].

    The reference's post-processing: nucleus filter on the raw logits, then MASK excluded
    (`mask_index`; None: no MASK column). temperature 0 is greedy (argmax). `float64` is the
    reference arithmetic (call under `x64_scope(True)`); the default the two-level float32 draw.
    """
    logits = top_p_filter(logits, top_p).astype(jnp.float32)
    if mask_index is not None:
        logits = logits.at[..., mask_index].set(-jnp.inf)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature if temperature != 1.0 else logits
    if not float64:
        return gumbel_argmax_float32(key, logits)
    if jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)) != jnp.float64:
        raise RuntimeError("float64 sampling must be traced under x64_scope(True)")
    u = jax.random.uniform(key, logits.shape, jnp.float64)
    return categorical_from_uniform(jax.nn.log_softmax(logits, axis=-1), u)
