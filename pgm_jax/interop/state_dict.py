"""Map reference PyTorch state dicts (numpy arrays keyed by torch names) onto our NNX params.

The module tree mirrors the reference names, so the mapping is mechanical (spec §7.3):
`mlp.0`/`mlp.2` -> `mlp.fc_in`/`mlp.fc_out`, Linear `weight` -> `kernel` (transposed),
LayerNorm `weight` -> `scale`. The buffer `rotary_emb.inv_freq` is checked, not loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from pgm_jax.models import layers

Path = tuple[str | int, ...]
BUFFERS = ("rotary_emb.inv_freq",)


class StateDictMismatch(ValueError):
    """Raised when a state dict does not fit the model; the message names every key."""


def _torch_to_path(key: str) -> Path:
    key = re.sub(r"(mlp|query_processor)\.0\.", r"\1.fc_in.", key)
    key = re.sub(r"(mlp|query_processor)\.2\.", r"\1.fc_out.", key)
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def param_paths(model: nnx.Module) -> dict[Path, nnx.Variable]:
    """Every parameter of `model` by path, e.g. ('encoder', 'blocks', 0, 'norm1', 'scale')."""
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def torch_param_name(path: Path, ndim: int) -> str:
    """Our param path -> the reference state-dict key (inverse of the mapping above)."""
    parts = [str(p) for p in path]
    if parts[-1] in ("kernel", "scale"):
        parts[-1] = "weight"
    name = ".".join(parts)
    name = re.sub(r"(mlp|query_processor)\.fc_in\.", r"\1.0.", name)
    return re.sub(r"(mlp|query_processor)\.fc_out\.", r"\1.2.", name)


def load_state_dict(model: nnx.Module, state: Mapping[str, np.ndarray], *, strip_prefix: str = ""
                    ) -> None:
    """Loads `state` (torch names -> arrays) into `model` in place.

    Raises StateDictMismatch naming every missing, unexpected or mis-shaped key.
    """
    targets = param_paths(model)
    found: dict[Path, np.ndarray] = {}
    extra, bad_shape = [], []
    for key, value in state.items():
        name = key[len(strip_prefix):] if strip_prefix and key.startswith(strip_prefix) else key
        value = np.asarray(value)
        if name in BUFFERS:
            _check_inv_freq(model, value)
            continue
        path = _torch_to_path(name)
        if path[-1] == "weight":
            for leaf, transform in (("kernel", np.transpose), ("scale", None), ("embedding", None)):
                cand = path[:-1] + (leaf,)
                if cand in targets:
                    path, value = cand, (transform(value) if transform else value)
                    break
        if path not in targets:
            extra.append(key)
            continue
        if tuple(targets[path].shape) != value.shape:
            bad_shape.append(f"{key}: got {value.shape}, model has {tuple(targets[path].shape)}")
            continue
        found[path] = value
    missing = [torch_param_name(p, len(v.shape)) for p, v in targets.items() if p not in found]
    if missing or extra or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {len(extra)}: {', '.join(extra)}")
        if bad_shape:
            parts.append(f"wrong shape {len(bad_shape)}: {'; '.join(bad_shape)}")
        raise StateDictMismatch("state dict does not fit the model: " + " | ".join(parts))
    for path, value in found.items():
        targets[path][...] = np.asarray(value, dtype=np.float32)


def _check_inv_freq(model: nnx.Module, value: np.ndarray) -> None:
    cfg = model.cfg
    expected = layers.rope_inv_freq(cfg.head_dim, cfg.rope_base)
    if value.shape != expected.shape or not np.allclose(value, expected, rtol=1e-6):
        raise StateDictMismatch(
            f"rotary_emb.inv_freq {value.shape} does not match head_dim={cfg.head_dim}, "
            f"base={cfg.rope_base}"
        )
