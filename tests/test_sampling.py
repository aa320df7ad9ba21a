"""Samplers: complete decoding, schedules, device-count invariance, exact draw distributions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomized_model, tiny_config

from pgm_jax import sharding
from pgm_jax.objectives import schedule
from pgm_jax.sampling import ar, generate, mdlm, pgm
from pgm_jax.sampling.categorical import (
    block_size,
    gumbel_argmax_float32,
    sample_logits,
    top_p_filter,
    x64_scope,
)

L, V, MASK = 32, 64, 63


def split(cfg):
    graphdef, params = nnx.split(randomized_model(cfg))
    return graphdef, nnx.to_pure_dict(params)


# One block per stack: the samplers' loops compile twice as fast, and test the same code.
@pytest.fixture(scope="module")
def pgm_model():
    cfg = tiny_config(encoder_blocks=1, decoder_blocks=1)
    return (cfg, *split(cfg))


@pytest.fixture(scope="module")
def mdlm_model():
    cfg = tiny_config(kind="mdlm_dit", n_blocks=1)
    return (cfg, *split(cfg))


@pytest.fixture(scope="module")
def mesh8():
    return sharding.inference_mesh()


def chi2_critical(df: int, z: float = 4.26) -> float:
    """Upper chi-square quantile (Wilson-Hilferty), z = 4.26: p ~ 1e-5."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson statistic with categories of expected count < 5 pooled; (stat, dof)."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep])), int(keep.sum()) - 1


# ----------------------------------------------------------------------------- schedules
def test_uniform_schedule_decodes_each_position_once():
    counts = pgm.uniform_counts(3, L, 8)
    assert counts.shape == (3, 8) and (counts[:, :-1] == 4).all() and (counts[:, -1] == 3).all()
    # S = L: the last call would decode nothing and is dropped (the reference still calls).
    assert pgm.uniform_counts(2, L, L).shape == (2, L - 1)


def test_binomial_schedule_sums_to_length_and_plans_buckets():
    counts = pgm.binomial_counts(jax.random.key(3), 16, 256, 16)
    assert (counts.sum(axis=1) == 255).all() and (counts >= 0).all()
    assert (counts.max(axis=0) > 0).all()  # no call that decodes nothing
    segments = pgm.plan_segments(counts, 256, 64, exact_width=False)
    assert segments[0].first == 0 and segments[-1].last == counts.shape[1]
    before = np.cumsum(counts, axis=1) - counts
    for seg in segments:
        calls = slice(seg.first, seg.last)
        assert (1 + before[:, calls] <= seg.bucket).all()  # every clean prefix fits its bucket
        assert (counts[:, calls] <= seg.width).all() and seg.width & (seg.width - 1) == 0
    # Mean tokens per call over the regular calls: L * dt.
    draws = pgm.binomial_counts(jax.random.key(4), 512, 256, 16)[:, :8]
    assert abs(draws.mean() - 256 * (1 - 1e-5) / 16) < 0.2


# ----------------------------------------------------------------------------- complete samples
PGM_KW = dict(num_samples=8, length=L, steps=8, bos_id=MASK)


@pytest.fixture(scope="module")
def pgm_samples(pgm_model):
    """mode -> int32 [8, L] PGM samples (uniform: encoder buckets of 16 tokens, 2 compiled
    shapes; the bucket planning of ragged schedules is tested on its own above).

    BOS = MASK as a sentinel: the sampler never draws MASK, so a position left unwritten would
    still hold it.
    """
    cfg, graphdef, params = pgm_model
    return {mode: np.asarray(pgm.sample(graphdef, params, jax.random.key(0), mode=mode,
                                        bucket=16 if mode == "efficient-uniform" else L,
                                        **PGM_KW)) for mode in pgm.MODES}


@pytest.mark.parametrize("mode", pgm.MODES)
def test_pgm_sample_fills_every_position(pgm_samples, mode):
    x = pgm_samples[mode]
    assert x.shape == (8, L) and (x[:, 0] == MASK).all()
    assert not (x[:, 1:] == MASK).any()
    assert len({tuple(r) for r in x}) == 8


def test_pgm_buckets_do_not_change_samples(pgm_model, pgm_samples):
    cfg, graphdef, params = pgm_model
    padded = pgm.sample(graphdef, params, jax.random.key(0), bucket=L, **PGM_KW)
    np.testing.assert_array_equal(pgm_samples["efficient-uniform"], padded)


@pytest.mark.parametrize("kind", ["pgm", "mdlm_dit"])
def test_same_sample_on_one_and_eight_devices(pgm_model, mdlm_model, mesh8, kind):
    cfg, graphdef, params = pgm_model if kind == "pgm" else mdlm_model
    kw = dict(num_samples=8, steps=8, bos_id=1)
    one = generate(graphdef, params, cfg, jax.random.key(7), **kw)
    eight = generate(graphdef, params, cfg, jax.random.key(7),
                     batch_sharding=sharding.batch_sharding(mesh8), **kw)
    assert len(eight.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(one), np.asarray(eight))
    assert not (np.asarray(one) == MASK).any() and (np.asarray(one)[:, 0] == 1).all()


