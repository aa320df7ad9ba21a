"""Sampling from a run directory: settings (config + flags), tokenizer, EMA weights, samples.

Shared by `pgm_jax.sample` and `pgm_jax.evaluate`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from pgm_jax import sharding
from pgm_jax.cli import require
from pgm_jax.config import flatten, model_config
from pgm_jax.data import DataError, TextTokenizer, load_tokenizer
from pgm_jax.models import ModelConfig
from pgm_jax.restore import restore_params
from pgm_jax.sampling import PGM_MODES, generate_many
from pgm_jax.schema import default_config


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """What `generate_many` needs besides the model (see pgm_jax/schema.py, `sample.*`)."""

    num_samples: int
    batch_size: int
    steps: int
    top_p: float
    temperature: float
    float64: bool
    mode: str
    bucket: int

    def generate_kwargs(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "num_samples"}


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


def settings(config: ConfigDict, model_cfg: ModelConfig, **flags) -> SampleSettings:
    """`config.sample` (a run's stored config; keys it predates take today's defaults)
    overridden by the non-None `flags`; raises UsageError naming the flag of a bad value."""
    stored = on_current_schema(config).sample
    names = [f.name for f in dataclasses.fields(SampleSettings)]
    values = {k: stored[k] for k in names} | {k: v for k, v in flags.items() if v is not None}
    s = SampleSettings(**values)
    require(s.num_samples > 0, f"--num_samples={s.num_samples}: must be positive")
    require(s.batch_size > 0, f"--batch_size={s.batch_size}: must be positive")
    require(0.0 < s.top_p <= 1.0, f"--top_p={s.top_p}: must be in (0, 1]")
    require(s.temperature >= 0.0, f"--temperature={s.temperature}: must be >= 0")
    require(s.mode in PGM_MODES, f"--mode={s.mode}: must be one of {', '.join(PGM_MODES)}")
    require(s.bucket >= 0, f"--bucket={s.bucket}: must be >= 0 (0 = automatic)")
    if model_cfg.kind != "ar":
        require(s.steps > 0 and model_cfg.length % s.steps == 0,
                f"--steps={s.steps}: must divide model.length={model_cfg.length}")
    return s


def run_tokenizer(config: ConfigDict, workdir: str) -> TextTokenizer | None:
    """The run's tokenizer, or None (e.g. a converted reference checkpoint without one)."""
    try:
        return load_tokenizer(config.data, workdir)
    except DataError as e:
        logging.warning("no tokenizer (%s): samples are written as token ids", e)
        return None


def bos_id(config: ConfigDict, tokenizer: TextTokenizer | None, workdir: str) -> int:
    """`data.bos_id` if set (>= 0), else the tokenizer's."""
    bos = int(config.data.get("bos_id", -1))
    if bos < 0:
        require(tokenizer is not None, f"{workdir} has no tokenizer: set data.bos_id in its "
                "config.json to the BOS token id")
        bos = tokenizer.bos_id
    return bos


def sample_run(workdir: str, config: ConfigDict, s: SampleSettings, step: int | None, seed: int,
               tokenizer: TextTokenizer | None, progress: bool = True
               ) -> tuple[np.ndarray, int]:
    """(int32 [num_samples, L] samples, checkpoint step) from the run's EMA weights, restored
    onto a data-parallel mesh over every device."""
    mcfg = model_config(config)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    graphdef, params, step = restore_params(workdir, mcfg, mesh, step, item="ema")
    logging.info("sampling %d x %d tokens from step %d: %s, %s", s.num_samples, mcfg.length,
                 step, mcfg.kind, s)
    tokens = generate_many(graphdef, params, mcfg, jax.random.key(seed), mesh,
                           num_samples=s.num_samples, bos_id=bos_id(config, tokenizer, workdir),
                           progress=progress, **s.generate_kwargs())
    return tokens, step
