"""Reading the reference's weight files: Lightning `.ckpt` checkpoints and `.npz` state dicts.

A released (or fixture) Lightning checkpoint holds (spec §7.1):

* `state_dict`: the raw training weights, keys prefixed `backbone.`, plus the persistent
  buffer `backbone.rotary_emb.inv_freq`;
* `ema`: `{'decay', 'num_updates', 'shadow_params': [array, ...]}`, the EMA weights as an
  *unnamed* list in `backbone.parameters()` order, which is the state-dict key order without
  the buffers;
* Lightning bookkeeping (`global_step`, ...) and `hyper_parameters`, which in released files
  pickles an OmegaConf config and a Hugging Face tokenizer: those are read as inert
  placeholders (`allow_unknown=True`) and never used. torch is not needed.

An `.npz` file holds one set of weights keyed by state-dict name (with or without `backbone.`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pgm_jax.interop.state_dict import BUFFERS
from pgm_jax.interop.torch_ckpt import CheckpointFormatError, load_torch_checkpoint

PREFIX = "backbone."
WEIGHTS = ("raw", "ema")


@dataclasses.dataclass(frozen=True)
class ReferenceWeights:
    """The weights of one reference file, keyed by state-dict name without `backbone.`.

    raw: the training weights (buffers included); ema: the EMA weights by name (buffers copied
    from raw), None when the file has none; step: Lightning's `global_step` (0 when the file
    does not say); lightning: the file is a Lightning checkpoint (not one bare set of weights:
    an `.npz` or a pickled state dict).
    """

    raw: dict[str, np.ndarray]
    ema: dict[str, np.ndarray] | None
    step: int
    lightning: bool


def _strip(state: Mapping[str, object], source: str) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointFormatError(
                f"{source}: state-dict entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key[len(PREFIX):] if key.startswith(PREFIX) else key] = value
    return out


def _name_ema(raw: dict[str, np.ndarray], ema: object, source: str) -> dict[str, np.ndarray]:
    """Names the EMA shadow list by parameter order (state-dict order minus buffers)."""
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, list):
        raise CheckpointFormatError(f"{source}: 'ema' has no 'shadow_params' list")
    names = [k for k in raw if k not in BUFFERS]
    if len(shadow) != len(names):
        raise CheckpointFormatError(
            f"{source}: ema.shadow_params has {len(shadow)} tensors but state_dict has "
            f"{len(names)} parameters: the EMA does not belong to these weights")
    named = {}
    for i, (name, value) in enumerate(zip(names, shadow, strict=True)):
        if not isinstance(value, np.ndarray) or value.shape != raw[name].shape:
            got = getattr(value, "shape", type(value).__name__)
            raise CheckpointFormatError(
                f"{source}: ema.shadow_params[{i}] is {got} but parameter {name} is "
                f"{raw[name].shape}: the EMA list is not in parameter order")
        named[name] = value
    return {**named, **{k: raw[k] for k in raw if k in BUFFERS}}


def read_reference_weights(path: str | os.PathLike[str]) -> ReferenceWeights:
    """Reads a Lightning `.ckpt` (or any torch.save file), a plain state dict, or an `.npz`."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise CheckpointFormatError(f"{source}: no such file (expected a .ckpt or .npz)")
    if Path(source).suffix == ".npz":
        try:
            with np.load(source) as z:
                return ReferenceWeights(_strip({k: z[k] for k in z.files}, source), None, 0,
                                        False)
        except (OSError, ValueError) as e:
            raise CheckpointFormatError(f"{source}: not a readable .npz ({e})") from e
    obj = load_torch_checkpoint(source, allow_unknown=True)
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    if "state_dict" not in obj:  # a bare `torch.save(model.state_dict())`
        return ReferenceWeights(_strip(obj, source), None, 0, False)
    raw = _strip(obj["state_dict"], source)
    ema = _name_ema(raw, obj["ema"], source) if obj.get("ema") is not None else None
    return ReferenceWeights(raw, ema, int(obj.get("global_step", 0)), True)


def read_reference_checkpoint(path: str | os.PathLike[str], weights: str = "raw"
                              ) -> dict[str, np.ndarray]:
    """The `weights` ('raw' or 'ema') of a reference file, keyed by state-dict name."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: must be one of {WEIGHTS}")
    w = read_reference_weights(path)
    if weights == "raw":
        return w.raw
    if w.ema is None:
        raise CheckpointFormatError(
            f"{os.fspath(path)} holds no EMA weights ('ema.shadow_params'): use --weights=raw")
    return w.ema
