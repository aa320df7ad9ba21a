"""adaLN DiT blocks (PGM encoder, MDLM baseline) and the MDLM DiT backbone.

Reference: `models/dit.py:DIT` and `models/encoder_decoder.py:DDiTBlock` (spec §1.6, §1.13).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax.models import layers
from pgm_jax.models.config import ModelConfig

Array = jax.Array


def maybe_split(key: Array | None, n: int) -> list[Array | None]:
    """n independent dropout keys, or n Nones in evaluation."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def adaln(cfg: ModelConfig, chunks: int, *, rngs: nnx.Rngs) -> layers.Linear:
    """Zero-initialised Linear(C -> chunks*H) giving per-channel shift/scale/gate vectors."""
    return layers.Linear(
        cfg.cond_dim, chunks * cfg.hidden_size, rngs=rngs, zero_init=True,
        axes=(None, "embed"), dtype=cfg.compute_dtype,
    )


def adaln_chunks(modulation: layers.Linear, c: Array, chunks: int) -> list[Array]:
    """c: [batch, C] -> `chunks` float32 arrays [batch, 1, H] (shift/scale/gate order)."""
    return jnp.split(modulation(c).astype(jnp.float32)[:, None, :], chunks, axis=-1)


class DiTBlock(nnx.Module):
    """Pre-LN adaLN transformer block with masked self-attention and RoPE."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h, dt = cfg.hidden_size, cfg.compute_dtype
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.norm1 = layers.LayerNorm(h)
        self.attn_qkv = layers.Linear(
            h, 3 * h, rngs=rngs, use_bias=False, axes=("embed", "heads"), dtype=dt
        )
        self.attn_out = layers.Linear(
            h, h, rngs=rngs, use_bias=False, axes=("heads", "embed"), dtype=dt
        )
        self.norm2 = layers.LayerNorm(h)
        self.mlp = layers.Mlp(h, cfg.mlp_ratio * h, h, rngs=rngs, dtype=dt)
        self.adaLN_modulation = adaln(cfg, 6, rngs=rngs)

    def __call__(
        self, x: Array, c: Array, rope: tuple[Array, Array], mask: Array, key: Array | None
    ) -> Array:
        """x: float32 [batch, n, H]; c: [batch, C]; rope: cos/sin [batch|1, n, d/2];
        mask: bool [batch, n, n]. Returns float32 [batch, n, H]."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaln_chunks(
            self.adaLN_modulation, c, 6
        )
        k_attn, k_mlp = maybe_split(key, 2)
        h = layers.modulate(self.norm1(x), shift_msa, scale_msa)
        q, k, v = jnp.split(self.attn_qkv(h), 3, axis=-1)
        q = layers.apply_rope(layers.split_heads(q, self.n_heads), *rope)
        k = layers.apply_rope(layers.split_heads(k, self.n_heads), *rope)
        a = layers.masked_attention(q, k, layers.split_heads(v, self.n_heads), mask)
        x = x + gate_msa * layers.dropout(self.attn_out(a), self.dropout, k_attn)
        h = layers.modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x + gate_mlp * layers.dropout(self.mlp(h), self.dropout, k_mlp)


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
        return self.linear(layers.modulate(self.norm_final(y), shift, scale))


class Embedding(nnx.Module):
    """Token embedding `[V, H]`, init U(-1/sqrt(H), 1/sqrt(H)); no scaling, no tying."""

    def __init__(self, vocab_size: int, hidden: int, *, rngs: nnx.Rngs):
        init = layers.torch_uniform(hidden)
        self.embedding = nnx.Param(init(rngs.params(), (vocab_size, hidden)),
                                   logical_axes=("vocab", "embed"))

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding[...], tokens, axis=0)


class Backbone(nnx.Module):
    """What the PGM and DiT models share: embedding, conditioning, position tables, head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vocab_embed = Embedding(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.sigma_map = layers.TimestepEmbedder(cfg.cond_dim, rngs=rngs, dtype=cfg.compute_dtype)
        self.output_layer = FinalLayer(cfg, rngs=rngs)

    def rope(self, positions: Array) -> tuple[Array, Array]:
        """positions: int [batch|1, n] -> cos, sin float32 [batch|1, n, d/2].

        Gathered from a constant float32 table (not a parameter) at absolute positions.
        """
        cos, sin = layers.rope_table(self.cfg.length, self.cfg.head_dim, self.cfg.rope_base)
        return jnp.asarray(cos)[positions], jnp.asarray(sin)[positions]

    def cond(self, batch: int, sigma: Array | None) -> Array:
        """Conditioning vector c [batch, C]; sigma is zeroed unless time conditioning is on."""
        if sigma is None or not self.cfg.time_conditioning:
            sigma = jnp.zeros((batch,), jnp.float32)
        return self.sigma_map(sigma)


class DiT(Backbone):
    """MDLM baseline: bidirectional DiT over the full (masked) sequence."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.blocks = nnx.List([DiTBlock(cfg, rngs=rngs) for _ in range(cfg.n_blocks)])

    def __call__(
        self,
        tokens: Array,
        *,
        sigma: Array | None = None,
        key: Array | None = None,
        attention_mask: Array | None = None,
        debug: dict | None = None,
    ) -> Array:
        """tokens: int32 [batch, L] (MASK where noised) -> logits [batch, L, V].

        `key` enables dropout (training); `attention_mask` (bool [batch, L, L]) restricts
        attention, e.g. to packed segments; default full attention.
        """
        b, n = tokens.shape
        x = self.vocab_embed(tokens)
        c = self.cond(b, sigma)
        rope = self.rope(jnp.arange(n)[None])
        mask = jnp.ones((b, n, n), bool) if attention_mask is None else attention_mask
        for i, (block, k) in enumerate(zip(self.blocks, maybe_split(key, len(self.blocks)),
                                           strict=True)):
            x = block(x, c, rope, mask, k)
            if debug is not None:
                debug[f"block{i}"] = x
        if debug is not None:
            debug["cond"] = c
        return self.output_layer(x, c)
