"""Log-likelihoods of continuations for downstream tasks (lm-eval's `loglikelihood`).

Two estimators for the diffusion models (PGM, MDLM), both Monte-Carlo over `num_mc_samples`
antithetic times t (spec §2.2), run `mc_batch` samples per forward pass:

* `conditional` (the default): log p(continuation | context) bounded by the masked-diffusion
  ELBO of the continuation alone. The sequence is `[BOS] + context + continuation`; the context
  is always clean (PGM: group 0, MDLM: unmasked), each continuation token is noised with
  probability 1 - alpha_t (PGM: group 1, MDLM: MASK) and scored with weight 1/t. Returns the
  negative NELBO in nats, summed over the continuation, like an AR model's exact sum.
* `joint` (the reference's `eval_suffix_nll`, spec §6.5): the sequence is `[BOS] + context +
  continuation + [EOS]`, every token (context included) is partitioned / masked, and the result
  is minus the per-token NELBO of the *joint* sequence averaged over all its positions. It is not
  a conditional likelihood (§9 item 6): the choices of a multiple-choice question are compared by
  a joint per-token average. A sequence longer than the model returns (0.0, False), as there.

`is_greedy`: the continuation is the argmax at every continuation position with the context
clean and the continuation noised (PGM: group 1; MDLM: MASK); joint mode, as the reference,
scores continuation + EOS but keeps the EOS clean. AR models are exact: sum of log p(token |
prefix) over the continuation (joint: minus the per-token NLL of the joint sequence).

Sequences are right-padded to a multiple of `PAD_TO` tokens; the padding is its own segment
(PGM) / masked out of attention (MDLM), so the model sees the unpadded sequence, as the reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgm_jax.models import ModelConfig
from pgm_jax.models.attention import Segments
from pgm_jax.objectives import schedule

Array = jax.Array
PAD_TO = 32  # sequence length granularity: at most L / 32 compiled shapes per batch size


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _mc_nll(graphdef, params, tokens, valid, noised, t, key, *, kind):
    """Per-sample weighted NLL sums float32 [B] over the `noised`-eligible positions.

    tokens: int32 [n]; valid, noised: bool [n] (noised: positions that may be noised); t:
    float32 [B] times.
    """
    model = nnx.merge(graphdef, params)
    b, n = t.shape[0], tokens.shape[0]
    x = jnp.broadcast_to(tokens, (b, n))
    hit = (jax.random.uniform(key, (b, n)) < (1.0 - schedule.alpha(t))[:, None]) & noised
    if kind == "pgm":
        seg = jnp.broadcast_to(jnp.where(valid, 0, 1), (b, n))
        logp = model(x, hit.astype(jnp.int32), segment_ids=seg, targets=x)
        nll = schedule.pgm_token_nll(logp, hit, t, train=False)
    else:
        mask = model.cfg.mask_index
        xt = jnp.where(hit, mask, x)
        # valid tokens see valid tokens, padding sees padding (O(L) segment ids)
        ids = jnp.broadcast_to(valid.astype(jnp.int32), (b, n))
        attend = Segments(q=ids, kv=ids)
        logp = model(xt, sigma=schedule.sigma_of(t), attention_mask=attend, targets=x)
        nll = schedule.mdlm_token_nll(logp, xt, t, mask)
    return jnp.sum(jnp.where(valid, nll, 0.0), axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _greedy(graphdef, params, tokens, valid, noised, *, kind):
    """bool: argmax (MASK excluded) == token at every `noised` position, the rest clean."""
    model = nnx.merge(graphdef, params)
    x = tokens[None]
    if kind == "pgm":
        logits = model(x, noised[None].astype(jnp.int32),
                       segment_ids=jnp.where(valid, 0, 1)[None])
    elif kind == "ar":
        logits = jnp.pad(model(x[:, :-1]), ((0, 0), (1, 0), (0, 0)))  # row i predicts token i
    else:
        mask = model.cfg.mask_index
        ids = valid.astype(jnp.int32)[None]
        attend = Segments(q=ids, kv=ids)
        logits = model(jnp.where(noised, mask, tokens)[None], sigma=jnp.zeros((1,)),
                       attention_mask=attend)
    best = jnp.argmax(schedule.pgm_logprobs(logits, model.cfg.mask_index), -1)[0]
    return jnp.all(jnp.where(noised, best == tokens, True))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _ar_logprobs(graphdef, params, tokens):
    """float32 [n]: log p(token i | tokens < i), 0 at i = 0."""
    model = nnx.merge(graphdef, params)
    logp = model(tokens[None, :-1], targets=tokens[None, 1:])[0]
    return jnp.pad(logp, (1, 0))


class Scorer:
    """loglikelihood(context, continuation) for one model (see the module docstring).

    graphdef, params: the model (`nnx.split`, pure dict); bos_id / eos_id: the tokenizer's.
    """

    def __init__(self, graphdef: nnx.GraphDef, params: dict, model_cfg: ModelConfig, *,
                 bos_id: int, eos_id: int, num_mc_samples: int = 1024, mc_batch: int = 256,
                 joint: bool = False, seed: int = 0):
        if num_mc_samples <= 0 or mc_batch <= 0:
            raise ValueError("num_mc_samples and mc_batch must be positive")
        self.graphdef, self.params, self.cfg = graphdef, params, model_cfg
        self.kind = "pgm" if model_cfg.kind == "pgm" else (
            "ar" if model_cfg.kind == "ar" else "mdlm")
        self.bos, self.eos, self.joint = bos_id, eos_id, joint
        self.samples, self.mc_batch = num_mc_samples, min(mc_batch, num_mc_samples)
        self.key = jax.random.key(seed)
        self.calls = 0

    def _layout(self, context: list[int], continuation: list[int], joint: bool):
        """(tokens, valid, cont) padded numpy arrays [n], or None when it does not fit."""
        ctx = [self.bos] + list(context)
        cont = list(continuation) + ([self.eos] if joint else [])
        length = self.cfg.length
        if len(ctx) + len(cont) > length:
            if joint or len(cont) >= length:
                return None
            ctx = [self.bos] + ctx[len(ctx) + len(cont) - length + 1:]  # keep the recent context
        ids = ctx + cont
        n = min(-(-len(ids) // PAD_TO) * PAD_TO, length)
        tokens = np.full(n, self.bos, np.int32)
        tokens[:len(ids)] = ids
        valid = np.arange(n) < len(ids)
        cont_mask = valid & (np.arange(n) >= len(ctx))
        return tokens, valid, cont_mask

    def loglikelihood(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """(log-likelihood estimate, is_greedy) of token ids `continuation` after `context`."""
        return self._score(context, continuation, self.joint)

    def _score(self, context: list[int], continuation: list[int], joint: bool
               ) -> tuple[float, bool]:
        layout = self._layout(context, continuation, joint)
        if layout is None:
            return 0.0, False
        tokens, valid, cont = layout
        key = jax.random.fold_in(self.key, self.calls)
        self.calls += 1
        greedy_mask = cont.copy()
        if joint:  # the reference keeps the final EOS clean for is_greedy
            greedy_mask[np.flatnonzero(cont)[-1]] = False
        greedy = bool(_greedy(self.graphdef, self.params, tokens, valid, greedy_mask,
                              kind=self.kind))
        if self.kind == "ar":
            logp = np.asarray(_ar_logprobs(self.graphdef, self.params, tokens))
            if joint:
                return float(logp[valid][1:].mean()), greedy
            return float(logp[cont].sum()), greedy
        noised = valid if joint else cont
        t = schedule.antithetic_t(jax.random.fold_in(key, 0), self.samples)
        sums = []
        for i, start in enumerate(range(0, self.samples, self.mc_batch)):
            tb = t[start:start + self.mc_batch]
            sums.append(_mc_nll(self.graphdef, self.params, tokens, valid, noised, tb,
                                jax.random.fold_in(key, i + 1), kind=self.kind))
        nelbo = float(jnp.mean(jnp.concatenate(sums)))
        return (-nelbo / int(valid.sum()) if joint else -nelbo), greedy

    def loglikelihood_rolling(self, ids: list[int]) -> float:
        """Log-likelihood of a whole text (token ids): windows of up to L/2 new tokens, each
        after up to L/2 - 1 preceding tokens as context (always the conditional estimator)."""
        half = self.cfg.length // 2
        total = 0.0
        for start in range(0, len(ids), half):
            ll, _ = self._score(ids[max(0, start - half + 1):start], ids[start:start + half],
                                joint=False)
            total += ll
        return total
