"""The MaskGIT baseline (`models/transformer.py:Transformer` of Halton-MaskGIT, spec
pgm_image.md §2.2).

A bidirectional adaLN transformer over N image tokens (mask id = codebook_size where masked):
learned absolute positions, one register appended after the tokens, RMSNorm (eps 1e-5) with a
parameter-free QK-RMSNorm over the full hidden vector, SwiGLU feed-forward, adaLN from
SiLU(class embedding) (unlike the PGM, which has no SiLU), and a head tied to the token
embedding with its own bias. Initialisation is the reference's: xavier-uniform Linear
weights with zero biases, N(0, 0.02) embeddings and register, zero adaLN in the blocks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import sharding
from pgm_jax.models import attention, heads, layers
from pgm_jax.models.blocks import modulate
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.embeddings import ClassEmbedding, Table
from pgm_jax.models.layers import maybe_split
from pgm_jax.models.stacking import run_blocks

Array = jax.Array
RMS_EPS = 1e-5


def swiglu_hidden(mlp_dim: int, multiple_of: int = 256) -> int:
    """The reference FeedForward width: 256 * ceil(int(2 * mlp_dim / 3) / 256) (2816 for 4096)."""
    h = int(2 * mlp_dim / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def rms(x: Array, eps: float = RMS_EPS) -> Array:
    """x / sqrt(mean(x^2) + eps) over the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def xavier_linear(fan_in: int, fan_out: int, *, rngs: nnx.Rngs, use_bias: bool,
                  axes: tuple[str | None, str | None], dtype, zero: bool = False
                  ) -> layers.Linear:
    """layers.Linear with the reference init: xavier-uniform weight (or zeros), zero bias."""
    lin = layers.Linear(fan_in, fan_out, rngs=rngs, use_bias=use_bias, zero_init=True, axes=axes,
                        dtype=dtype)
    if not zero:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        lin.kernel[...] = jax.random.uniform(rngs.params(), (fan_in, fan_out), jnp.float32,
                                             -bound, bound)
    return lin


class RMSNorm(nnx.Module):
    """RMSNorm with a scale (torch `weight`) and optionally a bias, eps 1e-5, float32."""

    def __init__(self, dim: int, *, use_bias: bool = False):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("norm",))
        self.bias = (nnx.Param(jnp.zeros((dim,), jnp.float32), logical_axes=("norm",))
                     if use_bias else None)

    def __call__(self, x: Array) -> Array:
        y = rms(x) * self.scale[...]
        return y if self.bias is None else y + self.bias[...]


class AdaLN(nnx.Module):
    """`mlp = Sequential(SiLU, Linear(H -> chunks * H))`: the Linear is torch's `mlp.1`."""

    def __init__(self, cfg: ModelConfig, chunks: int, *, rngs: nnx.Rngs, zero: bool):
        h = cfg.hidden_size
        self.chunks = chunks
        self.linear = xavier_linear(h, chunks * h, rngs=rngs, use_bias=True,
                                    axes=(None, "embed"), dtype=cfg.compute_dtype, zero=zero)

    def __call__(self, c: Array) -> list[Array]:
        """c: [B, H] -> `chunks` float32 arrays [B, 1, H] (shift, scale, gate, ...)."""
        out = self.linear(jax.nn.silu(c)).astype(jnp.float32)[:, None, :]
        return jnp.split(out, self.chunks, axis=-1)


