"""Writing a reference checkpoint as a pgm_jax run directory (what `pgm_jax.convert` does).

The run holds `config.json` (the resolved config) and `checkpoints/<global_step>/` with the
items `params` (raw training weights) and `ema` (EMA weights), exactly what a training run
writes minus the optimizer and data state, so sampling and evaluation restore it unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from ml_collections import ConfigDict

from pgm_jax import checkpoint as ckpt_lib
from pgm_jax import config as config_lib
from pgm_jax.interop.convert import WEIGHTS, read_reference_weights
from pgm_jax.interop.parity import model_config_from_hparams
from pgm_jax.interop.state_dict import state_dict_to_params
from pgm_jax.interop.torch_ckpt import CheckpointFormatError
from pgm_jax.models import build_model
from pgm_jax.models.registry import ALGO_TO_KIND
from pgm_jax.restore import CHECKPOINT_DIR
from pgm_jax.schema import default_config


def run_config_from_hparams(hp: dict, base: ConfigDict, source: str | Path = "hparams.json"
                            ) -> ConfigDict:
    """`base` with a fixture's model (`hparams.json`, reference field names).

    The algorithm is the first of `ALGO_TO_KIND` with the fixture's model kind; `data.bos_id`
    is the fixture's `bos_token_id`; `sample.steps` is reduced to a divisor of the length.
    """
    mcfg = model_config_from_hparams(hp, source)
    c = ConfigDict(base.to_dict())
    c.algo = next(a for a, k in ALGO_TO_KIND.items() if k == mcfg.kind)
    for f in dataclasses.fields(mcfg):
        if f.name in c.model:
            c.model[f.name] = getattr(mcfg, f.name)
    if "bos_token_id" in hp:
        c.data.bos_id = int(hp["bos_token_id"])
    c.sample.steps = math.gcd(mcfg.length, c.sample.steps)
    kept = config_lib.model_config(c)
    lost = [f.name for f in dataclasses.fields(mcfg)
            if getattr(kept, f.name) != getattr(mcfg, f.name)]
    if lost:
        raise config_lib.ConfigError(
            f"{source}: {', '.join(lost)} cannot be expressed with the keys of pgm_jax/schema.py")
    return c


def run_config(checkpoint: str, config: ConfigDict | None, vocab_size: int | None
               ) -> ConfigDict:
    """The config to store: a copy of `config`, or (None) the run config of the fixture's
    `hparams.json` beside `checkpoint`; a vocabulary left to the tokenizer (-1) is taken from
    the checkpoint (`vocab_size`, None if unknown). Validated."""
    if config is None:
        hparams = Path(checkpoint).parent / "hparams.json"
        if not hparams.exists():
            raise config_lib.ConfigError(
                f"no config: pass --config=FILE[:PRESET] matching {checkpoint} (e.g. "
                "configs/owt.py:pgm_8_8); only fixture directories carry an hparams.json")
        config = run_config_from_hparams(json.loads(hparams.read_text()), default_config(),
                                         hparams)
    else:
        config = ConfigDict(config.to_dict())
    if config.model.vocab_size < 0 and vocab_size is not None:
        config.model.vocab_size = vocab_size
    if config.model.mask_index < 0:
        raise config_lib.ConfigError(
            "config.model.mask_index=-1: a converted checkpoint has no tokenizer to take it "
            "from; set --config.model.mask_index (GPT-2 / OWT: 50257, BERT / LM1B: 103)")
    config_lib.validate(config)
    for field, message in config_lib.model_config(config).problems():
        raise config_lib.ConfigError(f"config.model.{field}: {message}")
    return config


def convert_to_workdir(checkpoint: str, workdir: str, config: ConfigDict | None = None,
                       weights: str = "ema") -> tuple[ConfigDict, int]:
    """Writes `workdir` from a reference `.ckpt` / `.npz`; returns (stored config, step).

    weights: 'ema' stores the file's EMA weights as `ema` (a file with one set of weights,
    `.npz` or a bare state dict, stores that set); 'raw' stores the raw weights in both
    items. Every key and shape is checked against the config's model first (StateDictMismatch
    names what is missing, unexpected or mis-shaped); nothing is written before that.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: must be one of {WEIGHTS}")
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise ckpt_lib.CheckpointError(
            f"{ckpt_dir} already holds checkpoints: convert into a new --workdir")
    ref = read_reference_weights(checkpoint)
    embedding = ref.raw.get("vocab_embed.embedding")
    config = run_config(checkpoint, config, None if embedding is None else embedding.shape[0])
    mcfg = config_lib.model_config(config)
    abstract = nnx.eval_shape(lambda: build_model(mcfg))
    params = state_dict_to_params(abstract, ref.raw)
    if weights == "ema" and ref.ema is not None:
        ema = state_dict_to_params(abstract, ref.ema)
    elif weights == "ema" and ref.lightning:
        raise CheckpointFormatError(
            f"{checkpoint} holds no EMA weights ('ema.shadow_params'): use --weights=raw")
    else:
        logging.info("storing the %s weights of %s as both params and ema",
                     "raw" if ref.lightning else "only", checkpoint)
        ema = params
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_config(config, workdir)
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, async_save=False)
    ckpt.save(ref.step, params=jax.tree.map(jnp.asarray, params),
              ema=jax.tree.map(jnp.asarray, ema))
    ckpt.close()
    n = sum(v.size for v in jax.tree.leaves(params))
    logging.info("%s -> %s: %s model, %s parameters, step %d", checkpoint, workdir, mcfg.kind,
                 f"{n:,}", ref.step)
    return config, ref.step
