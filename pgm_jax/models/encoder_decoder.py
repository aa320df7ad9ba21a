"""The partition encoder-decoder trunk shared by the text and image PGM (the reference's
`models/encoder_decoder.py:PartitionDIT` without its embeddings and head, spec §1): DiT
encoder blocks, GroupSwap, and the cross-attention-only decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import sharding
from pgm_jax.models import embeddings, layers
from pgm_jax.models.attention import Segments, attend
from pgm_jax.models.blocks import CrossAttnBlock, DiTBlock
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.stacking import run_blocks

Array = jax.Array


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
            table = embeddings.sinusoidal_table(self.cfg.length, self.cfg.hidden_size)
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
        q = embeddings.apply_rope(layers.split_heads(q, n_heads), *rope_q)
        k = embeddings.apply_rope(layers.split_heads(k, n_heads), *rope_k)
        a = attend(q, k, layers.split_heads(v, n_heads), mask,
                   (self.cfg.attention, self.cfg.attention_platform))
        return self.output_linear(a)


class Encoder(nnx.Module):
    """The encoder: `blocks`, a list of DiT self-attention blocks."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([DiTBlock(cfg, rngs=rngs) for _ in range(cfg.encoder_blocks)])


class Decoder(nnx.Module):
    """The decoder: `group_swap`, then `layers`, a list of cross-attention blocks."""

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
    keys = layers.maybe_split(key, n_enc + len(model.decoder.layers))
    h = run_blocks(model.encoder.blocks, sharding.constrain(h, layers.RESIDUAL), keys[:n_enc],
                   lambda block, x, k: block(x, c, rope_k, self_mask, k), model.cfg, debug,
                   "enc_block")
    stats = stats_fn(h) if stats_fn is not None else None
    y = model.decoder.group_swap(h, q_positions, rope_q, rope_k, cross_mask, stats)
    y = sharding.constrain(y, layers.RESIDUAL)
    if debug is not None:
        debug.update(cond=c, enc_out=h, groupswap=y,
                     gs_queries=model.decoder.group_swap.queries(q_positions, stats))
    y = run_blocks(model.decoder.layers, y, keys[n_enc:],
                   lambda block, x, k: block(x, h, c, rope_q, rope_k, cross_mask, k),
                   model.cfg, debug, "dec_block")
    if debug is not None:
        debug["dec_out"] = y
    return y
