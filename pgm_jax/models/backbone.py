"""What the adaLN transformers share around their blocks: the token embedding, RoPE at
absolute positions, the output head, and (text) the time conditioning.

`Backbone` holds the behaviour; each model creates `vocab_embed` and `output_layer` itself, in
the order that fixes its initial values and parameter names (the image PGM builds its class
embedding and registers between them, the AR model its blocks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax.models import embeddings, heads
from pgm_jax.models.config import ModelConfig

Array = jax.Array


class Backbone(nnx.Module):
    """Base of the DiT, PGM, image PGM and AR models.

    Subclasses set `cfg`, `vocab_embed` (`embeddings.Embedding`) and `output_layer`
    (`heads.FinalLayer`); `rope_length` is the number of positions the RoPE table covers.
    """

    cfg: ModelConfig
    vocab_embed: embeddings.Embedding
    output_layer: heads.FinalLayer

    @property
    def rope_length(self) -> int:
        return self.cfg.length

    def rope(self, positions: Array) -> tuple[Array, Array]:
        """positions: int [batch|1, n] -> cos, sin float32 [batch|1, n, d/2].

        Gathered from a constant float32 table (not a parameter) at absolute positions.
        """
        return embeddings.rope_at(positions, self.rope_length, self.cfg.head_dim,
                                  self.cfg.rope_base)

    def head(self, y: Array, c: Array, targets: Array | None) -> Array:
        """The output layer: logits [batch, n, V], or with `targets` (int [batch, n]) their
        log-probabilities float32 [batch, n] (`heads.logits_or_logprob`)."""
        return heads.logits_or_logprob(self.output_layer, y, c, targets, self.cfg)


class TextBackbone(Backbone):
    """The DiT and text PGM's shared parts: embedding, time conditioning (`sigma_map`), head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vocab_embed = embeddings.Embedding(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.sigma_map = embeddings.TimestepEmbedder(cfg.cond_dim, rngs=rngs,
                                                     dtype=cfg.compute_dtype)
        self.output_layer = heads.FinalLayer(cfg, rngs=rngs)

    def cond(self, batch: int, sigma: Array | None) -> Array:
        """Conditioning vector c [batch, C]; sigma is zeroed unless time conditioning is on."""
        if sigma is None or not self.cfg.time_conditioning:
            sigma = jnp.zeros((batch,), jnp.float32)
        return self.sigma_map(sigma)
