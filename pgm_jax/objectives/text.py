"""Text training objectives (spec §2): the PGM, MDLM, complementary-masking MDLM and
autoregressive losses, as (sum of token NLLs, number of valid tokens) of one (micro-)batch.

Each loss has the `losses.LossFn` signature `(model, batch, key, train)`; `train` switches the
model's dropout on (and, for PGM, the two-sided training estimator).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgm_jax.models import AR, PGM, DiT
from pgm_jax.objectives import schedule

Array = jax.Array
Batch = dict[str, Array]


def pgm_loss(model: PGM, batch: Batch, key: Array, train: bool) -> tuple[Array, Array]:
    """PGM objective: (sum of weighted token NLLs, number of valid tokens).

    batch: tokens int32 [B, L], valid int32 [B, L] (optional segment_ids [B, L]). The times are
    stratified over the whole (global) batch; the partition is g ~ Bernoulli(1 - alpha_t).
    """
    tokens, valid = batch["tokens"], batch["valid"]
    k_t, k_g, k_drop = jax.random.split(key, 3)
    t = schedule.batch_times(k_t, batch)
    # A batch may fix the draws, as it may fix "t" (fixture parity feeds the reference's).
    groups = (batch["groups"] if "groups" in batch
              else schedule.sample_partition(k_g, t, tokens.shape))
    logp = model(tokens, groups, key=k_drop if train else None,
                 segment_ids=batch.get("segment_ids"), targets=tokens)
    nll = schedule.pgm_token_nll(logp, groups, t, train=train)
    return schedule.masked_mean(nll, valid)


def mdlm_loss(model: DiT, batch: Batch, key: Array, train: bool) -> tuple[Array, Array]:
    """MDLM objective (same estimator for train and eval): masked tokens weighted by 1/t.

    The backbone gets sigma = -log(alpha_t); it only reads it with time conditioning on.
    """
    tokens, valid = batch["tokens"], batch["valid"]
    k_t, k_m, k_drop = jax.random.split(key, 3)
    t = schedule.batch_times(k_t, batch)
    # A batch may fix x_t, as it may fix "t" (fixture parity feeds the reference's).
    xt = batch["xt"] if "xt" in batch else schedule.mask_tokens(k_m, tokens, t,
                                                                 model.cfg.mask_index)
    # SUBS adds -1e6 to the MASK logit; -inf gives the same log-probs to float32 precision.
    logp = model(xt, sigma=schedule.sigma_of(t), key=k_drop if train else None,
                 targets=tokens)
    nll = schedule.mdlm_token_nll(logp, xt, t, model.cfg.mask_index)
    return schedule.masked_mean(nll, valid)


def complement_mdlm_loss(model: DiT, batch: Batch, key: Array, train: bool
                         ) -> tuple[Array, Array]:
    """Complementary-masking MDLM (spec §2.7); evaluation is plain MDLM, as in the reference.

    Training runs one DiT pass over 2B sequences, x_t (time t) and x_t^c (time 1 - t), with
    the same t and x_t as `mdlm_loss` draws from `key`.
    """
    if not train:
        return mdlm_loss(model, batch, key, train)
    tokens, valid = batch["tokens"], batch["valid"]
    b, mask = tokens.shape[0], model.cfg.mask_index
    k_t, k_m, k_drop = jax.random.split(key, 3)
    t = schedule.batch_times(k_t, batch)
    xt = schedule.mask_tokens(k_m, tokens, t, mask)
    xtc = schedule.complement_mask(tokens, xt, mask)
    # Interleaved [x_t^0, x_t^c0, x_t^1, ...] rather than concatenated: each device's slice of
    # the batch-sharded inputs stays on that device.
    pair = lambda a, c: jnp.stack([a, c], axis=1).reshape(2 * b, *a.shape[1:])
    logp = model(pair(xt, xtc), sigma=schedule.sigma_of(pair(t, 1.0 - t)), key=k_drop,
                 targets=pair(tokens, tokens)).reshape(b, 2, -1)
    nll = schedule.complement_mdlm_token_nll(logp[:, 0], logp[:, 1], tokens, xt, t, mask)
    return schedule.masked_mean(nll, valid)


def ar_loss(model: AR, batch: Batch, key: Array, train: bool) -> tuple[Array, Array]:
    """Autoregressive NLL, exact (train and eval): position i predicts token i + 1.

    As in the reference, the model reads tokens[:, :-1] and the first token is never scored.
    """
    tokens, valid = batch["tokens"], batch["valid"]
    logp = model(tokens[:, :-1], key=key if train else None, targets=tokens[:, 1:])
    return schedule.masked_mean(-logp, valid[:, 1:])
