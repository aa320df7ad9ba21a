"""Primitive layers of every model: Linear, LayerNorm, MLP, dropout, the head split and the
dense attention oracle, and the logical names of activations.

Every layer keeps its parameters in float32 and computes its matmuls in a configurable
`dtype` (bf16 on accelerators); LayerNorm, softmax and the residual stream stay in float32
(spec §1.11). Parameters carry a `logical_axes` metadata tuple that `pgm_jax.sharding` maps to
mesh axes (`WEIGHT_RULES`); activations are constrained with the tuples below
(`ACTIVATION_RULES`).

Layouts follow the reference PyTorch code so that checkpoints convert one-to-one: a `Linear`
kernel is the transposed torch weight, `[in, out]`; fused projections keep torch's row order
(`[q | k | v]`, heads major inside each part).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import sharding

Array = jax.Array

# Logical axes of activations (sharding.ACTIVATION_RULES), named once for every constrain call.
RESIDUAL = ("activation_batch", "activation_length", "activation_embed")  # [batch, n, H]
HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")  # q, k, v
MLP_HIDDEN = ("activation_batch", "activation_length", "activation_mlp")  # [batch, n, hidden]
LOGITS = ("activation_batch", "activation_length", "activation_vocab")  # [batch, n, V]


def torch_uniform(fan_in: int):
    """PyTorch's default `nn.Linear` init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def zeros_init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    del key
    return jnp.zeros(shape, dtype)


class Linear(nnx.Module):
    """y = x @ kernel + bias, with kernel `[in, out]` (torch weight transposed)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        use_bias: bool = True,
        zero_init: bool = False,
        axes: tuple[str | None, str | None] = (None, None),
        dtype: jnp.dtype = jnp.float32,
    ):
        init = zeros_init if zero_init else torch_uniform(in_features)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)), logical_axes=axes)
        self.bias = (
            nnx.Param(init(rngs.params(), (out_features,)), logical_axes=(axes[1],))
            if use_bias
            else None
        )
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis in float32 (eps 1e-5 as in the reference).

    The reference's custom LayerNorm has a scale only (`use_bias=False`); GroupSwap's
    `pre_query_norm` is a standard `nn.LayerNorm` with scale and bias.
    """

    def __init__(self, dim: int, *, use_bias: bool = False, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("norm",))
        self.bias = (
            nnx.Param(jnp.zeros((dim,), jnp.float32), logical_axes=("norm",)) if use_bias else None
        )
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class Mlp(nnx.Module):
    """Linear(in -> hidden) -> activation -> Linear(hidden -> out), both with bias."""

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        activation: str = "gelu_tanh",
        dtype: jnp.dtype = jnp.float32,
        axes: tuple[str, str] = ("embed", "mlp"),
        hidden_axes: tuple[str, ...] | None = None,
    ):
        self.fc_in = Linear(in_features, hidden, rngs=rngs, axes=axes, dtype=dtype)
        self.fc_out = Linear(hidden, out_features, rngs=rngs, axes=axes[::-1], dtype=dtype)
        self.activation = activation
        self.hidden_axes = hidden_axes

    def __call__(self, x: Array) -> Array:
        """x: [..., in] -> [..., out]; the hidden layer is constrained to `hidden_axes` (e.g.
        MLP_HIDDEN for [batch, n, in] inputs) when given."""
        h = self.fc_in(x)
        if self.hidden_axes is not None:
            h = sharding.constrain(h, self.hidden_axes)
        if self.activation == "gelu_tanh":
            h = jax.nn.gelu(h, approximate=True)
        elif self.activation == "silu":
            h = jax.nn.silu(h)
        else:
            raise ValueError(f"unknown activation {self.activation!r}")
        return self.fc_out(h)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; identity when `key` is None (evaluation) or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def maybe_split(key: Array | None, n: int) -> list[Array | None]:
    """n independent dropout keys, or n Nones in evaluation."""
    return [None] * n if key is None else list(jax.random.split(key, n))


