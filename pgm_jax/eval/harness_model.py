"""A pgm_jax run as an lm-eval-harness model (`lm_eval.api.model.LM`), registered as "pgm_jax".

* `loglikelihood`: `likelihood.Scorer` (conditional Monte-Carlo ELBO by default; the
  reference's joint per-token NELBO with `joint=True`; exact for AR runs).
* `loglikelihood_rolling`: the scorer's windows over the whole text.
* `generate_until`: the conditional sampler (PGM / MDLM / AR) on `[BOS] + context`, greedy
  unless the task asks for a temperature, `max_gen_toks` new tokens (at most what fits), cut at
  the first `until` string.

lm-eval (pinned in requirements.txt) is imported here only: its core needs no torch.
"""

from __future__ import annotations

import jax
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from pgm_jax.eval.likelihood import Scorer
from pgm_jax.sampling import generate_many
from pgm_jax.sampling.prompts import from_segments

DEFAULT_MAX_GEN_TOKS = 64


@register_model("pgm_jax")
class PGMJaxLM(LM):
    """graphdef / params: the restored model; tokenizer: the run's `TextTokenizer`."""

    def __init__(self, graphdef, params, model_cfg, tokenizer, mesh, *, bos_id: int,
                 num_mc_samples: int = 1024, mc_batch: int = 256, joint: bool = False,
                 steps: int | None = None, batch_size: int = 8, seed: int = 0):
        super().__init__()
        self.graphdef, self.params, self.cfg = graphdef, params, model_cfg
        self.tok, self.mesh, self.bos = tokenizer, mesh, bos_id
        self.scorer = Scorer(graphdef, params, model_cfg, bos_id=bos_id,
                             eos_id=tokenizer.eos_id, num_mc_samples=num_mc_samples,
                             mc_batch=mc_batch, joint=joint, seed=seed)
        self.steps = steps or model_cfg.length
        self.batch_size, self.seed = batch_size, seed

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text) if text else []

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args
            # Split as lm-eval's HF model does: trailing spaces of the context go with the
            # continuation, so both tokenize at a word boundary.
            n = len(context) - len(context.rstrip())
            if n:
                context, continuation = context[:-n], context[-n:] + continuation
            out.append(self.scorer.loglikelihood(self._encode(context),
                                                 self._encode(continuation)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [self.scorer.loglikelihood_rolling(self._encode(req.args[0])) for req in requests]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        length, rows, untils, temps = self.cfg.length, [], [], set()
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            ids = self._encode(context)[-(length - 2):]  # keep the recent context
            new = min(int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), length - 1 - len(ids))
            rows.append([(ids, 0), (None, new)])
            until = kwargs.get("until") or []
            untils.append([until] if isinstance(until, str) else list(until))
            temps.add(float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", True)
                      else 0.0)
        cond = from_segments(rows, length, self.bos, fill=self.bos)
        tokens = generate_many(self.graphdef, self.params, self.cfg, jax.random.key(self.seed),
                               self.mesh, num_samples=len(rows),
                               batch_size=min(self.batch_size, len(rows)), steps=self.steps,
                               bos_id=self.bos, temperature=max(temps), progress=False,
                               cond=cond)
        out = []
        for row, d, until in zip(np.asarray(tokens), cond.decode, untils, strict=True):
            text = self.tok.decode(row[d].tolist())
            cut = min([text.find(u) for u in until if u and u in text], default=len(text))
            out.append(text[:cut])
        return out
