"""adaLN DiT blocks (PGM encoder, MDLM baseline) and the MDLM DiT backbone.

Reference: `models/dit.py:DIT` and `models/encoder_decoder.py:DDiTBlock` (spec §1.6, §1.13).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import sharding
from pgm_jax.models import heads, layers
from pgm_jax.models.attention import Segments, attend
from pgm_jax.models.config import ModelConfig

Array = jax.Array

# config.model.remat -> what a block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # only the block input
    "dots": jax.checkpoint_policies.dots_saveable,  # every matmul output
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight matmuls
}
ACTIVATION_AXES = ("batch", None, None)  # residual stream [batch, n, H]: FSDP gathers weights


def maybe_split(key: Array | None, n: int) -> list[Array | None]:
    """n independent dropout keys, or n Nones in evaluation."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def run_blocks(
    blocks: Sequence[nnx.Module],
    x: Array,
    keys: Sequence[Array | None],
    apply: Callable[[nnx.Module, Array, Array | None], Array],
    cfg: ModelConfig,
    debug: dict | None = None,
    name: str = "block",
) -> Array:
    """x [batch, n, H] -> apply(block_i, x, keys[i]) for every block in order.

    `apply` closes over what the blocks share (conditioning, RoPE tables, masks).
    `cfg.remat` wraps each block in `jax.checkpoint` with the named policy, so the backward
    pass recomputes the block's activations instead of keeping them. `cfg.scan_layers` runs
    one `lax.scan` over the blocks' parameters stacked along a new leading axis, so the block
    is traced and compiled once instead of once per layer. The parameter tree itself never
    changes (the blocks stay a list; stacking happens inside the traced step and its gradient
    unstacks), so checkpoints and state-dict conversion do not depend on these switches.
    `debug` records every block's output under `{name}{i}` and uses the plain loop.
    """
    if debug is not None or (cfg.remat == "none" and not cfg.scan_layers):
        for i, (block, key) in enumerate(zip(blocks, keys, strict=True)):
            x = sharding.constrain(apply(block, x, key), ACTIVATION_AXES)
            if debug is not None:
                debug[f"{name}{i}"] = x
        return x
    graphdef = nnx.graphdef(blocks[0])
    states = [nnx.state(block) for block in blocks]

    def body(x: Array, state, key: Array | None) -> Array:
        return sharding.constrain(apply(nnx.merge(graphdef, state), x, key), ACTIVATION_AXES)

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat])
    if not cfg.scan_layers:
        for state, key in zip(states, keys, strict=True):
            x = body(x, state, key)
        return x
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    stacked_keys = None if keys[0] is None else jnp.stack(keys)
    # The scan carry needs one dtype: the residual stream is float32 after any block, and the
    # first block's output is the same for a bf16 input (GroupSwap's) upcast beforehand.
    x = x.astype(jnp.float32)
    x, _ = jax.lax.scan(lambda h, xs: (body(h, *xs), None), x, (stacked, stacked_keys))
    return x


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
        self.attn_kernel = (cfg.attention, cfg.attention_platform)
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
        self, x: Array, c: Array, rope: tuple[Array, Array], mask: Segments, key: Array | None
    ) -> Array:
        """x: float32 [batch, n, H]; c: [batch, C]; rope: cos/sin [batch|1, n, d/2];
        mask: who sees whom (O(L) ids). Returns float32 [batch, n, H]."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaln_chunks(
            self.adaLN_modulation, c, 6
        )
        k_attn, k_mlp = maybe_split(key, 2)
        h = layers.modulate(self.norm1(x), shift_msa, scale_msa)
        q, k, v = jnp.split(self.attn_qkv(h), 3, axis=-1)
        q = layers.apply_rope(layers.split_heads(q, self.n_heads), *rope)
        k = layers.apply_rope(layers.split_heads(k, self.n_heads), *rope)
        a = attend(q, k, layers.split_heads(v, self.n_heads), mask, self.attn_kernel)
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
        logits = self.linear(layers.modulate(self.norm_final(y), shift, scale))
        return sharding.constrain(logits, ("batch", None, "vocab"))


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

    def head(self, y: Array, c: Array, targets: Array | None) -> Array:
        """The output layer: logits [batch, n, V], or with `targets` (int [batch, n]) their
        log-probabilities float32 [batch, n] under PGM post-processing (MASK excluded),
        computed `cfg.logits_chunk` positions at a time so the full logits never exist."""
        if targets is None:
            return self.output_layer(y, c)
        return heads.chunked_target_logprob(
            lambda h: self.output_layer(h, c), y, targets, self.cfg.mask_index,
            self.cfg.logits_chunk)

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
        x = sharding.constrain(self.vocab_embed(tokens), ACTIVATION_AXES)
        c = self.cond(b, sigma)
        rope = self.rope(jnp.arange(n)[None])
        mask = Segments() if attention_mask is None else attention_mask
        x = run_blocks(self.blocks, x, maybe_split(key, len(self.blocks)),
                       lambda block, h, k: block(h, c, rope, mask, k), self.cfg, debug)
        if debug is not None:
            debug["cond"] = c
        return self.head(x, c, targets)
