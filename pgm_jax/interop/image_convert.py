"""Released image checkpoints (HF `jdeschena/pgm`: `images_pgm_*_100epochs.ckpt`,
`maskgit_100epochs.ckpt`) -> Flax parameters of `ImagePGM` / `MaskGIT` (spec pgm_image.md §6).

A release file is a `torch.save` dict whose `model_state_dict` holds the weights (no `module.`
or `_orig_mod.` prefixes, but both are stripped if present); an `.npz` state dict works too.
The image PGM's names map onto our modules like the text PGM's (`interop/state_dict.py`).
MaskGIT needs two edits first: `Sequential(SiLU, Linear)` adaLN layers are `mlp.1` in torch
and `mlp.linear` here, `cls_emb` is our `cls_emb.embedding_table`, and the head's tied weight
(stored twice in the release) is dropped after checking that it equals `tok_emb.weight`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from pgm_jax.interop.state_dict import StateDictMismatch, load_state_dict, state_dict_to_params
from pgm_jax.interop.torch_ckpt import CheckpointFormatError, load_torch_checkpoint
from pgm_jax.models import ModelConfig, build_model

PREFIXES = ("module.", "_orig_mod.")


def read_image_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """{torch name: array} from a release-layout `.ckpt`/`.pth` (its `model_state_dict`) or an
    `.npz` state dict."""
    source = os.fspath(path)
    if source.endswith(".npz"):
        try:
            with np.load(source) as npz:
                state = dict(npz)
        except (OSError, ValueError) as e:
            raise CheckpointFormatError(f"{source}: cannot read the npz state dict ({e})") from e
    else:
        obj = load_torch_checkpoint(source, allow_unknown=True)
        if not isinstance(obj, Mapping) or not isinstance(obj.get("model_state_dict"), Mapping):
            keys = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointFormatError(
                f"{source}: not a released image checkpoint (expected a dict with "
                f"'model_state_dict', found {keys})")
        state = {k: np.asarray(v) for k, v in obj["model_state_dict"].items()}
    return {_strip(k): v for k, v in state.items()}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def to_model_names(state: Mapping[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """The reference's names -> the names `load_state_dict` maps onto our `kind` model."""
    if kind == "image_pgm":
        return dict(state)
    if kind != "maskgit":
        raise ValueError(f"kind={kind!r}: not an image model ('image_pgm' or 'maskgit')")
    out = {}
    for key, value in state.items():
        if key == "head.weight":
            tok = state.get("tok_emb.weight")
            if tok is None or tok.shape != value.shape or not np.array_equal(tok, value):
                raise StateDictMismatch(
                    "head.weight differs from tok_emb.weight: the MaskGIT head must be tied")
            continue
        key = re.sub(r"(^|\.)mlp\.1\.", r"\1mlp.linear.", key)
        out[re.sub(r"^cls_emb\.weight$", "cls_emb.embedding_table.weight", key)] = value
    return out


def load_image_weights(model: nnx.Module, path: str | os.PathLike[str]) -> None:
    """Loads a release checkpoint / npz state dict into `model` (ImagePGM or MaskGIT) in place.
    Raises StateDictMismatch naming missing, unexpected and mis-shaped keys."""
    load_state_dict(model, to_model_names(read_image_state_dict(path), model.cfg.kind))


def image_params_from_checkpoint(path: str | os.PathLike[str], cfg: ModelConfig) -> dict:
    """The pure parameter dict (`nnx.to_pure_dict(nnx.state(model, nnx.Param))` layout) of
    `build_model(cfg)` from a released image checkpoint; no model is initialised."""
    abstract = nnx.eval_shape(lambda: build_model(cfg))
    return state_dict_to_params(abstract, to_model_names(read_image_state_dict(path), cfg.kind))
