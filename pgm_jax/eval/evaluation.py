"""What `pgm_jax.evaluate` computes: validation NELBO of a run, quality of its samples."""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from pgm_jax.data import TextTokenizer
from pgm_jax.eval import genppl
from pgm_jax.eval.judge import Judge
from pgm_jax.objectives.losses import LOSSES
from pgm_jax.restore import restore_params
from pgm_jax.sampling.from_run import on_current_schema
from pgm_jax.train import loop
from pgm_jax.train.step import jit_eval_step, make_eval_step


def validation(workdir: str, config: ConfigDict, step: int | None, max_batches: int
               ) -> tuple[dict, int]:
    """(validation metrics, checkpoint step): `train.loop.evaluate` with the EMA weights over
    every validation example (`examples` counts them). `config`: the run's stored config."""
    run = loop.setup(on_current_schema(config), workdir)
    _, params, step = restore_params(workdir, run.model_cfg, run.mesh, step, item="ema")
    eval_step = jit_eval_step(make_eval_step(run.graphdef, LOSSES[config.algo]),
                              run.shardings.ema, run.mesh)
    metrics = loop.evaluate(run, eval_step, params, max_batches)
    metrics["examples"] = len(run.data.val)
    return metrics, step


def sample_quality(judge: Judge, samples: np.ndarray, tokenizer: TextTokenizer, max_length: int,
                   batch_size: int) -> dict:
    """Generative perplexities and entropy of int32 [M, L] `samples` (spec §6.2)."""
    specials = (tokenizer.bos_id, tokenizer.eos_id)
    texts = genppl.texts_with_specials(samples, tokenizer.decode, specials)
    tokens = genppl.retokenize(texts, judge.encode, judge.eos_id, min(max_length, judge.context))
    out = {"judge": judge.name, "num_samples": len(samples),
           "gen_ppl_first_chunk_retok": genppl.perplexity(
               judge.token_nll, tokens, genppl.first_chunk_weights(tokens, judge.eos_id),
               batch_size, judge.eos_id),
           "entropy": genppl.entropy(samples)}
    encode = genppl.encode_with_specials(tokenizer.encode, tokenizer.eos_id)
    if judge.shares_vocabulary(encode, tokenizer.eos_id):
        raw = samples[:, :judge.context]
        out["gen_ppl_all_no_retok"] = genppl.perplexity(
            judge.token_nll, raw, genppl.all_weights(raw), batch_size, judge.eos_id)
    return out
