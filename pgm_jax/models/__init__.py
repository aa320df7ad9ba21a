"""Flax NNX models: the PGM encoder-decoder and the MDLM DiT and autoregressive baselines, and
the class-conditional image PGM and MaskGIT baseline."""

from __future__ import annotations

from flax import nnx

from pgm_jax.models.ar import AR
from pgm_jax.models.config import ModelConfig
from pgm_jax.models.dit import DiT
from pgm_jax.models.image_pgm import ImagePGM
from pgm_jax.models.maskgit import MaskGIT
from pgm_jax.models.pgm import PGM

__all__ = ["AR", "DiT", "PGM", "ImagePGM", "MaskGIT", "ModelConfig", "build_model"]

MODELS = {"pgm": PGM, "mdlm_dit": DiT, "ar": AR, "image_pgm": ImagePGM, "maskgit": MaskGIT}


def build_model(cfg: ModelConfig, seed: int = 0) -> PGM | DiT | AR | ImagePGM | MaskGIT:
    """Instantiates the model named by `cfg.kind` with the reference initialisation."""
    return MODELS[cfg.kind](cfg, rngs=nnx.Rngs(params=seed))
