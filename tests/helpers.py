"""Small shared utilities for tests (tiny models with non-trivial random weights)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from pgm_jax.models import ModelConfig, build_model


def tiny_config(**overrides) -> ModelConfig:
    base = dict(kind="pgm", vocab_size=64, mask_index=63, length=32, hidden_size=32, cond_dim=16,
                n_heads=4, encoder_blocks=2, decoder_blocks=2, n_blocks=2, dropout=0.0)
    base.update(overrides)
    return ModelConfig(**base)


def randomized_model(cfg: ModelConfig, seed: int = 0, scale: float = 0.3):
    """A model whose every parameter is random and non-zero (zero-init adaLN/head made live)."""
    model = build_model(cfg, seed)
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var[...] = jax.numpy.asarray(var[...] + scale * rng.standard_normal(var.shape),
                                     jax.numpy.float32)
    return model