class Attention(nnx.Module):
    """Bidirectional multi-head attention with QK-RMSNorm and probability dropout."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h, dt = cfg.hidden_size, cfg.compute_dtype
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.attn_kernel = (cfg.attention, cfg.attention_platform)
        lin = lambda axes: xavier_linear(h, h, rngs=rngs, use_bias=False, axes=axes, dtype=dt)
        self.wq, self.wk, self.wv = (lin(("embed", "heads")) for _ in range(3))
        self.wo = lin(("heads", "embed"))

    def __call__(self, x: Array, key: Array | None) -> Array:
        """x: [B, n, H] -> [B, n, H] (before the residual gate)."""
        k_p, k_out = maybe_split(key, 2)
        dt = self.wq.dtype
        # QK-norm over the full H-vector, before the head split (the reference's QKNorm).
        q = layers.split_heads(rms(self.wq(x)).astype(dt), self.n_heads)
        k = layers.split_heads(rms(self.wk(x)).astype(dt), self.n_heads)
        v = layers.split_heads(self.wv(x), self.n_heads)
        fused = attention.kernel_for(self.attn_kernel) != "dense"
        if fused and (k_p is None or self.dropout == 0.0):  # no probability dropout
            a = attention.attend(q, k, v, attention.Segments(), self.attn_kernel)
            return layers.dropout(self.wo(a), self.dropout, k_out)
        # Dense (the reference's SDPA): its dropout_p acts on the probabilities, which only
        # this layout holds, so training with dropout > 0 stays here on every platform.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        p = jax.nn.softmax(scores / math.sqrt(q.shape[-1]), axis=-1)
        p = layers.dropout(p, self.dropout, k_p)  # SDPA's dropout_p on the probabilities
        a = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v)
        return layers.dropout(self.wo(a.reshape(*a.shape[:2], -1)), self.dropout, k_out)


class FeedForward(nnx.Module):
    """SwiGLU without biases: w2(dropout(silu(w1 x) * w3 x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h, f, dt = cfg.hidden_size, swiglu_hidden(cfg.mlp_ratio * cfg.hidden_size), \
            cfg.compute_dtype
        self.dropout = cfg.dropout
        self.w1 = xavier_linear(h, f, rngs=rngs, use_bias=False, axes=("embed", "mlp"), dtype=dt)
        self.w3 = xavier_linear(h, f, rngs=rngs, use_bias=False, axes=("embed", "mlp"), dtype=dt)
        self.w2 = xavier_linear(f, h, rngs=rngs, use_bias=False, axes=("mlp", "embed"), dtype=dt)

    def __call__(self, x: Array, key: Array | None) -> Array:
        u = sharding.constrain(jax.nn.silu(self.w1(x)) * self.w3(x), layers.MLP_HIDDEN)
        return self.w2(layers.dropout(u, self.dropout, key))


class Block(nnx.Module):
    """x += g1 * attn(mod(RMS(x))); x += g2 * ff(mod(RMS(x))), adaLN from SiLU(c)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.mlp = AdaLN(cfg, 6, rngs=rngs, zero=True)
        self.ln1 = RMSNorm(cfg.hidden_size)
        self.attn = Attention(cfg, rngs=rngs)
        self.ln2 = RMSNorm(cfg.hidden_size)
        self.ff = FeedForward(cfg, rngs=rngs)

    def __call__(self, x: Array, c: Array, key: Array | None) -> Array:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mlp(c)
        k_attn, k_ff = maybe_split(key, 2)
        x = x + gate1 * self.attn(modulate(self.ln1(x), shift1, scale1), k_attn)
        return x + gate2 * self.ff(modulate(self.ln2(x), shift2, scale2), k_ff)


class TransformerEncoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_blocks)])


class LastNorm(nnx.Module):
    """AdaNorm: modulate(RMSNorm_affine(x), shift, scale) with (shift, scale) from SiLU(c)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.norm_final = RMSNorm(cfg.hidden_size, use_bias=True)
        self.mlp = AdaLN(cfg, 2, rngs=rngs, zero=False)

    def __call__(self, x: Array, c: Array) -> Array:
        shift, scale = self.mlp(c)
        return modulate(self.norm_final(x), shift, scale)


class TiedHead(nnx.Module):
    """logits = x @ tok_emb^T + bias (the weight is the token embedding's)."""

    def __init__(self, vocab: int):
        self.bias = nnx.Param(jnp.zeros((vocab,), jnp.float32), logical_axes=("vocab",))

    def __call__(self, x: Array, table: Array) -> Array:
        logits = jnp.einsum("bnh,vh->bnv", x.astype(table.dtype), table,
                            preferred_element_type=jnp.float32)
        return sharding.constrain(logits + self.bias[...], layers.LOGITS)


class MaskGIT(nnx.Module):
    """Class-conditional MaskGIT transformer over N tokens (mask id = codebook_size)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.cfg = cfg
        self.cls_emb = ClassEmbedding(cfg.num_classes, h, rngs=rngs, std=0.02)
        self.tok_emb = Table(cfg.vocab_size, h, rngs=rngs, std=0.02, axes=("vocab", "embed"))
        self.pos_emb = Table(cfg.length, h, rngs=rngs, std=0.02)
        self.reg_tokens = Table(1, h, rngs=rngs, std=0.02)
        self.transformer = TransformerEncoder(cfg, rngs=rngs)
        self.last_norm = LastNorm(cfg, rngs=rngs)
        self.head = TiedHead(cfg.vocab_size)

    def __call__(
        self,
        codes: Array,
        labels: Array,
        drop_label: Array,
        *,
        key: Array | None = None,
        targets: Array | None = None,
    ) -> Array:
        """codes: int32 [B, N] (mask id where masked); labels: int32 [B]; drop_label: bool
        [B]; key: dropout key or None (eval). Returns logits float32 [B, N, codebook_size + 1]
        (the mask column included, as the reference's head), or with `targets` (int [B, N])
        their log-probabilities float32 [B, N] over all columns (the reference's CE)."""
        b, n = codes.shape
        c = self.cls_emb(labels, drop_label)
        x = self.tok_emb(codes) + self.pos_emb.embedding[...][:n][None]
        reg = jnp.broadcast_to(self.reg_tokens.embedding[...][None], (b, 1, self.cfg.hidden_size))
        x = sharding.constrain(jnp.concatenate([x, reg], axis=1), layers.RESIDUAL)
        x = run_blocks(self.transformer.layers, x, maybe_split(key, len(self.transformer.layers)),
                       lambda blk, h, k: blk(h, c, k), self.cfg)
        u = self.last_norm(x[:, :n], c)
        logits = self.head(u, self.tok_emb.embedding[...].astype(self.cfg.compute_dtype))
        if targets is None:
            return logits
        # No column is excluded: -1 never matches, so this is the plain log-softmax.
        return heads.target_logprob(logits, targets, -1)
