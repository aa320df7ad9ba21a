"""Judge language models for generative perplexity: a GPT-2 checkpoint or a pgm_jax AR run.

A judge scores token sequences in its own vocabulary: `token_nll(tokens [B, T]) -> [B, T-1]`,
the negative log-probability of each next token, and `encode(text)` retokenizes samples.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgm_jax.config import ConfigError, load_run_config, model_config
from pgm_jax.data import load_tokenizer
from pgm_jax.data.tokenizers.gpt2 import FILE_PAIRS, GPT2Tokenizer
from pgm_jax.eval.genppl import TokenNll, encode_with_specials
from pgm_jax.interop import CheckpointFormatError
from pgm_jax.models import gpt2
from pgm_jax.models.heads import target_logprob
from pgm_jax.restore import restore_params

NO_MASK = -1  # GPT-2 has no MASK id: `target_logprob` then normalises over the whole vocabulary
# Text whose ids tell tokenizers apart: if two tokenizers agree on it, they share the vocabulary.
PROBE = "The quick brown fox, 1234 <|endoftext|> naïve café\n\tdef f(x): return x ** 2"


@dataclasses.dataclass(frozen=True)
class Judge:
    """A causal LM used to score samples.

    name: what it is (for the results file); token_nll: int32 [B, T] -> float32 [B, T-1];
    encode: text -> its ids (a literal <|endoftext|> becomes its EOS id); eos_id: EOS (also
    the padding id); context: longest sequence it scores.
    """

    name: str
    token_nll: TokenNll
    encode: Callable[[str], list[int]]
    eos_id: int
    context: int

    def shares_vocabulary(self, encode: Callable[[str], list[int]], eos_id: int) -> bool:
        """Whether a sampler's raw ids mean the same to this judge (no retokenization)."""
        return eos_id == self.eos_id and encode(PROBE) == self.encode(PROBE)


@functools.partial(jax.jit, static_argnames=("graphdef", "mask_index"))
def _next_token_nll(graphdef: nnx.GraphDef, params: dict, tokens: jax.Array, mask_index: int
                    ) -> jax.Array:
    """-log p(tokens[:, i+1] | tokens[:, :i+1]) float32 [B, T-1] (MASK excluded if any)."""
    logits = nnx.merge(graphdef, params)(tokens)
    return -target_logprob(logits[:, :-1], tokens[:, 1:], mask_index)


def _scorer(graphdef: nnx.GraphDef, params: dict, mask_index: int) -> TokenNll:
    return lambda tokens: np.asarray(_next_token_nll(graphdef, params, jnp.asarray(tokens),
                                                     mask_index=mask_index))


def gpt2_judge(directory: str) -> Judge:
    """A Hugging Face GPT-2 checkpoint directory (config.json + model.safetensors); its
    tokenizer files (vocab.json + merges.txt, ...) if present, else OpenAI's GPT-2 BPE."""
    graphdef, params, cfg = gpt2.load_gpt2(directory)
    names = [pair[0] for pair in FILE_PAIRS] + ["tokenizer.json"]
    has_tokenizer = any(os.path.isfile(os.path.join(directory, name)) for name in names)
    tokenizer = GPT2Tokenizer.from_path(directory if has_tokenizer else "")
    if tokenizer.n_tokens > cfg.vocab_size:
        raise CheckpointFormatError(
            f"{directory}: the tokenizer has {tokenizer.n_tokens} tokens but the model only "
            f"{cfg.vocab_size}: put the checkpoint's own vocab.json and merges.txt beside it")
    return Judge(f"gpt2:{os.path.abspath(directory)}", _scorer(graphdef, params, NO_MASK),
                 encode_with_specials(tokenizer.encode, tokenizer.eos_id), tokenizer.eos_id,
                 cfg.n_positions)


def ar_judge(workdir: str, mesh: jax.sharding.Mesh) -> Judge:
    """The EMA weights of a pgm_jax run with `algo=ar`, with that run's tokenizer."""
    config = load_run_config(workdir)
    if config.algo != "ar":
        raise ConfigError(f"--judge={workdir}: a pgm_jax judge must be an algo=ar run, this one "
                          f"is algo={config.algo}")
    mcfg = model_config(config)
    graphdef, params, step = restore_params(workdir, mcfg, mesh, item="ema")
    tokenizer = load_tokenizer(config.data, workdir)
    return Judge(f"ar:{os.path.abspath(workdir)}@{step}",
                 _scorer(graphdef, params, mcfg.mask_index),
                 encode_with_specials(tokenizer.encode, tokenizer.eos_id), tokenizer.eos_id,
                 mcfg.length)


def load_judge(path: str, mesh: jax.sharding.Mesh) -> Judge:
    """A GPT-2 directory (has model.safetensors) or a pgm_jax AR run directory."""
    if os.path.isfile(os.path.join(path, gpt2.WEIGHTS_FILE)):
        return gpt2_judge(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return ar_judge(path, mesh)
    raise CheckpointFormatError(
        f"--judge={path}: not a GPT-2 checkpoint directory (config.json + model.safetensors) "
        "nor a pgm_jax run directory (config.json + checkpoints/)")
