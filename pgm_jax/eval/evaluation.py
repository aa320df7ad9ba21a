"""What `pgm_jax.evaluate` computes: validation NELBO of a run, quality of its samples."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from pgm_jax.data import TextTokenizer
from pgm_jax.eval import genppl
from pgm_jax.eval.judge import Judge
from pgm_jax.models import ModelConfig
from pgm_jax.objectives import validation as val
from pgm_jax.restore import restore_params


def validation(workdir: str, config: ConfigDict, data, mesh: Mesh, model_cfg: ModelConfig,
               step: int | None, max_batches: int) -> tuple[dict, int]:
    """(validation metrics, checkpoint step) of a text or image run with its EMA weights:
    `objectives.validation.evaluate` over every validation example (`examples` counts them).

    config: the run's stored config on today's schema; data, mesh, model_cfg: the run's, as
    `train.setup.setup` builds them (passed in: eval does not import train).
    """
    graphdef, params, step = restore_params(workdir, model_cfg, mesh, step, item="ema")
    eval_step = val.jit_eval_step(val.eval_step_for(config.algo, graphdef),
                                  jax.tree.map(lambda x: x.sharding, params), mesh)
    metrics = val.evaluate(eval_step, params, data, mesh, config, max_batches)
    metrics["examples"] = len(data.val)
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
