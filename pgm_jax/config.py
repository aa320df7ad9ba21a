"""Config validation and conversion to typed objects, at the boundary of every entry point.

Errors name the key (`config.model.hidden_size=...: ...`) so a user can fix the command line.
"""

from __future__ import annotations

import json
import os

from ml_collections import ConfigDict

from pgm_jax.models import ModelConfig

ALGO_TO_KIND = {"pgm": "pgm", "mdlm": "mdlm_dit"}


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the full key."""


def _err(key: str, value, message: str) -> ConfigError:
    return ConfigError(f"config.{key}={value!r}: {message}")


def validate(config: ConfigDict) -> None:
    """Raises ConfigError for the first invalid value (types and ranges of every section)."""
    if config.algo not in ALGO_TO_KIND:
        raise _err("algo", config.algo, f"must be one of {sorted(ALGO_TO_KIND)}")
    positive = {
        "train": ("batch_size", "num_steps", "log_every", "eval_every", "eval_batch_size",
                  "checkpoint_every", "keep_checkpoints"),
        "data": ("vocab_size",),
        "sample": ("steps", "num_samples", "batch_size"),
    }
    for section, keys in positive.items():
        for key in keys:
            value = config[section][key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _err(f"{section}.{key}", value, "must be a positive integer")
    for key in ("eval_batches", "sample_every"):
        if config.train[key] < 0:
            raise _err(f"train.{key}", config.train[key], "must be >= 0")
    if not 0.0 < config.data.val_fraction < 1.0:
        raise _err("data.val_fraction", config.data.val_fraction, "must be in (0, 1)")
    o = config.optim
    if o.lr <= 0:
        raise _err("optim.lr", o.lr, "must be > 0")
    if o.warmup_steps < 0:
        raise _err("optim.warmup_steps", o.warmup_steps, "must be >= 0")
    if o.schedule not in ("constant", "cosine"):
        raise _err("optim.schedule", o.schedule, "must be 'constant' or 'cosine'")
    for key in ("b1", "b2", "ema_decay"):
        if not 0.0 <= o[key] < 1.0:
            raise _err(f"optim.{key}", o[key], "must be in [0, 1)")
    if o.grad_clip <= 0:
        raise _err("optim.grad_clip", o.grad_clip, "must be > 0")
    if not 0.0 < config.sample.top_p <= 1.0:
        raise _err("sample.top_p", config.sample.top_p, "must be in (0, 1]")
    if config.sample.temperature < 0:
        raise _err("sample.temperature", config.sample.temperature, "must be >= 0")
    for axis in ("data", "fsdp", "tensor"):
        v = config.mesh[axis]
        if not isinstance(v, int) or (v <= 0 and v != -1):
            raise _err(f"mesh.{axis}", v, "must be a positive integer or -1")
    m = config.model
    probe = model_config(config, vocab_size=max(m.vocab_size, 2), mask_index=max(m.mask_index, 0))
    for field, message in probe.problems():
        if field in ("vocab_size", "mask_index") and m[field] == -1:
            continue
        raise _err(f"model.{field}", m[field] if field in m else None, message)


def model_config(config: ConfigDict, *, vocab_size: int | None = None,
                 mask_index: int | None = None) -> ModelConfig:
    """The typed ModelConfig; vocab_size / mask_index default to the config's values."""
    values = dict(config.model.items())
    values["kind"] = ALGO_TO_KIND[config.algo]
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    if mask_index is not None:
        values["mask_index"] = mask_index
    return ModelConfig.from_mapping(values)


def save_config(config: ConfigDict, workdir: str) -> str:
    """Writes the resolved config as JSON to `workdir/config.json`; returns the path."""
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_run_config(workdir: str) -> ConfigDict:
    """The config a run stored in its workdir (for sampling / evaluation / resume checks)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(
            f"{path} not found: --workdir must be a directory written by pgm_jax.main "
            "or pgm_jax.convert"
        )
    with open(path) as f:
        return ConfigDict(json.load(f))
