"""Map reference PyTorch state dicts (numpy arrays keyed by torch names) onto our NNX params.

The module tree mirrors the reference names, so the mapping is mechanical (spec §7.3):
`mlp.0`/`mlp.2` -> `mlp.fc_in`/`mlp.fc_out`, Linear `weight` -> `kernel` (transposed),
LayerNorm `weight` -> `scale`. The buffer `rotary_emb.inv_freq` is checked, not loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import nnx, traverse_util

from pgm_jax.interop.torch_ckpt import CheckpointFormatError
from pgm_jax.models import embeddings

Path = tuple[str | int, ...]
BUFFERS = ("rotary_emb.inv_freq",)
MAX_NAMES = 12  # keys listed per category in a mismatch message


class StateDictMismatch(CheckpointFormatError):
    """Raised when a state dict does not fit the model; the message names the keys."""


def _torch_to_path(key: str) -> Path:
    key = re.sub(r"(mlp|query_processor)\.0\.", r"\1.fc_in.", key)
    key = re.sub(r"(mlp|query_processor)\.2\.", r"\1.fc_out.", key)
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def param_paths(model: nnx.Module) -> dict[Path, nnx.Variable]:
    """Every parameter of `model` by path, e.g. ('encoder', 'blocks', 0, 'norm1', 'scale')."""
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def torch_param_name(path: Path) -> str:
    """Our param path -> the reference state-dict key (inverse of the mapping above)."""
    parts = [str(p) for p in path]
    if parts[-1] in ("kernel", "scale"):
        parts[-1] = "weight"
    name = ".".join(parts)
    name = re.sub(r"(mlp|query_processor)\.fc_in\.", r"\1.0.", name)
    return re.sub(r"(mlp|query_processor)\.fc_out\.", r"\1.2.", name)


def _listing(what: str, names: list[str], sep: str = ", ") -> str:
    shown = sep.join(names[:MAX_NAMES])
    more = f"{sep}... ({len(names) - MAX_NAMES} more)" if len(names) > MAX_NAMES else ""
    return f"{what} {len(names)}: {shown}{more}"


def match_state_dict(model: nnx.Module, state: Mapping[str, np.ndarray], *,
                     strip_prefix: str = "") -> dict[Path, np.ndarray]:
    """Maps every entry of `state` to a parameter path of `model` (abstract models work too).

    Returns {path: float32 array in our layout}. Raises StateDictMismatch naming the missing,
    unexpected and mis-shaped keys when the state dict does not fit the model exactly.
    """
    targets = param_paths(model)
    found: dict[Path, np.ndarray] = {}
    seen: set[Path] = set()
    extra, bad_shape = [], []
    for key, value in state.items():
        name = key[len(strip_prefix):] if strip_prefix and key.startswith(strip_prefix) else key
        value = np.asarray(value)
        if name in BUFFERS:
            problem = _inv_freq_problem(model, value)
            if problem:
                bad_shape.append(f"{key}: {problem}")
            continue
        path, transposed = _torch_to_path(name), False
        if path[-1] == "weight":
            for leaf in ("kernel", "scale", "embedding"):
                if path[:-1] + (leaf,) in targets:
                    path, transposed = path[:-1] + (leaf,), leaf == "kernel"
                    break
        if path not in targets:
            extra.append(key)
            continue
        seen.add(path)
        want = tuple(targets[path].shape)
        want = want[::-1] if transposed else want  # in torch's (out, in) layout, like `value`
        if value.shape != want:
            bad_shape.append(f"{key}: got {value.shape}, model has {want}")
            continue
        found[path] = np.asarray(value.T if transposed else value, dtype=np.float32)
    missing = [torch_param_name(p) for p in targets if p not in seen]
    if missing or extra or bad_shape:
        parts = []
        if missing:
            parts.append(_listing("missing", missing))
        if extra:
            parts.append(_listing("unexpected", extra))
        if bad_shape:
            parts.append(_listing("wrong shape", bad_shape, "; "))
        raise StateDictMismatch(
            "state dict does not fit the model (check the model config against the "
            "checkpoint): " + " | ".join(parts))
    return found


def load_state_dict(model: nnx.Module, state: Mapping[str, np.ndarray], *, strip_prefix: str = ""
                    ) -> None:
    """Loads `state` (torch names -> arrays) into `model` in place (see `match_state_dict`)."""
    targets = param_paths(model)
    for path, value in match_state_dict(model, state, strip_prefix=strip_prefix).items():
        targets[path][...] = value


def state_dict_to_params(model: nnx.Module, state: Mapping[str, np.ndarray], *,
                         strip_prefix: str = "") -> dict:
    """`state` as the pure parameter dict of `model` (the tree `nnx.to_pure_dict` gives).

    `model` may be abstract (`nnx.eval_shape`): nothing is initialised.
    """
    return traverse_util.unflatten_dict(match_state_dict(model, state, strip_prefix=strip_prefix))


def _inv_freq_problem(model: nnx.Module, value: np.ndarray) -> str | None:
    """Why the RoPE buffer does not belong to `model` (None when it does)."""
    cfg = model.cfg
    expected = embeddings.rope_inv_freq(cfg.head_dim, cfg.rope_base)
    if value.shape == expected.shape and np.allclose(value, expected, rtol=1e-6):
        return None
    return (f"got {value.shape}, the model's head_dim={cfg.head_dim} and "
            f"rope_base={cfg.rope_base} give {expected.shape}")