# ----------------------------------------------------------------------------- attention
def split_heads(x: Array, n_heads: int) -> Array:
    """[batch, n, heads*d] -> [batch, n, heads, d] (heads major, as torch's '(h d)').

    Constrained to HEADS: under tensor parallelism each device keeps the heads whose
    projection columns (the weights' 'heads' axis) it holds, so dense attention runs on them
    without communication.
    """
    return sharding.constrain(x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads), HEADS)


def masked_attention(q: Array, k: Array, v: Array, mask: Array, *,
                     cpu_chunks: bool | None = None) -> Array:
    """Softmax attention where a query row with no allowed key outputs zeros (the dense
    kernel of `pgm_jax.models.attention`, and its oracle).

    With `cpu_chunks` (default: when this process runs on a CPU), queries are processed in
    chunks whose [batch, heads, chunk, nk] float32 scores fit in `_CPU_SCORE_BYTES`: past the
    last-level cache, XLA:CPU's softmax passes slow down by ~2x (measured: batch 4 x 4 heads
    x 1024 x 1024 took 268 CPU-ms at once, 160 in 256-query chunks). Programs compiled for an
    accelerator take the whole block. Same result either way.
    """
    b, nq, h = q.shape[:3]
    nk = k.shape[1]
    chunk = max(_CPU_MIN_CHUNK, _CPU_SCORE_BYTES // (4 * b * h * nk))
    if cpu_chunks is None:
        cpu_chunks = jax.default_backend() == "cpu"
    if not cpu_chunks or nq <= chunk:
        return _attention(q, k, v, mask)
    outs = []
    for start in range(0, nq, chunk):
        m = mask if mask.shape[1] == 1 else mask[:, start:start + chunk]
        outs.append(_attention(q[:, start:start + chunk], k, v, m))
    return jnp.concatenate(outs, axis=1)


_CPU_SCORE_BYTES = 1 << 24  # 16 MiB of scores per chunk (see masked_attention)
# Chunks never hold fewer queries: shapes are global under jit (a large batch would otherwise
# unroll into hundreds of tiny chunks and blow up compile time).
_CPU_MIN_CHUNK = 128


def _attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """`masked_attention` on one block of queries.

    q: [batch, nq, heads, d]; k, v: [batch, nk, heads, d]; mask: bool [batch, nq | 1, nk]
    (True = may attend; a [batch, 1, nk] key-padding mask broadcasts over queries and heads).
    Returns [batch, nq, heads * d].

    Why not `jax.nn.dot_product_attention`: it masks with a large finite negative, so a row
    with no allowed key attends uniformly to *every* key, which in PGM training is the
    query's own group and leaks the targets (spec §9.1). PyTorch SDPA returns zeros there.
    Here such rows are zeroed after the fact (`has_key`), which keeps the softmax itself
    plain: masking with -inf and repairing the row max (`where(isfinite(max))`) breaks XLA's
    fusion of max/exp/sum and made attention ~3x slower on CPU (measured at 1024 keys); the
    normalisation is applied to the [nq, d] output rather than the [nq, nk] weights.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    bias = jnp.where(mask, 0.0, _MASKED)[:, None, :, :]  # [batch, 1, nq | 1, nk]
    # Heads-major [batch, heads, n, d] operands: XLA:CPU runs the two batched matmuls ~2x
    # faster than with the heads axis in the middle (measured at 1024 keys).
    qt, kt, vt = (jnp.swapaxes(t, 1, 2) for t in (q * jnp.asarray(scale, q.dtype), k, v))
    scores = jnp.einsum("bhqd,bhkd->bhqk", qt, kt, preferred_element_type=jnp.float32) + bias
    p = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    out = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vt,
                     preferred_element_type=jnp.float32)
    out = out / jnp.sum(p, axis=-1, keepdims=True)  # >= 1: the row max contributes exp(0)
    has_key = jnp.any(mask, axis=-1)[:, None, :, None]  # [batch, 1, nq | 1, 1]
    out = jnp.swapaxes(jnp.where(has_key, out, 0.0).astype(v.dtype), 1, 2)
    return out.reshape(*out.shape[:2], -1)


# A finite "minus infinity" for masked scores: exp(_MASKED - row max) is exactly 0 in float32
# whenever the row has an allowed key; rows without one are zeroed explicitly.
_MASKED = -1e30
