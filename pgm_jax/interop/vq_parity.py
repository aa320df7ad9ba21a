"""Parity of the JAX VQ tokenizer against a LlamaGen `VQModel` fixture (the `vq_small` layout).

A fixture family of `pgm_jax.interop.parity` (see its FAMILIES): `detect` recognises the
fixture by its `hparams.json` content, `check` loads the weights through the converter
(`state_dict.npz`, or `checkpoint.pt`'s "model" read without torch) and compares every output
of `io.npz` it can recompute: codes exactly; latents and the codebook at atol 5e-5; images at
atol 1e-4 (IMAGE_README §4). `io.npz` is NCHW; the model runs NHWC and is transposed back.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgm_jax.interop.parity import Row
from pgm_jax.interop.vq_convert import read_vq_state_dict, vq_from_state_dict
from pgm_jax.models.vq import VQConfig, VQModel

ATOL_LATENT = 5e-5
ATOL_IMAGE = 1e-4
WEIGHT_FILES = {"npz": "state_dict.npz", "ckpt": "checkpoint.pt"}
TOLERANCES = {"enc_features": ATOL_LATENT, "enc_latent": ATOL_LATENT, "quant": ATOL_LATENT,
              "normalized_codebook": ATOL_LATENT, "recon": ATOL_IMAGE, "decoded": ATOL_IMAGE}


def detect(hparams: Mapping[str, Any]) -> bool:
    """True for a LlamaGen VQ fixture: its "model" field names `VQModel`."""
    return str(hparams.get("model", "")).split(" ")[0] == "VQModel"


@functools.partial(jax.jit, static_argnames="graphdef")
def _outputs(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, codes_in: jax.Array
             ) -> dict[str, jax.Array]:
    """Every fixture output from NHWC `images` [B, H, W, 3] and `codes_in` [B, h, w]."""
    model: VQModel = nnx.merge(graphdef, state)
    debug: dict = {}
    codes, quant = model.encode(images, debug=debug)
    return {**debug, "codes": codes, "quant": quant, "recon": model.decode(quant),
            "decoded": model.decode_codes(codes_in),
            "normalized_codebook": model.quantize.codebook()}


def outputs(model: VQModel, io: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's values of the fixture outputs, in the fixture's NCHW layout."""
    images = jnp.asarray(np.transpose(io["images"], (0, 2, 3, 1)))
    codes_in = jnp.asarray(io["codes_in"] if "codes_in" in io else io["codes"])
    out = jax.device_get(_outputs(*nnx.split(model), images, codes_in))
    return {k: v.transpose(0, 3, 1, 2) if v.ndim == 4 else v for k, v in out.items()}


def compare(name: str, ours: np.ndarray, ref: np.ndarray) -> Row:
    """Codes (integer arrays): number of mismatches, 0 allowed; floats: max |diff| <= atol."""
    if ours.shape != ref.shape:
        return Row(name, float("inf"), 0.0, f"shape {ours.shape} vs {ref.shape}")
    if ref.dtype.kind in "iu":
        return Row(name, float(np.sum(ours != ref)), 0.0, "mismatches")
    err = float(np.max(np.abs(ours.astype(np.float64) - ref))) if ref.size else 0.0
    return Row(name, err, TOLERANCES.get(name, ATOL_LATENT), "abs")


def check(fixture: str | Path, weight_source: str) -> list[Row]:
    """One Row per output of `fixture/io.npz`; [] when the fixture has no such weight file."""
    fixture = Path(fixture)
    weights = fixture / WEIGHT_FILES[weight_source]
    if not weights.exists():
        return []
    cfg = VQConfig.from_hparams(json.loads((fixture / "hparams.json").read_text()))
    model = vq_from_state_dict(read_vq_state_dict(weights), cfg)
    with np.load(fixture / "io.npz") as z:
        io = {k: z[k] for k in z.files}
    ours = outputs(model, io)
    return [compare(name, ours[name], io[name]) for name in ours if name in io]
