"""Config validation and conversion to typed objects, at the boundary of every entry point.

Errors name the key (`config.model.hidden_size=...: ...`) so a user can fix the command line.
"""

from __future__ import annotations

import difflib
import json
import os

from absl import logging
from ml_collections import ConfigDict

from pgm_jax.models import ModelConfig
from pgm_jax.models.registry import ALGO_TO_KIND, IMAGE_ALGOS
from pgm_jax.schema import default_config

NONFINITE = ("skip", "stop")  # config.train.nonfinite: what a NaN / Inf loss or gradient does
IMAGE_SOURCES = ("digits", "imagenet_vq")  # data.source values that hold images
IMAGE_ORDERS = ("halton", "confidence")  # config.sample.order


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the full key."""


def _err(key: str, value, message: str) -> ConfigError:
    return ConfigError(f"config.{key}={value!r}: {message}")


def is_image(config: ConfigDict) -> bool:
    """True for the class-conditional image algorithms (image_pgm, maskgit)."""
    return config.algo in IMAGE_ALGOS


def validate(config: ConfigDict) -> None:
    """Raises ConfigError for the first invalid value (keys, types and ranges of every section)."""
    _check_schema(config)
    if config.algo not in ALGO_TO_KIND:
        raise _err("algo", config.algo, f"must be one of {sorted(ALGO_TO_KIND)}")
    _check_modality(config)
    positive = {
        "train": ("batch_size", "grad_accum", "num_steps", "log_every", "eval_every",
                  "eval_batch_size", "checkpoint_every", "keep_checkpoints"),
        "data": ("vocab_size",),
        "sample": ("steps", "num_samples", "batch_size"),
    }
    for section, keys in positive.items():
        for key in keys:
            value = config[section][key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _err(f"{section}.{key}", value, "must be a positive integer")
    for key in ("eval_batches", "sample_every", "profile_start", "profile_steps"):
        if config.train[key] < 0:
            raise _err(f"train.{key}", config.train[key], "must be >= 0")
    if config.train.nonfinite not in NONFINITE:
        raise _err("train.nonfinite", config.train.nonfinite, f"must be one of {NONFINITE}")
    if is_image(config):
        _check_image(config)
    if config.data.pack and config.algo != "pgm":
        raise _err("data.pack", True, "packed sequences (segment ids) are only supported with "
                   "algo=pgm; use data.wrap or padding for the baselines")
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
    if is_image(config) and config.sample.temperature == 0:  # it divides logits; 0 = greedy
        raise _err("sample.temperature", 0.0, "must be > 0 for image runs (no greedy mode)")
    if config.algo == "pgm" and config.model.length % config.sample.steps:
        raise _err("sample.steps", config.sample.steps,
                   f"must divide model.length={config.model.length} (PGM decodes "
                   "length / steps tokens per step)")
    for axis in ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor"):
        v = config.mesh[axis]
        if not isinstance(v, int) or (v <= 0 and v != -1):
            raise _err(f"mesh.{axis}", v, "must be a positive integer or -1")
    if not 0.0 <= config.mesh.max_replicated_fraction <= 1.0:
        raise _err("mesh.max_replicated_fraction", config.mesh.max_replicated_fraction,
                   "must be in [0, 1]")
    m = config.model
    if is_image(config):
        probe = model_config(config)
    else:
        probe = model_config(config, vocab_size=max(m.vocab_size, 2),
                             mask_index=max(m.mask_index, 0))
    for field, message in probe.problems():
        if field in ("vocab_size", "mask_index") and m[field] == -1:
            continue
        raise _err(f"model.{field}", m[field] if field in m else None, message)


def _check_modality(config: ConfigDict) -> None:
    """Image algorithms train on image sources and text algorithms on text sources."""
    source = config.data.source
    if is_image(config) and source not in IMAGE_SOURCES:
        raise _err("data.source", source, f"algo={config.algo} trains on images: use one of "
                   f"{IMAGE_SOURCES}")
    if not is_image(config) and source in IMAGE_SOURCES:
        raise _err("data.source", source, f"holds images but algo={config.algo} is a text "
                   f"model: use algo=image_pgm or maskgit")


def _check_image(config: ConfigDict) -> None:
    """The image keys: classes, codebook, vocabulary and the image sampler's settings."""
    m, s = config.model, config.sample
    for key in ("num_classes", "codebook_size"):
        if m[key] <= 0:
            raise _err(f"model.{key}", m[key], f"must be > 0 for algo={config.algo}")
    if not 0.0 <= m.label_dropout < 1.0:
        raise _err("model.label_dropout", m.label_dropout, "must be in [0, 1)")
    ids = ModelConfig(kind=ALGO_TO_KIND[config.algo], codebook_size=m.codebook_size)
    for key, want in (("vocab_size", ids.image_vocab_size), ("mask_index", ids.image_mask_id)):
        if m[key] not in (-1, want):
            raise _err(f"model.{key}", m[key], f"algo={config.algo} with model.codebook_size="
                       f"{m.codebook_size} needs {want} (or -1: derived)")
    if s.order not in IMAGE_ORDERS:
        raise _err("sample.order", s.order, f"must be one of {IMAGE_ORDERS}")
    if s.cfg_w < 0:
        raise _err("sample.cfg_w", s.cfg_w, "must be >= 0 (0 = no classifier-free guidance)")
    if s.steps > m.length:
        raise _err("sample.steps", s.steps, f"must be <= model.length={m.length} (the number "
                   "of image tokens: every step reveals at least one)")


