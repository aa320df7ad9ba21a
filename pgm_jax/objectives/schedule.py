"""Text diffusion pieces (spec §2): noise schedule, times, partitions and masking,
logit post-processing and the per-token loss terms the text losses (`objectives.text`) sum.

Log-linear schedule: alpha_t = 1 - (1 - eps) t with eps = 1e-3, alpha'_t = -(1 - eps).
PGM: partition g ~ Bernoulli(1 - alpha_t); group 1 (predicted from group 0) gets the MDLM
weight alpha'/(1 - alpha_t) = -1/t, group 0 gets alpha'/(1 - alpha_{1-t}) = -1/(1-t); the
training loss halves the sum, the validation NELBO keeps group 1 only. MDLM: tokens are
replaced by MASK with probability 1 - alpha_t and scored with SUBS log-probabilities.
Every loss is a per-token average over *valid* tokens (LM1B padding excluded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

EPS = 1e-3  # noise schedule epsilon and `sampling_eps` (hard-coded in the reference)
NEG_LARGE = -1e6  # MDLM's "large-finite" negative infinity


def alpha(t: Array) -> Array:
    """alpha_t = 1 - (1 - eps) * t."""
    return 1.0 - (1.0 - EPS) * t


DALPHA = -(1.0 - EPS)


def antithetic_t(key: Array, n: int) -> Array:
    """Stratified times float32 [n]: t_i = (1-eps)((u_i/n + i/n) mod 1) + eps.

    Drawn over the *global* batch so each device's contiguous slice is one stratum (§2.2).
    """
    u = jax.random.uniform(key, (n,), jnp.float32)
    return stratify(u)


def batch_times(key: Array, batch: dict[str, Array]) -> Array:
    """Times float32 [b] for a (micro-)batch: `batch["t"]` when the train step drew them over
    the global batch and sliced them (gradient accumulation), else `antithetic_t` over it."""
    return batch["t"] if "t" in batch else antithetic_t(key, batch["tokens"].shape[0])


def stratify(u: Array) -> Array:
    """The reference's antithetic mapping of uniforms `u` [n] to times [n]."""
    n = u.shape[0]
    offsets = jnp.arange(n, dtype=jnp.float32) / n
    return (1.0 - EPS) * jnp.mod(u / n + offsets, 1.0) + EPS


def sample_partition(key: Array, t: Array, shape: tuple[int, int]) -> Array:
    """g int32 [batch, L]: g = 1 with probability 1 - alpha_t (per token, per example)."""
    u = jax.random.uniform(key, shape, jnp.float32)
    return (u < (1.0 - alpha(t))[:, None]).astype(jnp.int32)


def mask_tokens(key: Array, x0: Array, t: Array, mask_index: int) -> Array:
    """MDLM forward process: x_t = MASK where U < 1 - alpha_t, else x0."""
    u = jax.random.uniform(key, x0.shape, jnp.float32)
    return jnp.where(u < (1.0 - alpha(t))[:, None], mask_index, x0)


# ----------------------------------------------------------------------------- post-processing
def pgm_logprobs(logits: Array, mask_index: int) -> Array:
    """PGM post-processing: MASK logit = -inf, then log_softmax (float32) [..., V]."""
    logits = logits.astype(jnp.float32).at[..., mask_index].set(-jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def subs_logprobs(logits: Array, xt: Array, mask_index: int) -> Array:
    """MDLM SUBS: MASK logit += -1e6, normalise, carry over unmasked tokens (log p = 0)."""
    logits = logits.astype(jnp.float32).at[..., mask_index].add(NEG_LARGE)
    lp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    carry = jnp.where(jax.nn.one_hot(xt, lp.shape[-1], dtype=bool), 0.0, NEG_LARGE)
    return jnp.where((xt != mask_index)[..., None], carry, lp)


# ----------------------------------------------------------------------------- losses
def pgm_token_nll(logp_x0: Array, groups: Array, t: Array, *, train: bool) -> Array:
    """Per-token PGM loss terms float32 [batch, L] (positive).

    logp_x0: log p(x0_i) [batch, L]; groups: [batch, L]; t: [batch]. Training halves the
    two-sided sum; evaluation keeps group 1 only (the MDLM NELBO estimator).
    """
    g1 = groups.astype(bool)
    t = t[:, None]
    coef = jnp.where(g1, DALPHA / (1.0 - alpha(t)), DALPHA / (1.0 - alpha(1.0 - t)))
    nll = coef * logp_x0
    return nll / 2.0 if train else jnp.where(g1, nll, 0.0)


def mdlm_token_nll(logp_x0: Array, xt: Array, t: Array, mask_index: int) -> Array:
    """MDLM per-token loss float32 [batch, L]: (alpha'/(1-alpha_t)) log p on masked, else 0."""
    coef = DALPHA / (1.0 - alpha(t))[:, None]
    return jnp.where(xt == mask_index, coef * logp_x0, 0.0)


def masked_mean(token_nll: Array, valid: Array) -> tuple[Array, Array]:
    """(sum of token_nll * valid, number of valid tokens), both float32 scalars."""
    valid = valid.astype(jnp.float32)
    return jnp.sum(token_nll * valid), jnp.sum(valid)


def sigma_of(t: Array) -> Array:
    """sigma_t = -log(alpha_t) [batch]: what a time-conditioned backbone is fed (spec §2.1)."""
    return -jnp.log(alpha(t))


def complement_mask(x0: Array, xt: Array, mask_index: int) -> Array:
    """x_t^c: masks exactly the tokens x_t left visible (and unmasks the others)."""
    return jnp.where(xt == x0, mask_index, x0)


def complement_mdlm_token_nll(logp_x0: Array, logp_x0_comp: Array, x0: Array, xt: Array,
                              t: Array, mask_index: int) -> Array:
    """Complementary-masking MDLM training terms float32 [batch, L] (spec §2.7).

    logp_x0 / logp_x0_comp: log p(x0_i) [batch, L] from the passes on x_t (time t) and on
    x_t^c (time 1 - t). Each token is scored by the pass that masks it, with that pass's MDLM
    weight; the sum is halved, like PGM's two-sided training loss.
    """
    orig = mdlm_token_nll(logp_x0, xt, t, mask_index)
    comp = mdlm_token_nll(logp_x0_comp, complement_mask(x0, xt, mask_index), 1.0 - t, mask_index)
    return jnp.where(xt != x0, orig, comp) / 2.0
