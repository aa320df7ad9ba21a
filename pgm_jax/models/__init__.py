"""Flax NNX models: the PGM encoder-decoder and the MDLM DiT and autoregressive baselines."""

from __future__ import annotations

from flax import nnx

from pgm_jax.models.ar import AR
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.dit import DiT
from pgm_jax.models.pgm import PGM

__all__ = ["AR", "DiT", "PGM", "ModelConfig", "build_model"]

MODELS = {"pgm": PGM, "mdlm_dit": DiT, "ar": AR}


def build_model(cfg: ModelConfig, seed: int = 0) -> PGM | DiT | AR:
    """Instantiates the model named by `cfg.kind` with the reference initialisation."""
    return MODELS[cfg.kind](cfg, rngs=nnx.Rngs(params=seed))
