"""The PGM encoder-decoder (`models/encoder_decoder.py:PartitionDIT`, spec §1).

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

from pgm_jax import sharding
from pgm_jax.models import layers
from pgm_jax.models.attention import Segments, attend
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.dit import (
    ACTIVATION_AXES,
    Backbone,
    DiTBlock,
    adaln,
    adaln_chunks,
    maybe_split,
    run_blocks,
)

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


class GroupSwap(nnx.Module):
    """Cross-attention from data-independent position queries to the other group.

    No residual, no adaLN, no MLP, no dropout. Keys/values come from the raw (un-normalised)
    final encoder output.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h, dt = cfg.hidden_size, cfg.compute_dtype
        self.cfg = cfg
        self.base_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (1, h), jnp.float32), logical_axes=(None, "embed")
        )
        self.pre_query_norm = layers.LayerNorm(h, use_bias=True)
        if cfg.swap_query_process_mode == "linear":
            self.query_processor = layers.Linear(h, h, rngs=rngs, axes=("embed", "heads"),
                                                 dtype=dt)
        else:  # mlp4
            self.query_processor = layers.Mlp(h, 4 * h, h, rngs=rngs, activation="silu", dtype=dt)
        self.hidden_to_key_value = layers.Linear(h, 2 * h, rngs=rngs, axes=("embed", "heads"),
                                                 dtype=dt)
        self.output_linear = layers.Linear(h, h, rngs=rngs, axes=("heads", "embed"), dtype=dt)

    def queries(self, positions: Array, stats: Array | None) -> Array:
        """Processed queries before RoPE.

        positions: int [batch|1, nq]; stats: pooled other-group summary [batch, nq, H] for the
        `+mean` / `+logsumexp` modes, else None. Returns [batch|1, nq, H].
        """
        mode = self.cfg.swap_pre_query_mode
        shape = (*positions.shape, self.cfg.hidden_size)
        q0 = jnp.broadcast_to(self.base_embedding[...][None], shape)
        if "freqs" in mode:
            table = layers.sinusoidal_table(self.cfg.length, self.cfg.hidden_size)
            q0 = q0 + jnp.asarray(table)[positions]
        if stats is not None:
            q0 = q0 + stats
        return self.query_processor(self.pre_query_norm(q0))

    def __call__(
        self, h_enc: Array, q_positions: Array, rope_q, rope_k, mask: Segments,
        stats: Array | None
    ) -> Array:
        """h_enc: [batch, nk, H]; mask: query -> key ids (O(L)) -> [batch, nq, H]."""
        n_heads = self.cfg.n_heads
        q = self.queries(q_positions, stats)
        q = jnp.broadcast_to(q, (h_enc.shape[0], *q.shape[1:]))
        k, v = jnp.split(self.hidden_to_key_value(h_enc), 2, axis=-1)
        q = layers.apply_rope(layers.split_heads(q, n_heads), *rope_q)
        k = layers.apply_rope(layers.split_heads(k, n_heads), *rope_k)
        a = attend(q, k, layers.split_heads(v, n_heads), mask,
                   (self.cfg.attention, self.cfg.attention_platform))
        return self.output_linear(a)


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
        self.mlp = layers.Mlp(h, cfg.mlp_ratio * h, h, rngs=rngs, dtype=dt)
        self.adaLN_modulation = adaln(cfg, 6, rngs=rngs)

    def __call__(self, y, h_enc, c, rope_q, rope_k, mask, key) -> Array:
        """y: [batch, nq, H] query stream; h_enc: [batch, nk, H]; mask: `Segments`."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaln_chunks(
            self.adaLN_modulation, c, 6
        )
        k_attn, k_mlp = maybe_split(key, 2)
        hq = layers.modulate(self.q_norm1(y), shift_msa, scale_msa)
        k, v = jnp.split(self.attn_kv(self.kv_norm1(h_enc)), 2, axis=-1)
        q = layers.apply_rope(layers.split_heads(self.attn_q(hq), self.n_heads), *rope_q)
        k = layers.apply_rope(layers.split_heads(k, self.n_heads), *rope_k)
        a = attend(q, k, layers.split_heads(v, self.n_heads), mask, self.attn_kernel)
        y = y + gate_msa * layers.dropout(self.attn_out(a), self.dropout, k_attn)
        h = layers.modulate(self.norm2(y), shift_mlp, scale_mlp)
        return y + gate_mlp * layers.dropout(self.mlp(h), self.dropout, k_mlp)


class Encoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([DiTBlock(cfg, rngs=rngs) for _ in range(cfg.encoder_blocks)])


class Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.group_swap = GroupSwap(cfg, rngs=rngs)
        self.layers = nnx.List([CrossAttnBlock(cfg, rngs=rngs) for _ in range(cfg.decoder_blocks)])


def encode_decode(model: nnx.Module, h: Array, rope_k, q_positions: Array, rope_q,
                  self_mask: Segments, cross_mask: Segments, c: Array, stats_fn, key: Array | None,
                  debug: dict | None) -> Array:
    """The encoder over the keys, then GroupSwap and the decoder for the queries.

    `model` holds `encoder`, `decoder` and `cfg` (text PGM, image PGM); h: float32 [batch,
    nk, H] key embeddings; rope_k / rope_q: cos, sin at the key / query positions;
    q_positions: int [batch|1, nq]; masks: `Segments` (O(L) ids); c: adaLN input
    [batch, C]; stats_fn: encoder output -> pooled GroupSwap statistics, or None. Returns the
    decoder output float32 [batch, nq, H].
    """
    n_enc = len(model.encoder.blocks)
    keys = maybe_split(key, n_enc + len(model.decoder.layers))
    h = run_blocks(model.encoder.blocks, sharding.constrain(h, ACTIVATION_AXES), keys[:n_enc],
                   lambda block, x, k: block(x, c, rope_k, self_mask, k), model.cfg, debug,
                   "enc_block")
    stats = stats_fn(h) if stats_fn is not None else None
    y = model.decoder.group_swap(h, q_positions, rope_q, rope_k, cross_mask, stats)
    y = sharding.constrain(y, ACTIVATION_AXES)
    if debug is not None:
        debug.update(cond=c, enc_out=h, groupswap=y,
                     gs_queries=model.decoder.group_swap.queries(q_positions, stats))
    y = run_blocks(model.decoder.layers, y, keys[n_enc:],
                   lambda block, x, k: block(x, h, c, rope_q, rope_k, cross_mask, k),
                   model.cfg, debug, "dec_block")
    if debug is not None:
        debug["dec_out"] = y
    return y


class PGM(Backbone):
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
