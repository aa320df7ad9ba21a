"""Running a stack of blocks: in a Python loop, under `jax.checkpoint` (remat) or one
`lax.scan`, with the residual stream constrained between blocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax import sharding
from pgm_jax.models import layers
from pgm_jax.models.config import ModelConfig

Array = jax.Array

# config.model.remat -> what a block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # only the block input
    "dots": jax.checkpoint_policies.dots_saveable,  # every matmul output
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight matmuls
}


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
    Every block's output is constrained to `layers.RESIDUAL` (batch split, features whole).
    """
    if debug is not None or (cfg.remat == "none" and not cfg.scan_layers):
        for i, (block, key) in enumerate(zip(blocks, keys, strict=True)):
            x = sharding.constrain(apply(block, x, key), layers.RESIDUAL)
            if debug is not None:
                debug[f"{name}{i}"] = x
        return x
    graphdef = nnx.graphdef(blocks[0])
    states = [nnx.state(block) for block in blocks]

    def body(x: Array, state, key: Array | None) -> Array:
        return sharding.constrain(apply(nnx.merge(graphdef, state), x, key), layers.RESIDUAL)

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