def _check_schema(config: ConfigDict) -> None:
    """Every key of the schema (pgm_jax/schema.py) present with its type (an int may stand for a
    float), and no other key: a misspelt key in a config file would otherwise be ignored."""
    expected, given = flatten(default_config()), flatten(config)
    for key in given.keys() - expected.keys():
        close = difflib.get_close_matches(key, expected, n=1)
        hint = f"did you mean config.{close[0]}? " if close else ""
        raise ConfigError(f"config.{key}: unknown key ({hint}pgm_jax/schema.py documents "
                          "every key)")
    for key, default in expected.items():
        if key not in given:
            raise ConfigError(f"config.{key} is missing: build the config on "
                              "pgm_jax.schema.default_config() (configs/base.py), which sets "
                              "every key")
        value, kind = given[key], type(default)
        ok = (isinstance(value, int | float) and not isinstance(value, bool) if kind is float
              else isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
        if not ok:
            raise _err(key, value, f"must be of type {kind.__name__}")


def flatten(config: ConfigDict | dict, prefix: str = "") -> dict:
    """{"train.batch_size": 512, ...}: every leaf of a (nested) config by its dotted key."""
    out = {}
    items = config.to_dict() if isinstance(config, ConfigDict) else config
    for k, v in items.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


RESUME_IGNORED = ("model.dropout", "model.dtype", "model.label_dropout")  # may change on resume


def check_resume(config: ConfigDict, stored: ConfigDict, workdir: str) -> None:
    """Raises ConfigError if `config` changes what the checkpoints in `workdir` hold: the
    algorithm, the model's shapes or the vocabulary (`stored` is the run's config.json)."""
    new, old = flatten(config), flatten(stored)
    keys = ["algo", "data.vocab_size"] + [k for k in new if k.startswith("model.")]
    for key in keys:
        if key in RESUME_IGNORED or key not in old or new[key] == old[key]:
            continue
        if key in ("model.vocab_size", "model.mask_index") and new[key] == -1:
            continue  # resolved from the (unchanged) tokenizer
        raise ConfigError(
            f"config.{key}={new[key]!r} but the checkpoints in {workdir} were trained with "
            f"{old[key]!r}: pass --config.{key}={old[key]!r} or use a new --workdir"
        )


def model_config(config: ConfigDict, *, vocab_size: int | None = None,
                 mask_index: int | None = None) -> ModelConfig:
    """The typed ModelConfig; vocab_size / mask_index default to the config's values (for
    images: derived from model.codebook_size when -1)."""
    values = dict(config.model.items())
    values["kind"] = ALGO_TO_KIND[config.algo]
    if is_image(config):  # -1: derived from the codebook (ModelConfig's image ids)
        ids = ModelConfig(kind=values["kind"], codebook_size=config.model.codebook_size)
        for key, value in (("vocab_size", ids.image_vocab_size),
                           ("mask_index", ids.image_mask_id)):
            if values[key] == -1:
                values[key] = value
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    if mask_index is not None:
        values["mask_index"] = mask_index
    return ModelConfig.from_mapping(values)


def on_current_schema(stored: ConfigDict) -> ConfigDict:
    """A run's stored config on today's schema (pgm_jax/schema.py): keys added since the run
    was written take their defaults, keys since removed are dropped (both logged)."""
    config = default_config()
    current, old = flatten(config), flatten(stored)
    for key, value in old.items():
        if key in current:
            *parents, leaf = key.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    added, dropped = sorted(current.keys() - old.keys()), sorted(old.keys() - current.keys())
    if added or dropped:
        logging.info("run config from an older schema: defaults for %s; ignored %s", added,
                     dropped)
    return config


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
