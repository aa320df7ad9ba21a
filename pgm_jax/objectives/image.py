"""Image training objectives (spec pgm_image.md §3): the arccos partition / mask schedule and
the losses of the image PGM and the MaskGIT baseline, as the reference trainer computes them.

Both draw r ~ U(0, 1) per image and p = arccos(r) / (pi / 2) (E[p] = 2 / pi), then one iid
Bernoulli(p) bit per position (`utils/masking_scheduler.py:get_mask_code`, "arccos"):
* image PGM: the bits are the partition (1 = group 1) of [BOS, codes], BOS forced to group 0;
  nothing is replaced, every image token is predicted from the other group, and the loss is the
  mean cross-entropy over all B x N image tokens (mask column at -1e6, no ELBO weight);
* MaskGIT: bit 1 replaces the code by the mask id; the loss is the mean cross-entropy over all
  B x N tokens, visible ones included (the reference reconstructs every token).
Labels are replaced by the null class with probability `label_dropout` (§3.3), in training
and, as the reference's `eval_one_epoch` does, in evaluation; evaluation turns dropout off.
One deliberate difference: the reference evaluates MaskGIT with `get_mask_code(value=-1)`, which
masks nothing (its validation loss scores an identity map); ours masks as in training.
Every loss returns (sum of token NLLs, number of tokens), like `schedule.masked_mean`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pgm_jax.models.heads import target_logprob

Array = jax.Array
Batch = dict[str, Array]


def arccos_ratio(key: Array, batch: int) -> Array:
    """p float32 [B] = arccos(r) / (pi / 2), r ~ U(0, 1): the fraction of group-1 / masked
    positions."""
    r = jax.random.uniform(key, (batch,), jnp.float32)
    return jnp.arccos(r) / (math.pi / 2)


def bernoulli_bits(key: Array, p: Array, shape: tuple[int, int]) -> Array:
    """int32 [B, L]: 1 with probability p[b], iid over positions (group sizes are binomial,
    0 and L included)."""
    return (jax.random.uniform(key, shape, jnp.float32) < p[:, None]).astype(jnp.int32)


def pgm_partition(key: Array, shape: tuple[int, int]) -> Array:
    """groups int32 [B, N+1] for [BOS, codes]: arccos-scheduled bits, BOS in group 0."""
    k_r, k_b = jax.random.split(key)
    groups = bernoulli_bits(k_b, arccos_ratio(k_r, shape[0]), shape)
    return groups.at[:, 0].set(0)


def mask_codes(key: Array, codes: Array, mask_id: int) -> tuple[Array, Array]:
    """(masked codes int32 [B, N], mask bool [B, N]): arccos-scheduled mask-id replacement."""
    k_r, k_b = jax.random.split(key)
    mask = bernoulli_bits(k_b, arccos_ratio(k_r, codes.shape[0]), codes.shape).astype(bool)
    return jnp.where(mask, mask_id, codes), mask


def drop_labels(key: Array, batch: int, rate: float) -> Array:
    """drop_label bool [B]: True with probability `rate` (the null class replaces the label)."""
    return jax.random.uniform(key, (batch,), jnp.float32) < rate


def with_bos(codes: Array, bos_id: int) -> Array:
    """codes int [B, N] -> [BOS, codes] int32 [B, N+1]."""
    bos = jnp.full((codes.shape[0], 1), bos_id, jnp.int32)
    return jnp.concatenate([bos, codes.astype(jnp.int32)], axis=1)


def pgm_logits_nll(logits: Array, x: Array, mask_index: int) -> Array:
    """The reference's per-token PGM cross-entropy float32 [B, N] from training logits
    [B, N+1, V] and inputs x [B, N+1]: mask column excluded (-1e6 there), BOS row dropped."""
    return -target_logprob(logits, x, mask_index)[:, 1:]


def maskgit_logits_nll(logits: Array, codes: Array) -> Array:
    """MaskGIT per-token cross-entropy float32 [B, N] over every logit column."""
    return -target_logprob(logits, codes, -1)


def _token_count(nll: Array) -> tuple[Array, Array]:
    return jnp.sum(nll), jnp.asarray(nll.size, jnp.float32)


def image_pgm_loss(model, batch: Batch, key: Array, train: bool) -> tuple[Array, Array]:
    """(sum of image-token NLLs, B * N) for batch {"tokens": int32 [B, N], "label": int32 [B]}.

    `train` switches the model's dropout on; the partition and label dropout are drawn alike.
    """
    cfg = model.cfg
    k_part, k_label, k_drop = jax.random.split(key, 3)
    x = with_bos(batch["tokens"], cfg.image_bos_id)
    # A batch may fix the draws (fixture parity feeds the reference's partition and drops).
    groups = batch["groups"] if "groups" in batch else pgm_partition(k_part, x.shape)
    drop = (batch["drop_label"] if "drop_label" in batch
            else drop_labels(k_label, x.shape[0], cfg.label_dropout))
    logp = model(x, groups, batch["label"], drop, key=k_drop if train else None, targets=x)
    return _token_count(-logp[:, 1:])


def maskgit_loss(model, batch: Batch, key: Array, train: bool) -> tuple[Array, Array]:
    """(sum of token NLLs over all B * N positions, B * N) for the MaskGIT baseline."""
    cfg = model.cfg
    k_mask, k_label, k_drop = jax.random.split(key, 3)
    codes = batch["tokens"].astype(jnp.int32)
    # A batch may fix the draws (fixture parity feeds the reference's masking and drops).
    masked = (batch["masked"] if "masked" in batch
              else mask_codes(k_mask, codes, cfg.mask_index)[0])
    drop = (batch["drop_label"] if "drop_label" in batch
            else drop_labels(k_label, codes.shape[0], cfg.label_dropout))
    logp = model(masked, batch["label"], drop, key=k_drop if train else None, targets=codes)
    return _token_count(-logp)
