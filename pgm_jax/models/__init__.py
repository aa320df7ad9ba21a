"""Flax NNX models: the PGM encoder-decoder and the MDLM DiT baseline."""

from __future__ import annotations

from flax import nnx

from pgm_jax.models.config import ModelConfig
from pgm_jax.models.dit import DiT
from pgm_jax.models.pgm import PGM

__all__ = ["DiT", "PGM", "ModelConfig", "build_model"]


def build_model(cfg: ModelConfig, seed: int = 0) -> PGM | DiT:
    """Instantiates the model named by `cfg.kind` with the reference initialisation."""
    rngs = nnx.Rngs(params=seed)
    return PGM(cfg, rngs=rngs) if cfg.kind == "pgm" else DiT(cfg, rngs=rngs)
