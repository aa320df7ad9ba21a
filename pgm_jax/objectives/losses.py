"""The table of training / evaluation losses by `config.algo`."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from pgm_jax.objectives import image, text

Array = jax.Array
Batch = dict[str, Array]
# (model, batch, key, train) -> (sum of token NLLs, number of scored tokens), float32 scalars
LossFn = Callable[[nnx.Module, Batch, Array, bool], tuple[Array, Array]]

LOSSES: dict[str, LossFn] = {
    "pgm": text.pgm_loss,
    "mdlm": text.mdlm_loss,
    "complement_mdlm": text.complement_mdlm_loss,
    "ar": text.ar_loss,
    "image_pgm": image.image_pgm_loss,
    "maskgit": image.maskgit_loss,
}
