"""Interoperability with PyTorch artifacts (torch is never imported)."""

from pgm_jax.interop.torch_ckpt import CheckpointFormatError, UnknownObject, load_torch_checkpoint

__all__ = ["CheckpointFormatError", "UnknownObject", "load_torch_checkpoint"]
