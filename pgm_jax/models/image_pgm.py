"""The class-conditional image PGM (`models/encoder_decoder.py:PartitionDIT`, spec
pgm_image.md §2.1).

The text PGM's modules carry over unchanged (the shared `encoder_decoder` trunk: adaLN DiT
encoder blocks, GroupSwap, the cross-attention-only decoder; the `backbone`'s adaLN head and
RoPE; scale-only LayerNorms); what differs is around them:

* conditioning: c = class embedding of the (possibly dropped) label, fed to every adaLN
  linear directly (no SiLU, no MLP, no time), so the adaLN input width is H;
* two learned registers in front of the sequence. Training slots are
  [reg_tokens[0] (group 1), reg_tokens[1] (group 0), BOS (group 0), image token k at slot k+3]
  and the slot index is the RoPE / GroupSwap position, so no attention row is ever empty;
* inference packs only the clean tokens: [reg_tokens[1], BOS, clean...] at positions
  [1, 2, p+2, ...], and only the queried positions go through GroupSwap and the decoder.

Sequence positions outside this module follow the samplers' convention: BOS 0, image token
k at k + 1 (the register offset is internal).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax.models.attention import Segments
from pgm_jax.models.backbone import Backbone
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.embeddings import ClassEmbedding, Embedding, Table
from pgm_jax.models.encoder_decoder import Decoder, Encoder, encode_decode
from pgm_jax.models.heads import FinalLayer

Array = jax.Array
NUM_REGISTERS = 2
# Training slot of sequence position 0 (BOS): the registers take slots 0 and 1.
OFFSET = NUM_REGISTERS


def block_config(cfg: ModelConfig) -> ModelConfig:
    """The config the shared PGM modules are built from: adaLN reads the class embedding
    (width H), and position tables cover the registers and BOS (N + 3 slots)."""
    return dataclasses.replace(cfg, cond_dim=cfg.hidden_size,
                               length=cfg.length + 1 + NUM_REGISTERS)


class ImagePGM(Backbone):
    """PartitionDIT: class-conditional PGM over BOS + N image tokens."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        inner = block_config(cfg)
        self.cfg = cfg
        self.inner = inner
        self.vocab_embed = Embedding(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.cls_embed = ClassEmbedding(cfg.num_classes, cfg.hidden_size, rngs=rngs)
        self.reg_tokens = Table(NUM_REGISTERS, cfg.hidden_size, rngs=rngs, std=0.02)
        self.encoder = Encoder(inner, rngs=rngs)
        self.decoder = Decoder(inner, rngs=rngs)
        self.output_layer = FinalLayer(inner, rngs=rngs)

    @property
    def bos_id(self) -> int:
        return self.cfg.image_bos_id

    @property
    def rope_length(self) -> int:
        """RoPE is indexed by slot (registers, BOS, image tokens)."""
        return self.inner.length

    def _trunk(self, h: Array, k_slots: Array, q_slots: Array, self_mask: Segments,
               cross_mask: Segments, c: Array, key: Array | None, debug: dict | None) -> Array:
        """The text PGM's encoder-decoder body at register-shifted slots (no GroupSwap
        statistics). h: [B, nk, H] at k_slots [B|1, nk]; q_slots [B|1, nq] -> [B, nq, H]."""
        return encode_decode(self, h, self.rope(k_slots), q_slots, self.rope(q_slots),
                             self_mask, cross_mask, c, None, key, debug)

    def _head(self, y: Array, c: Array, targets: Array | None) -> Array:
        """The shared head; logits in float32 (log-probabilities already are)."""
        return self.head(y, c, targets).astype(jnp.float32)

    def __call__(
        self,
        x: Array,
        groups: Array,
        labels: Array,
        drop_label: Array,
        *,
        key: Array | None = None,
        targets: Array | None = None,
        debug: dict | None = None,
    ) -> Array:
        """Training forward: each group is predicted from the other.

        x: int32 [B, N+1] (BOS then the clean codes); groups: int [B, N+1] in {0, 1} (BOS in
        group 0); labels: int32 [B]; drop_label: bool [B]; key: dropout key or None (eval).
        Returns logits float32 [B, N+1, V], or with `targets` (int [B, N+1]) their
        log-probabilities float32 [B, N+1] with the mask column excluded (the reference sets
        it to -1e6 before the cross-entropy), computed `cfg.logits_chunk` rows at a time.
        """
        b, n = x.shape
        g = groups.astype(bool)
        # Slot groups [1, 0, groups]: register 0 keeps group 1 non-empty, register 1 group 0.
        g_keys = jnp.concatenate([jnp.ones((b, 1), bool), jnp.zeros((b, 1), bool), g], axis=1)
        self_mask = Segments.groups(g_keys)
        # The registers' own predictions are dropped by the reference; the decoder never
        # self-attends, so skipping their queries changes nothing else.
        cross_mask = Segments.groups(g, cross=True, key_groups=g_keys)
        regs = jnp.broadcast_to(self.reg_tokens.embedding[...][None], (b, NUM_REGISTERS,
                                                                       self.cfg.hidden_size))
        h = jnp.concatenate([regs, self.vocab_embed(x)], axis=1)
        k_slots = jnp.arange(n + OFFSET)[None]
        c = self.cls_embed(labels, drop_label)
        y = self._trunk(h, k_slots, k_slots[:, OFFSET:], self_mask, cross_mask, c, key, debug)
        return self._head(y, c, targets)

    def infer(
        self,
        x: Array,
        clean_positions: Array,
        clean_valid: Array,
        query_positions: Array,
        labels: Array,
        drop_label: Array,
        *,
        release_quirk: bool | Array = False,
        debug: dict | None = None,
    ) -> Array:
        """Packed inference forward (the samplers' path, spec §4.3).

        x: int32 [B, n] = BOS then the clean tokens in reveal order; clean_positions: int32
        [B, n] their sequence positions (BOS 0, image token k at k + 1); clean_valid: bool
        [B, n] (False = padding key); query_positions: int32 [B, q] positions to predict;
        labels: int32 [B]; drop_label: bool [B]. Returns logits float32 [B, q, V].

        Only the group-0 register is prepended (slot 1). With correct masking (default) the
        result equals the training forward with group 0 = {BOS} + the clean tokens, read at
        the query positions. `release_quirk=True` hides the last valid clean key from every
        query (encoder, GroupSwap and decoder), as the released code does (spec §4.5).
        """
        b, n = x.shape
        valid = clean_valid.astype(bool)
        if release_quirk is not False:  # a Python True or a traced bool (one compiled program)
            last = (n - 1) - jnp.argmax(valid[:, ::-1], axis=1)  # last valid index [B]
            valid = valid & ~(jnp.asarray(release_quirk) & (jnp.arange(n)[None] == last[:, None]))
        visible = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)  # [B, n+1]
        self_mask = cross_mask = Segments.key_valid(visible)  # key padding
        reg0 = jnp.broadcast_to(self.reg_tokens.embedding[...][1][None, None],
                                (b, 1, self.cfg.hidden_size))
        h = jnp.concatenate([reg0, self.vocab_embed(x)], axis=1)
        k_slots = jnp.concatenate([jnp.ones((b, 1), clean_positions.dtype),
                                   clean_positions + OFFSET], axis=1)
        c = self.cls_embed(labels, drop_label)
        y = self._trunk(h, k_slots, query_positions + OFFSET, self_mask, cross_mask, c, None,
                        debug)
        return self._head(y, c, None)
