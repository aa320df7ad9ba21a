"""Text sampling from a run directory: tokenizer, BOS, EMA weights on the inference mesh,
unconditional or prompted samples, and the sample files.

Shared by `pgm_jax.sample`, `pgm_jax.evaluate`, the steps table and the lm-eval harness.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from pgm_jax import sharding
from pgm_jax.cli import require
from pgm_jax.config import model_config
from pgm_jax.data import DataError, TextTokenizer, load_tokenizer
from pgm_jax.restore import restore_params
from pgm_jax.sampling import generate_many, prompted
from pgm_jax.sampling.settings import SamplerSettings


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


def sample_run(workdir: str, config: ConfigDict, s: SamplerSettings, step: int | None, seed: int,
               tokenizer: TextTokenizer | None, progress: bool = True
               ) -> tuple[np.ndarray, int]:
    """(int32 [num_samples, L] samples, checkpoint step) from the run's EMA weights, restored
    onto the inference mesh (`sharding.inference_mesh`)."""
    mcfg = model_config(config)
    mesh = sharding.inference_mesh()
    graphdef, params, step = restore_params(workdir, mcfg, mesh, step, item="ema")
    logging.info("sampling %d x %d tokens from step %d: %s, %s", s.num_samples, mcfg.length,
                 step, mcfg.kind, s)
    tokens = generate_many(graphdef, params, mcfg, jax.random.key(seed), mesh,
                           num_samples=s.num_samples, bos_id=bos_id(config, tokenizer, workdir),
                           progress=progress, **s.text_kwargs())
    return tokens, step


def sample_prompted_run(workdir: str, config: ConfigDict, s: SamplerSettings,
                        prompts: list[prompted.Prompt], tokenizer: TextTokenizer, *,
                        per_prompt: int, max_new_tokens: int | None, step: int | None,
                        seed: int) -> tuple[list[dict], int]:
    """(`prompted.records` rows, checkpoint step): `per_prompt` samples of every prompt from
    the run's EMA weights on the inference mesh, in batches of at most `s.batch_size`."""
    mcfg = model_config(config)
    mesh = sharding.inference_mesh()
    graphdef, params, step = restore_params(workdir, mcfg, mesh, step, item="ema")
    cond, tokens = prompted.sample_prompts(
        graphdef, params, mcfg, mesh, prompts, tokenizer,
        bos_id=bos_id(config, tokenizer, workdir), per_prompt=per_prompt,
        max_new_tokens=max_new_tokens, seed=seed,
        **(s.text_kwargs() | {"batch_size": min(s.batch_size, len(prompts) * per_prompt)}))
    return prompted.records(prompts, cond, tokens, tokenizer, per_prompt, step), step


def write_samples(prefix: str, tokens: np.ndarray, texts: list[str | None], step: int) -> None:
    """`prefix.jsonl` (checkpoint step, token ids, text per row) and `prefix.txt` (the texts,
    or the ids where there is no tokenizer); process 0 only."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".jsonl", "w") as f:
        for row, text in zip(tokens.tolist(), texts, strict=True):
            f.write(json.dumps({"step": step, "tokens": row, "text": text}) + "\n")
    with open(prefix + ".txt", "w") as f:
        for j, (row, text) in enumerate(zip(tokens.tolist(), texts, strict=True)):
            f.write(f"=== sample {j} ===\n{row if text is None else text}\n\n")


def write_prompted(prefix: str, rows: list[dict]) -> None:
    """`prefix.jsonl`, one `prompted.records` row per line; process 0 only."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
