"""Model invariants: partition independence, packed == training path, empty groups, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgm_jax.models import layers
from pgm_jax.models.config import PRE_QUERY_MODES
from pgm_jax.objectives import schedule
from tests.helpers import randomized_model, tiny_config

B, L = 3, 32


def _inputs(seed=0, vocab=63):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, (B, L)).astype(np.int32)
    g = (rng.random((B, L)) < 0.5).astype(np.int32)
    g[:, 0] = 0
    return x, g


@pytest.mark.parametrize("mode", PRE_QUERY_MODES)
def test_group1_predictions_ignore_group1_tokens(mode):
    model = randomized_model(tiny_config(swap_pre_query_mode=mode))
    x, g = _inputs()
    x2 = np.where(g == 1, (x + 17) % 63, x).astype(np.int32)
    a = model(jnp.asarray(x), jnp.asarray(g))
    b = model(jnp.asarray(x2), jnp.asarray(g))
    sel = g == 1
    np.testing.assert_allclose(np.asarray(a)[sel], np.asarray(b)[sel], atol=1e-5)
    # ... while group-0 predictions do depend on group-1 tokens.
    assert np.abs(np.asarray(a)[~sel] - np.asarray(b)[~sel]).max() > 1e-3


@pytest.mark.parametrize("mode,qp", [(m, "linear") for m in PRE_QUERY_MODES] + [("learn", "mlp4")])
def test_packed_inference_equals_training_path(mode, qp):
    """Training-mode group-1 logits == packed forward on shuffled clean tokens (+ padding)."""
    model = randomized_model(tiny_config(swap_pre_query_mode=mode, swap_query_process_mode=qp))
    x, g = _inputs(1)
    train_logits = np.asarray(model(jnp.asarray(x), jnp.asarray(g)))
    rng = np.random.default_rng(2)
    n_c = int((g == 0).sum(1).max()) + 3  # extra padding columns
    n_q = int((g == 1).sum(1).min())
    cx = np.zeros((B, n_c), np.int32)
    cp = np.zeros((B, n_c), np.int32)
    qp_ = np.zeros((B, n_q), np.int32)
    lens = np.zeros((B,), np.int32)
    for b in range(B):
        clean = rng.permutation(np.flatnonzero(g[b] == 0))
        cx[b, : len(clean)], cp[b, : len(clean)], lens[b] = x[b, clean], clean, len(clean)
        cx[b, len(clean):] = 5  # padding must have no effect
        qp_[b] = rng.permutation(np.flatnonzero(g[b] == 1))[:n_q]
    inf = np.asarray(model.infer(jnp.asarray(cx), jnp.asarray(cp), jnp.asarray(qp_),
                                 jnp.asarray(lens)))
    expect = np.take_along_axis(train_logits, qp_[:, :, None], axis=1)
    np.testing.assert_allclose(inf, expect, atol=1e-4)


@pytest.mark.parametrize("kind", ["pgm", "mdlm_dit"])
def test_empty_groups_give_finite_uncontextual_predictions(kind):
    model = randomized_model(tiny_config(kind=kind))
    x, _ = _inputs(3)
    if kind == "mdlm_dit":
        out = model(jnp.full((B, L), 63, jnp.int32))
        assert np.isfinite(np.asarray(out)).all()
        return
    for fill in (0, 1):  # one group empty: no admissible key for the other group's queries
        logits = np.asarray(model(jnp.asarray(x), jnp.full((B, L), fill, jnp.int32)))
        assert np.isfinite(logits).all()
        # Safe softmax: attention outputs zeros, so predictions do not depend on the tokens.
        other = np.asarray(model(jnp.asarray((x + 1) % 63), jnp.full((B, L), fill, jnp.int32)))
        np.testing.assert_allclose(logits, other, atol=1e-5)


def test_safe_softmax_zero_rows_and_gradients():
    q = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
    k = jax.random.normal(jax.random.key(1), (1, 5, 2, 4))
    mask = jnp.array([[[True] * 5, [False] * 5, [True, False, False, False, False]]])
    out = layers.masked_attention(q, k, k, mask)
    assert np.all(np.asarray(out)[0, 1] == 0.0)
    np.testing.assert_allclose(np.asarray(out)[0, 2], np.asarray(k)[0, 0].reshape(-1), atol=1e-6)
    grad = jax.grad(lambda q: layers.masked_attention(q, k, k, mask).sum())(q)
    assert np.isfinite(np.asarray(grad)).all()


def test_loss_weights_match_hand_computation():
    t = jnp.array([0.25, 0.9])
    g = jnp.array([[1, 0, 1], [0, 0, 1]])
    logp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]])
    train = np.asarray(schedule.pgm_token_nll(logp, g, t, train=True))
    val = np.asarray(schedule.pgm_token_nll(logp, g, t, train=False))
    eps = 1e-3
    for b in range(2):
        tb = float(t[b])
        w1 = (1 - eps) / ((1 - eps) * tb)  # alpha'/(1-alpha_t), sign folded: = 1/t
        w0 = (1 - eps) / ((1 - eps) * (1 - tb))  # = 1/(1-t)
        for i in range(3):
            w = w1 if g[b, i] else w0
            np.testing.assert_allclose(train[b, i], -w * float(logp[b, i]) / 2, rtol=1e-6)
            np.testing.assert_allclose(val[b, i], -w1 * float(logp[b, i]) if g[b, i] else 0.0,
                                       rtol=1e-6)
    total, count = schedule.masked_mean(jnp.asarray(train), jnp.array([[1, 1, 0], [1, 1, 1]]))
    np.testing.assert_allclose(float(total / count), train.ravel()[[0, 1, 3, 4, 5]].mean(),
                               rtol=1e-6)


def test_antithetic_times_are_stratified():
    t = np.asarray(schedule.antithetic_t(jax.random.key(0), 8))
    strata = np.floor((t - 1e-3) / (1 - 1e-3) * 8)
    assert sorted(strata.tolist()) == list(range(8)) or len(set(strata.tolist())) >= 7
    assert (t >= 1e-3).all() and (t < 1).all()


def test_partition_rate_follows_schedule():
    t = jnp.full((4096,), 0.3)
    g = np.asarray(schedule.sample_partition(jax.random.key(1), t, (4096, 16)))
    assert abs(g.mean() - (1 - 1e-3) * 0.3) < 0.01


def test_cpu_query_chunks_equal_one_block_including_empty_rows():
    """masked_attention's CPU query chunking (scores above 16 MiB) changes nothing: same
    outputs as one block, rows without an allowed key are zeros in both."""
    b, n, h, d = 4, 1024, 4, 8
    kq, kk, kv, km = jax.random.split(jax.random.key(3), 4)
    q, k, v = (jax.random.normal(key, (b, n, h, d)) for key in (kq, kk, kv))
    mask = jax.random.bernoulli(km, 0.3, (b, n, n)).at[:, 5].set(False)  # row 5: no key

    def dots(fn) -> int:
        return str(jax.make_jaxpr(fn)(q, k, v, mask)).count("dot_general")

    chunked = jax.jit(lambda *a: layers.masked_attention(*a))
    assert dots(chunked) == 2 * 4  # 256-query chunks: 4 x (scores, values)
    whole = jax.jit(lambda *a: layers.masked_attention(*a, cpu_chunks=False))
    assert dots(whole) == 2
    out_whole = whole(q, k, v, mask)
    out_chunked = chunked(q, k, v, mask)
    np.testing.assert_allclose(out_chunked, out_whole, atol=1e-6)
    assert not np.asarray(out_chunked[:, 5]).any()
