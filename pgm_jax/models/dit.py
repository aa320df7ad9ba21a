"""The MDLM DiT baseline: a bidirectional adaLN transformer over the full (masked) sequence.

Reference: `models/dit.py:DIT` (spec §1.13). Its blocks, embedding and head are the shared ones
(`blocks.DiTBlock`, `backbone.TextBackbone`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import sharding
from pgm_jax.models import layers
from pgm_jax.models.attention import Segments
from pgm_jax.models.backbone import TextBackbone
from pgm_jax.models.blocks import DiTBlock
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.stacking import run_blocks

Array = jax.Array


class DiT(TextBackbone):
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
        attention_mask: Segments | None = None,
        targets: Array | None = None,
        debug: dict | None = None,
    ) -> Array:
        """tokens: int32 [batch, L] (MASK where noised) -> logits [batch, L, V].

        `key` enables dropout (training); `attention_mask` (`Segments`, O(L) ids) restricts
        attention, e.g. to packed segments; default full attention. With `targets` (int
        [batch, L]) returns their log-probabilities float32 [batch, L] instead (`head`).
        """
        b, n = tokens.shape
        x = sharding.constrain(self.vocab_embed(tokens), layers.RESIDUAL)
        c = self.cond(b, sigma)
        rope = self.rope(jnp.arange(n)[None])
        mask = Segments() if attention_mask is None else attention_mask
        x = run_blocks(self.blocks, x, layers.maybe_split(key, len(self.blocks)),
                       lambda block, h, k: block(h, c, rope, mask, k), self.cfg, debug)
        if debug is not None:
            debug["cond"] = c
        return self.head(x, c, targets)
