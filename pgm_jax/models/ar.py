"""Autoregressive baseline: a causal transformer trained by the same trainer.

Reference: `models/dit.py:DIT` with `algo.causal_attention=True` (`configs/algo/ar.yaml`),
built from `DDiTBlockCausal`: the DiT block without adaLN (pre-LN causal self-attention with
RoPE, then MLP, each branch added with dropout), no `sigma_map`, and a final layer without
adaLN. We reuse the shared `DiTBlock` / `FinalLayer` (and the `Backbone`'s RoPE and head)
with their adaLN projections replaced by constants (shift = scale = 0, gate = 1):
`x * (1 + 0) + 0` and `1 * y` are exact in floating point, so the computation is the
reference's and the state-dict names and shapes match it one-to-one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import sharding
from pgm_jax.models import layers
from pgm_jax.models.attention import Segments
from pgm_jax.models.backbone import Backbone
from pgm_jax.models.blocks import DiTBlock
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.embeddings import Embedding
from pgm_jax.models.heads import FinalLayer
from pgm_jax.models.stacking import run_blocks

Array = jax.Array

BLOCK_MODULATION = (0.0, 0.0, 1.0, 0.0, 0.0, 1.0)  # shift, scale, gate (attention, then MLP)
FINAL_MODULATION = (0.0, 0.0)  # shift, scale


class ConstantModulation(nnx.Module):
    """Stands in for an adaLN projection: per-chunk constants, no parameters.

    c: [batch, anything] (only its batch size is read) -> float32 [batch, chunks * H].
    """

    def __init__(self, hidden: int, values: tuple[float, ...]):
        self.hidden = hidden
        self.values = values

    def __call__(self, c: Array) -> Array:
        row = jnp.repeat(jnp.asarray(self.values, jnp.float32), self.hidden)
        return jnp.broadcast_to(row, (c.shape[0], row.shape[0]))


class AR(Backbone):
    """Causal transformer LM: `model(tokens)[:, i]` predicts token i + 1."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vocab_embed = Embedding(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        blocks = []
        for _ in range(cfg.n_blocks):
            block = DiTBlock(cfg, rngs=rngs)
            block.adaLN_modulation = ConstantModulation(cfg.hidden_size, BLOCK_MODULATION)
            blocks.append(block)
        self.blocks = nnx.List(blocks)
        self.output_layer = FinalLayer(cfg, rngs=rngs)
        self.output_layer.adaLN_modulation = ConstantModulation(cfg.hidden_size,
                                                                FINAL_MODULATION)

    def __call__(self, tokens: Array, *, key: Array | None = None,
                 targets: Array | None = None) -> Array:
        """tokens: int32 [batch, n] with n <= length -> logits [batch, n, V].

        Position i sees tokens 0..i only. `key` enables dropout (training). With `targets`
        (int [batch, n], usually the tokens shifted by one) returns their log-probabilities
        float32 [batch, n] (MASK excluded), `cfg.logits_chunk` positions at a time.
        """
        b, n = tokens.shape
        x = sharding.constrain(self.vocab_embed(tokens), layers.RESIDUAL)
        c = jnp.zeros((b, 0), jnp.float32)  # no conditioning: the modulations are constants
        rope = self.rope(jnp.arange(n)[None])
        causal = Segments(causal=True)
        x = run_blocks(self.blocks, x, layers.maybe_split(key, len(self.blocks)),
                       lambda block, h, k: block(h, c, rope, causal, k), self.cfg)
        return self.head(x, c, targets)
