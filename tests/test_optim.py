"""Optimizer values against the reference (spec: AdamW, linear warm-up then constant, global-norm
clipping 1.0, EMA warm-up min(decay, (1 + k) / (10 + k)) at update k = 1, 2, ...)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from pgm_jax.schema import default_config
from pgm_jax.train.optim import learning_rate_schedule, make_optimizer
from pgm_jax.train.step import ema_decay_at


def _optim(**overrides) -> ConfigDict:
    c = default_config().optim
    c.update(overrides)
    return c


def test_ema_warm_up_values():
    # Optimizer step 0 is the reference's first EMA update (k = 1): 2 / 11.
    steps = jnp.array([0, 1, 8, 98, 10**6])
    got = np.asarray(ema_decay_at(steps, 0.9999))
    k = np.array([1, 2, 9, 99, 10**6 + 1], np.float64)
    np.testing.assert_allclose(got, np.minimum(0.9999, (1 + k) / (10 + k)), rtol=1e-6)
    assert got[0] == pytest.approx(2 / 11) and got[-1] == pytest.approx(0.9999)
    np.testing.assert_allclose(np.asarray(ema_decay_at(jnp.array(5), 0.5)), 7 / 16)  # k = 6
    np.testing.assert_allclose(np.asarray(ema_decay_at(jnp.array(100), 0.5)), 0.5)


def test_constant_schedule_with_linear_warm_up():
    """transformers.get_constant_schedule_with_warmup: lr * s / warmup for s < warmup, then lr."""
    lr = learning_rate_schedule(_optim(lr=3e-4, warmup_steps=2500, schedule="constant"), 10**6)
    for s, want in [(0, 0.0), (1, 3e-4 / 2500), (1250, 1.5e-4), (2500, 3e-4), (10**5, 3e-4)]:
        assert float(lr(s)) == pytest.approx(want, rel=1e-4, abs=1e-12), s


def test_cosine_schedule_after_warm_up():
    cfg = _optim(lr=1e-3, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1)
    lr = learning_rate_schedule(cfg, 550)
    assert float(lr(25)) == pytest.approx(5e-4, rel=1e-5)
    assert float(lr(50)) == pytest.approx(1e-3, rel=1e-5)
    # Half-way through the 500 decay steps: alpha + (1 - alpha) * (1 + cos(pi / 2)) / 2.
    assert float(lr(300)) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(lr(550)) == pytest.approx(1e-4, rel=1e-5)


def test_gradients_are_clipped_to_the_global_norm_before_adamw():
    """Two steps with gradients of global norm 10 and 0.5: the optimizer must equal AdamW fed
    the first gradient rescaled to norm `grad_clip` (Adam's moments remember the scale, so an
    unclipped first step gives a different second update)."""
    cfg = _optim(lr=1e-2, warmup_steps=0, schedule="constant", grad_clip=1.0)
    g1 = {"w": jnp.array([6.0, 8.0])}  # norm 10
    g2 = {"w": jnp.array([0.3, -0.4])}  # norm 0.5, under the threshold
    params = {"w": jnp.zeros(2)}

    def two_updates(tx, grads):
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(np.asarray(u["w"]))
        return out

    adamw = optax.adamw(learning_rate_schedule(cfg, 100), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay)
    got = two_updates(make_optimizer(cfg, 100), [g1, g2])
    want = two_updates(adamw, [{"w": g1["w"] / 10.0}, g2])
    unclipped = two_updates(adamw, [g1, g2])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    assert np.max(np.abs(unclipped[1] - want[1])) > 1e-4  # the test can tell the difference