def test_mdlm_cache_gives_the_same_samples(mdlm_model):
    cfg, graphdef, params = mdlm_model
    # 128 steps for 31 tokens: most steps reveal nothing and reuse the cached features.
    kw = dict(num_samples=2, length=L, steps=128, bos_id=1, mask_id=MASK)
    cached = mdlm.sample(graphdef, params, jax.random.key(2), **kw)
    plain = mdlm.sample(graphdef, params, jax.random.key(2), cache=False, **kw)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(plain))
    assert not (np.asarray(cached) == MASK).any()


def test_ar_sampler_matches_a_plain_greedy_loop():
    cfg = tiny_config(kind="ar", n_blocks=1)
    model = randomized_model(cfg)
    graphdef, params = nnx.split(model)
    x = np.asarray(ar.sample(graphdef, nnx.to_pure_dict(params), jax.random.key(0),
                             num_samples=2, length=L, bos_id=1, temperature=0.0, bucket=16))
    forward = jax.jit(lambda tokens: schedule.pgm_logprobs(model(tokens), MASK))
    ref = np.full((2, L), 1, np.int32)
    for i in range(L - 1):  # the whole sequence every call (what follows i is still BOS)
        ref[:, i + 1] = np.asarray(jnp.argmax(forward(jnp.asarray(ref))[:, i], -1))
    np.testing.assert_array_equal(x, ref)


# ----------------------------------------------------------------------------- draw distributions
@pytest.fixture(scope="module")
def first_call(pgm_model):
    """The sampler's first network call on N rows sharing one decoding order.

    Returns (draw(float64, top_p) -> int [N, k] tokens, logits [k, V] of that call).
    """
    cfg, graphdef, params = pgm_model
    n, k = 4096, 4
    order = np.concatenate([[0], np.arange(L - 1, 0, -1), np.zeros(k, int)]).astype(np.int32)
    positions = jnp.asarray(np.tile(order, (n, 1)))
    counts = jnp.full((n, 1), k, jnp.int32)
    logits = nnx.merge(graphdef, params).infer(  # BOS (id 1) alone at position 0, unpadded
        jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32), positions[:1, 1:1 + k],
        jnp.ones((1,), jnp.int32))

    def draw(float64: bool, top_p: float = 1.0) -> np.ndarray:
        packed = jnp.full(positions.shape, 1, jnp.int32)
        with x64_scope(float64):
            packed = pgm._run_segment(graphdef, params, packed, positions,
                                      jnp.zeros_like(counts), counts, jax.random.key(11), 0, 1,
                                      bucket=8, width=k, top_p=top_p, temperature=1.0,
                                      float64=float64)
        return np.asarray(packed)[:, 1:1 + k]

    return draw, np.asarray(logits[0], np.float64)


@pytest.mark.parametrize("float64", [False, True])
def test_first_call_draws_follow_softmax(first_call, float64):
    draw, logits = first_call
    tokens = draw(float64)
    logits[:, MASK] = -np.inf
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for j in range(tokens.shape[1]):
        counts = np.bincount(tokens[:, j], minlength=V)
        stat, dof = chi2(counts, probs[j])
        assert stat < chi2_critical(dof), (j, stat, dof)
        # The test has power: a distribution a little off (temperature 1.15) is rejected.
        off = probs[j] ** (1 / 1.15)
        assert chi2(counts, off / off.sum())[0] > chi2_critical(dof)


def test_top_p_never_leaves_the_nucleus(first_call):
    draw, logits = first_call
    tokens = draw(False, top_p=0.6)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)  # the nucleus is built before MASK removal
    for j in range(tokens.shape[1]):
        order = np.argsort(-probs[j])
        size = int(np.searchsorted(np.cumsum(probs[j][order]), 0.6)) + 1
        nucleus = set(order[:size].tolist())
        assert set(np.unique(tokens[:, j]).tolist()) <= nucleus
        assert len(nucleus) < V // 2  # the filter really removes most of the vocabulary


def test_top_p_filter_and_greedy_on_known_rows():
    logits = jnp.log(jnp.array([[0.1, 0.5, 0.05, 0.35], [0.25, 0.25, 0.25, 0.25]]))
    kept = np.isfinite(np.asarray(top_p_filter(logits, 0.8)))
    np.testing.assert_array_equal(kept, [[False, True, False, True], [True] * 4])
    greedy = sample_logits(jax.random.key(0), logits, mask_index=1, temperature=0.0)
    np.testing.assert_array_equal(greedy, [3, 0])  # MASK (index 1) is never drawn


def test_two_level_draw_matches_softmax_with_empty_blocks():
    """V = 21 in blocks of 8 (the last one padded); a whole block and single tokens at -inf."""
    assert block_size(21) == 8 and block_size(50258) == 256
    rng = np.random.default_rng(0)
    scores = rng.normal(size=21) * 1.5
    scores[8:16] = -np.inf
    scores[[3, 20]] = -np.inf
    n = 50_000
    rows = jnp.tile(jnp.asarray(scores, jnp.float32), (n, 1))
    draws = jax.jit(gumbel_argmax_float32)(jax.random.key(1), rows)
    counts = np.bincount(np.asarray(draws), minlength=21)
    probs = np.exp(scores - scores[np.isfinite(scores)].max())
    probs /= probs.sum()
    assert counts[np.isinf(scores)].sum() == 0
    stat, dof = chi2(counts, probs)
    assert stat < chi2_critical(dof)
