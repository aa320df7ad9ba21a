"""adaLN transformer blocks: the DiT self-attention block (PGM encoder, MDLM DiT, AR) and the
PGM decoder's cross-attention block, with the adaLN modulation they share.

Reference: `models/encoder_decoder.py:DDiTBlock`, `CrossAttnDDiTBlock` (spec §1.6, §1.13).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax.models import embeddings, layers
from pgm_jax.models.attention import Segments, attend
from pgm_jax.models.config import ModelConfig

Array = jax.Array


# ----------------------------------------------------------------------------- adaLN
def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN modulation `x * (1 + scale) + shift`; shift/scale `[batch, 1, H]`."""
    return x * (1.0 + scale) + shift


def adaln(cfg: ModelConfig, chunks: int, *, rngs: nnx.Rngs) -> layers.Linear:
    """Zero-initialised Linear(C -> chunks*H) giving per-channel shift/scale/gate vectors."""
    return layers.Linear(
        cfg.cond_dim, chunks * cfg.hidden_size, rngs=rngs, zero_init=True,
        axes=(None, "embed"), dtype=cfg.compute_dtype,
    )


def adaln_chunks(modulation: nnx.Module, c: Array, chunks: int) -> list[Array]:
    """c: [batch, C] -> `chunks` float32 arrays [batch, 1, H] (shift/scale/gate order)."""
    return jnp.split(modulation(c).astype(jnp.float32)[:, None, :], chunks, axis=-1)


def token_mlp(cfg: ModelConfig, *, rngs: nnx.Rngs) -> layers.Mlp:
    """The blocks' GELU MLP H -> mlp_ratio * H -> H, its hidden layer constrained per token."""
    h = cfg.hidden_size
    return layers.Mlp(h, cfg.mlp_ratio * h, h, rngs=rngs, dtype=cfg.compute_dtype,
                      hidden_axes=layers.MLP_HIDDEN)


# ----------------------------------------------------------------------------- blocks
class DiTBlock(nnx.Module):
    """Pre-LN adaLN transformer block with masked self-attention and RoPE."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h, dt = cfg.hidden_size, cfg.compute_dtype
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.attn_kernel = (cfg.attention, cfg.attention_platform)
        self.norm1 = layers.LayerNorm(h)
        self.attn_qkv = layers.Linear(
            h, 3 * h, rngs=rngs, use_bias=False, axes=("embed", "heads"), dtype=dt
        )
        self.attn_out = layers.Linear(
            h, h, rngs=rngs, use_bias=False, axes=("heads", "embed"), dtype=dt
        )
        self.norm2 = layers.LayerNorm(h)
        self.mlp = token_mlp(cfg, rngs=rngs)
        self.adaLN_modulation = adaln(cfg, 6, rngs=rngs)

    def __call__(
        self, x: Array, c: Array, rope: tuple[Array, Array], mask: Segments, key: Array | None
    ) -> Array:
        """x: float32 [batch, n, H]; c: [batch, C]; rope: cos/sin [batch|1, n, d/2];
        mask: who sees whom (O(L) ids). Returns float32 [batch, n, H]."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaln_chunks(
            self.adaLN_modulation, c, 6
        )
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        q, k, v = jnp.split(self.attn_qkv(h), 3, axis=-1)
        a = _rope_attend(self, q, k, v, rope, rope, mask)
        return _residual_tail(self, x, a, gate_msa, shift_mlp, scale_mlp, gate_mlp, key)


class CrossAttnBlock(nnx.Module):
    """Decoder block: adaLN cross-attention from the query stream to LN(h_enc), then MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h, dt = cfg.hidden_size, cfg.compute_dtype
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.attn_kernel = (cfg.attention, cfg.attention_platform)
        self.q_norm1 = layers.LayerNorm(h)
        self.kv_norm1 = layers.LayerNorm(h)
        self.norm2 = layers.LayerNorm(h)
        self.attn_q = layers.Linear(h, h, rngs=rngs, use_bias=False, axes=("embed", "heads"),
                                    dtype=dt)
        self.attn_kv = layers.Linear(h, 2 * h, rngs=rngs, use_bias=False,
                                     axes=("embed", "heads"), dtype=dt)
        self.attn_out = layers.Linear(h, h, rngs=rngs, use_bias=False, axes=("heads", "embed"),
                                      dtype=dt)
        self.mlp = token_mlp(cfg, rngs=rngs)
        self.adaLN_modulation = adaln(cfg, 6, rngs=rngs)

    def __call__(self, y, h_enc, c, rope_q, rope_k, mask, key) -> Array:
        """y: [batch, nq, H] query stream; h_enc: [batch, nk, H]; mask: `Segments`."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaln_chunks(
            self.adaLN_modulation, c, 6
        )
        hq = modulate(self.q_norm1(y), shift_msa, scale_msa)
        k, v = jnp.split(self.attn_kv(self.kv_norm1(h_enc)), 2, axis=-1)
        a = _rope_attend(self, self.attn_q(hq), k, v, rope_q, rope_k, mask)
        return _residual_tail(self, y, a, gate_msa, shift_mlp, scale_mlp, gate_mlp, key)


def _rope_attend(block: DiTBlock | CrossAttnBlock, q: Array, k: Array, v: Array,
                 rope_q: tuple[Array, Array], rope_k: tuple[Array, Array], mask: Segments
                 ) -> Array:
    """q: [batch, nq, H], k / v: [batch, nk, H] -> heads, RoPE on q and k, attention through
    the block's kernel: [batch, nq, H]."""
    q = embeddings.apply_rope(layers.split_heads(q, block.n_heads), *rope_q)
    k = embeddings.apply_rope(layers.split_heads(k, block.n_heads), *rope_k)
    return attend(q, k, layers.split_heads(v, block.n_heads), mask, block.attn_kernel)


def _residual_tail(block: DiTBlock | CrossAttnBlock, x: Array, a: Array, gate_msa: Array,
                   shift_mlp: Array, scale_mlp: Array, gate_mlp: Array, key: Array | None
                   ) -> Array:
    """The blocks' shared end: x + gate * out(a), then the adaLN-modulated MLP residual, with
    dropout on both branches. x, a: [batch, n, H] -> [batch, n, H]."""
    k_attn, k_mlp = layers.maybe_split(key, 2)
    x = x + gate_msa * layers.dropout(block.attn_out(a), block.dropout, k_attn)
    h = modulate(block.norm2(x), shift_mlp, scale_mlp)
    return x + gate_mlp * layers.dropout(block.mlp(h), block.dropout, k_mlp)
