"""The LlamaGen VQ tokenizer's weights: reference state dicts -> `VQModel`, and saved folders.

  python -m pgm_jax.convert vq --checkpoint=vq_ds8_c2i.pt --output=DIR

reads `vq_ds8_c2i.pt` without torch (its `"model"` state dict; a bare state dict or a
`state_dict.npz` works too), infers the architecture from the tensor shapes, checks every key
and shape, and writes DIR/config.json (the VQConfig) and DIR/params.npz (our layout, keys
like `encoder/conv_blocks/3/attn/0/q/kernel`). `load_vq(DIR)` reads it back;
`vq_from_checkpoint` accepts any of the three (a folder, a `.pt`, an `.npz`).

Relayout (spec §6.5): conv `weight` (O, I, kh, kw) -> `kernel` (kh, kw, I, O); GroupNorm
`weight` -> `scale`; `quantize.embedding.weight` -> `quantize.embedding` (rows kept as stored,
normalised at use); the statistics buffer `quantize.codebook_used` is dropped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from pgm_jax.interop.state_dict import StateDictMismatch
from pgm_jax.interop.torch_ckpt import CheckpointFormatError, load_torch_checkpoint
from pgm_jax.models.vq import VQConfig, VQModel, abstract_vq, vq_with_params, with_config

FORMAT = "pgm_jax.vq.v1"
CONFIG_FILE, PARAMS_FILE = "config.json", "params.npz"
BUFFERS = ("quantize.codebook_used",)
CODEBOOK_KEY = "quantize.embedding.weight"
MAX_NAMES = 12

Path = tuple[str | int, ...]


# ----------------------------------------------------------------------------- reading
def read_vq_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The reference VQ state dict of a `.pt` (key "model", or a bare state dict) or `.npz`."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise CheckpointFormatError(f"{source}: no such file (expected vq_ds8_c2i.pt or .npz)")
    if source.endswith(".npz"):
        try:
            with np.load(source) as z:
                state = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise CheckpointFormatError(f"{source}: not a readable .npz ({e})") from e
    else:
        # Released files may carry extra top-level entries (optimizer, args): read them as inert
        # placeholders, use "model" only (PGM does; LlamaGen's demo would prefer "ema").
        obj = load_torch_checkpoint(source, allow_unknown=True)
        if not isinstance(obj, dict):
            raise CheckpointFormatError(f"{source}: holds a {type(obj).__name__}, not a dict")
        if CODEBOOK_KEY not in obj:
            if "model" not in obj:
                raise CheckpointFormatError(
                    f"{source}: no 'model' entry (top-level keys: {sorted(map(str, obj))}); "
                    "expected LlamaGen's {'model': state_dict}")
            obj = obj["model"]
        state = obj
    bad = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if bad or CODEBOOK_KEY not in state:
        raise CheckpointFormatError(
            f"{source}: not a VQ state dict ({'non-tensor entries ' + str(bad[:3]) if bad else ''}"
            f"{'' if CODEBOOK_KEY in state else f'no {CODEBOOK_KEY}'})")
    return state


def infer_config(state: Mapping[str, np.ndarray], **overrides) -> VQConfig:
    """The VQConfig a reference state dict was built with, from its key names and shapes.

    GroupNorm groups / eps and the image size are not in the weights: the defaults (32, 1e-6,
    256) are LlamaGen's, `overrides` replaces any field.
    """
    def count(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"(\d+)\.")
        return 1 + max((int(m.group(1)) for k in state if (m := pat.match(k))), default=-1)

    try:
        ch = int(state["encoder.conv_in.weight"].shape[0])
        levels = count("encoder.conv_blocks.")
        mult = tuple(int(state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0]) // ch
                     for i in range(levels))
        fields = dict(
            ch=ch, ch_mult=mult,
            num_res_blocks_encoder=count("encoder.conv_blocks.0.res."),
            num_res_blocks_decoder=count("decoder.conv_blocks.0.res."),
            z_channels=int(state["encoder.conv_out.weight"].shape[0]),
            codebook_size=int(state[CODEBOOK_KEY].shape[0]),
            codebook_embed_dim=int(state[CODEBOOK_KEY].shape[1]),
            in_channels=int(state["encoder.conv_in.weight"].shape[1]),
            out_channels=int(state["decoder.conv_out.weight"].shape[0]))
    except KeyError as e:
        raise CheckpointFormatError(f"not a LlamaGen VQ state dict: no {e.args[0]!r}") from None
    try:
        return VQConfig.from_hparams({**fields, **overrides})
    except ValueError as e:
        raise CheckpointFormatError(str(e)) from None


# ----------------------------------------------------------------------------- relayout
def _torch_to_path(key: str, ndim: int) -> tuple[Path, bool]:
    """(our param path, whether the value is a conv weight to permute) of a torch key."""
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    if key == CODEBOOK_KEY:
        return ("quantize", "embedding"), False
    if parts[-1] == "weight":
        return tuple(parts[:-1]) + ("kernel" if ndim == 4 else "scale",), ndim == 4
    return tuple(parts), False


def _listing(what: str, names: list[str]) -> str:
    more = f", ... ({len(names) - MAX_NAMES} more)" if len(names) > MAX_NAMES else ""
    return f"{what} {len(names)}: {', '.join(names[:MAX_NAMES])}{more}"


def _flat_params(model: nnx.Module) -> dict[Path, nnx.Variable]:
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def vq_params_from_state_dict(cfg: VQConfig, state: Mapping[str, np.ndarray]
                              ) -> dict[Path, np.ndarray]:
    """{our param path: float32 array} for every parameter of VQModel(cfg).

    Raises StateDictMismatch naming missing, unexpected and mis-shaped keys.
    """
    targets = _flat_params(abstract_vq(cfg))
    found: dict[Path, np.ndarray] = {}
    seen: set[Path] = set()
    extra, bad_shape = [], []
    for key, value in state.items():
        if key in BUFFERS:
            continue
        value = np.asarray(value)
        path, conv = _torch_to_path(key, value.ndim)
        if path not in targets:
            extra.append(key)
            continue
        seen.add(path)
        if conv:
            value = value.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
        if value.shape != tuple(targets[path].shape):
            bad_shape.append(f"{key}: got {value.shape}, model has {tuple(targets[path].shape)}")
            continue
        found[path] = np.asarray(value, np.float32)
    missing = [".".join(map(str, p)) for p in targets if p not in seen]
    if missing or extra or bad_shape:
        parts = [_listing(w, n) for w, n in (("missing", missing), ("unexpected", extra),
                                             ("wrong shape", bad_shape)) if n]
        raise StateDictMismatch("VQ state dict does not fit the model (check the config "
                                "against the checkpoint): " + " | ".join(parts))
    return found


def vq_from_state_dict(state: Mapping[str, np.ndarray], cfg: VQConfig | None = None
                       ) -> VQModel:
    """VQModel from a reference state dict; `cfg` defaults to the one its shapes imply."""
    cfg = infer_config(state) if cfg is None else cfg
    return vq_with_params(cfg, vq_params_from_state_dict(cfg, state))


def vq_from_checkpoint(path: str | os.PathLike[str], cfg: VQConfig | None = None) -> VQModel:
    """The VQ model of a converted folder (`load_vq`), a reference `.pt` or a `.npz`.

    cfg: the architecture to load into (checked key by key; for a folder, only `precision` and
    `image_size` may differ from its config.json); None infers it from the weights.
    """
    if not os.path.exists(path):
        raise CheckpointFormatError(
            f"{os.fspath(path)}: no such VQ file or folder (the reference vq_ds8_c2i.pt, a .npz, "
            "or a folder made by `python -m pgm_jax.convert vq`)")
    if os.path.isdir(path):
        model = load_vq(path)
        try:
            return model if cfg is None else with_config(model, cfg)
        except ValueError as e:
            raise CheckpointFormatError(f"{os.fspath(path)}: {e}") from None
    return vq_from_state_dict(read_vq_state_dict(path), cfg)


# ----------------------------------------------------------------------------- saved folders
def save_vq(model: VQModel, output: str | os.PathLike[str], source: str = "") -> None:
    """Writes OUTPUT/config.json and OUTPUT/params.npz (keys: param paths joined by '/')."""
    os.makedirs(output, exist_ok=True)
    flat = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in _flat_params(model).items()}
    tmp = os.path.join(output, PARAMS_FILE + ".tmp.npz")
    np.savez(tmp, **flat)
    os.replace(tmp, os.path.join(output, PARAMS_FILE))
    config = {"format": FORMAT, "source": source, **model.cfg.to_dict()}
    with open(os.path.join(output, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def load_vq(directory: str | os.PathLike[str]) -> VQModel:
    """The VQ model saved by `save_vq` / `python -m pgm_jax.convert vq` in `directory`."""
    directory = os.fspath(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointFormatError(
            f"{directory}: no {CONFIG_FILE}: convert the VQ weights first with `python -m "
            f"pgm_jax.convert vq --checkpoint=vq_ds8_c2i.pt --output={directory}`")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("format") != FORMAT:
        raise CheckpointFormatError(f"{config_path}: format {config.get('format')!r} is not "
                                    f"{FORMAT!r} (not a converted VQ model)")
    try:
        cfg = VQConfig.from_hparams(config)
    except ValueError as e:
        raise CheckpointFormatError(f"{config_path}: {e}") from None
    targets = _flat_params(abstract_vq(cfg))
    params_path = os.path.join(directory, PARAMS_FILE)
    try:
        with np.load(params_path) as z:
            by_name = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise CheckpointFormatError(f"{params_path}: not readable ({e})") from None
    params, problems = {}, []
    for path, var in targets.items():
        name = "/".join(map(str, path))
        value = by_name.pop(name, None)
        if value is None or value.shape != tuple(var.shape):
            problems.append(f"{name}: {'missing' if value is None else value.shape}")
        else:
            params[path] = value
    problems += [f"{name}: unexpected" for name in by_name]
    if problems:
        raise CheckpointFormatError(
            f"{params_path} does not fit its config.json: " + "; ".join(problems[:MAX_NAMES]))
    return vq_with_params(cfg, params)


def convert_vq_main(checkpoint: str | None, output: str | None) -> None:
    """`python -m pgm_jax.convert vq --checkpoint=vq_ds8_c2i.pt --output=DIR` (module doc)."""
    if not checkpoint or not output:
        raise CheckpointFormatError(
            "convert vq needs --checkpoint=vq_ds8_c2i.pt (or a state-dict .npz) and --output=DIR")
    model = vq_from_checkpoint(checkpoint)
    save_vq(model, output, source=os.path.abspath(checkpoint))
    n = sum(int(np.prod(v.shape)) for v in _flat_params(model).values())
    cfg = model.cfg
    print(f"wrote {output}: VQ model, {n / 1e6:.2f}M parameters, ch {cfg.ch} x "
          f"{list(cfg.ch_mult)}, codebook {cfg.codebook_size} x {cfg.codebook_embed_dim}, "
          f"downsample {cfg.downsample_factor}; use it as --vq={output}")
