"""The text PGM (the reference's `models/encoder_decoder.py:PartitionDIT`, spec §1): the
shared partition encoder-decoder (`pgm_jax.models.encoder_decoder`) over tokens, the text
backbone, and GroupSwap's pooled statistics.

Two entry points share every module:

* `PGM.__call__` — the training/eval forward over the full sequence with a partition
  `groups` in {0, 1}: the encoder attends within each group, GroupSwap and the decoder read
  the *other* group, so one pass predicts group 1 from group 0 and group 0 from group 1.
* `PGM.infer` — the sampler's packed forward: only clean tokens (with their absolute
  positions) go through the encoder, and only the positions being decoded go through the
  decoder. Entries at index >= `concrete_lengths` are padding and have no effect.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax.models.attention import Segments
from pgm_jax.models.backbone import TextBackbone
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.encoder_decoder import Decoder, Encoder, encode_decode

Array = jax.Array


def pooled(h: Array, members: Array, mode: str) -> Array:
    """Mean or per-feature logsumexp of `h` over `members`; 0 for an empty set.

    h: [batch, n, H]; members: bool [batch, n] -> [batch, H] (float32).
    """
    h = h.astype(jnp.float32)
    m = members[:, :, None]
    if mode == "mean":
        count = jnp.sum(members, axis=1)[:, None].astype(jnp.float32)
        return jnp.sum(jnp.where(m, h, 0.0), axis=1) / jnp.maximum(count, 1.0)
    lse = jax.nn.logsumexp(jnp.where(m, h, -jnp.inf), axis=1)
    return jnp.where(jnp.isfinite(lse), lse, 0.0)


class PGM(TextBackbone):
    """Partition Generative Model: encoder, GroupSwap, cross-attention decoder, adaLN head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)

    def _forward(
        self, tokens, positions, q_positions, self_mask, cross_mask, stats_fn, key, targets,
        debug
    ) -> Array:
        """Shared body. tokens/positions: [batch, nk]; q_positions: [batch|1, nq]."""
        c = self.cond(tokens.shape[0], None)
        y = encode_decode(self, self.vocab_embed(tokens), self.rope(positions),
                          q_positions, self.rope(q_positions), self_mask, cross_mask, c,
                          stats_fn if self.stat_mode() else None, key, debug)
        return self.head(y, c, targets)

    def stat_mode(self) -> str | None:
        """'mean' / 'logsumexp' for the data-dependent GroupSwap queries, else None."""
        mode = self.cfg.swap_pre_query_mode
        return mode.rsplit("+", 1)[1] if mode.count("+") == 2 else None

    def __call__(
        self,
        tokens: Array,
        groups: Array,
        *,
        key: Array | None = None,
        segment_ids: Array | None = None,
        targets: Array | None = None,
        debug: dict | None = None,
    ) -> Array:
        """Training-mode forward.

        tokens: int32 [batch, L] clean tokens; groups: int/bool [batch, L] partition.
        `segment_ids` (int [batch, L], optional) keeps packed documents apart. `key` enables
        dropout. Returns logits [batch, L, V] for every position (each group predicted from
        the other), or with `targets` (int [batch, L]) their log-probabilities [batch, L].
        """
        b, n = tokens.shape
        g = groups.astype(bool)
        # Encoder: q = kv = 2*doc + g; GroupSwap / decoder: q = 2*doc + g, kv = 2*doc + 1-g.
        self_mask = Segments.groups(g, segment_ids)
        cross_mask = Segments.groups(g, segment_ids, cross=True)
        positions = jnp.broadcast_to(jnp.arange(n)[None], (b, n))

        def stats_fn(h):
            mode = self.stat_mode()
            s0, s1 = pooled(h, ~g, mode), pooled(h, g, mode)
            return jnp.where(g[:, :, None], s0[:, None, :], s1[:, None, :])

        return self._forward(tokens, positions, positions, self_mask, cross_mask, stats_fn, key,
                             targets, debug)

    def infer(
        self,
        clean_tokens: Array,
        clean_positions: Array,
        noisy_positions: Array,
        concrete_lengths: Array,
        *,
        debug: dict | None = None,
    ) -> Array:
        """Packed inference forward (the sampler's path).

        clean_tokens, clean_positions: int32 [batch, nc] (index >= concrete_lengths is
        padding); noisy_positions: int32 [batch, nq]; concrete_lengths: int32 [batch].
        Returns logits [batch, nq, V].
        """
        nc, nq = clean_tokens.shape[1], noisy_positions.shape[1]
        valid = jnp.arange(nc)[None, :] < concrete_lengths[:, None]  # [batch, nc]
        # Key padding only (every query sees BOS, so no row is empty).
        self_mask = cross_mask = Segments.key_valid(valid)

        def stats_fn(h):
            s = pooled(h, valid, self.stat_mode())
            return jnp.broadcast_to(s[:, None, :], (s.shape[0], nq, s.shape[1]))

        return self._forward(clean_tokens, clean_positions, noisy_positions, self_mask,
                             cross_mask, stats_fn, None, None, debug)
