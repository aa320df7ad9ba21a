"""Continuation log-likelihoods (pgm_jax.eval.likelihood): AR exact, PGM / MDLM Monte-Carlo."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomized_model, tiny_config

from pgm_jax.eval.likelihood import Scorer
from pgm_jax.objectives import schedule

L, MASK, BOS, EOS = 32, 63, 1, 2


@pytest.fixture(scope="module")
def models():
    out = {}
    for kind, cfg in (("pgm", tiny_config(encoder_blocks=1, decoder_blocks=1)),
                      ("mdlm_dit", tiny_config(kind="mdlm_dit", n_blocks=1)),
                      ("ar", tiny_config(kind="ar", n_blocks=1))):
        model = randomized_model(cfg)
        graphdef, params = nnx.split(model)
        out[kind] = (cfg, model, graphdef, nnx.to_pure_dict(params))
    return out


def scorer(models, kind, **kw):
    cfg, _, graphdef, params = models[kind]
    return Scorer(graphdef, params, cfg, bos_id=BOS, eos_id=EOS, **kw)


CTX, CONT = [5, 9, 13, 17, 21], [30, 31, 32]


def test_ar_is_exact(models):
    cfg, model, *_ = models["ar"]
    seq = jnp.asarray([[BOS, *CTX, *CONT]])
    logp = np.asarray(model(seq[:, :-1], targets=seq[:, 1:]))[0]
    ll, greedy = scorer(models, "ar").loglikelihood(CTX, CONT)
    np.testing.assert_allclose(ll, logp[-3:].sum(), rtol=1e-5)
    best = np.asarray(jnp.argmax(schedule.pgm_logprobs(model(seq[:, :-1]), MASK), -1))[0]
    assert greedy == bool((best[-3:] == CONT).all())
    ll_greedy, is_greedy = scorer(models, "ar").loglikelihood(CTX, [int(best[len(CTX)])])
    assert is_greedy
    joint, _ = scorer(models, "ar", joint=True).loglikelihood(CTX, CONT)
    seq = jnp.asarray([[BOS, *CTX, *CONT, EOS]])
    np.testing.assert_allclose(joint, np.asarray(model(seq[:, :-1], targets=seq[:, 1:])).mean(),
                               rtol=1e-5)


def next_logprobs(models, kind, ctx) -> np.ndarray:
    """log p(. | [BOS] + ctx) float [V] at the next position, noised (PGM group 1 / MASK)."""
    cfg, model, *_ = models[kind]
    seq = jnp.asarray([[BOS, *ctx, 0]])
    noised = jnp.zeros(seq.shape, jnp.int32).at[0, -1].set(1)
    if kind == "pgm":
        logits = model(seq, noised)
    else:
        logits = model(jnp.where(noised == 1, MASK, seq))
    return np.asarray(schedule.pgm_logprobs(logits, MASK))[0, -1]


def exact_one_token(models, kind, ctx, token):
    return float(next_logprobs(models, kind, ctx)[token])


@pytest.mark.parametrize("kind", ["pgm", "mdlm_dit"])
def test_one_token_conditional_estimate_matches_the_exact_value(models, kind):
    """One continuation token: E[ELBO] = (1 - eps) log p(token | context) (noised w.p. (1-eps)t,
    weight 1/t); 4096 antithetic samples put the estimate within a few percent."""
    exact = exact_one_token(models, kind, CTX, 40)
    ll, _ = scorer(models, kind, num_mc_samples=4096, mc_batch=4096).loglikelihood(CTX, [40])
    np.testing.assert_allclose(ll, (1 - schedule.EPS) * exact, rtol=0.15)
    # The context matters: another context gives another value.
    other = exact_one_token(models, kind, [50, 51, 52, 53, 54], 40)
    assert abs(other - exact) > 0.05


@pytest.mark.parametrize("kind", ["pgm", "mdlm_dit"])
def test_greedy_and_limits(models, kind):
    cfg, model, *_ = models[kind]
    s = scorer(models, kind, num_mc_samples=8)
    best = int(np.argmax(next_logprobs(models, kind, CTX)))
    assert s.loglikelihood(CTX, [best])[1] and not s.loglikelihood(CTX, [best ^ 1])[1]
    long_ctx = list(range(4, 44))  # BOS + 40 + 3 > L
    assert scorer(models, kind, joint=True, num_mc_samples=8).loglikelihood(long_ctx, CONT) == \
        (0.0, False)
    ll, _ = s.loglikelihood(long_ctx, CONT)  # conditional: the oldest context is dropped
    assert ll < 0 and ll == pytest.approx(s.loglikelihood(long_ctx[-(L - 4):], CONT)[0],
                                          rel=0.5)
    joint, _ = scorer(models, kind, joint=True, num_mc_samples=64).loglikelihood(CTX, CONT)
    assert joint < 0  # a per-token average over the 10 joint positions
    rolled = s.loglikelihood_rolling(list(range(4, 44)))
    assert rolled < 0 and np.isfinite(rolled)
