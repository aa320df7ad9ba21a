"""The attention entry point: segment-id masks, the fused kernel (splash, in Pallas interpret
mode on CPU) against the dense oracle in forward and gradients, and a full train step with
each fused kernel (splash, tokamax; tokamax's kernel tests: test_attention_tokamax.py).

Edge cases in one batch of 4 sequences of an odd length (77 queries / keys, padded to 128
inside splash): random groups in 2 packed documents, one group only (every cross-attention
row empty), the other group only, random groups in one document.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgm_jax.models import attention as attn
from pgm_jax.models import layers

B, N, NK, H, D = 4, 77, 79, 2, 8


def _inputs(nk: int = N):
    kq, kk, kv, kg, kd = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(kq, (B, N, H, D))
    k, v = (jax.random.normal(key, (B, nk, H, D)) for key in (kk, kv))
    g = jax.random.bernoulli(kg, 0.5, (B, N)).astype(jnp.int32)
    g = g.at[1].set(0).at[2].set(1)  # one-group sequences: cross rows have no key
    doc = jnp.zeros((B, N), jnp.int32).at[0, N // 3:].set(1)  # two packed documents in row 0
    return q, k, v, g, doc


def _cases():
    q, k, v, g, doc = _inputs()
    _, k2, v2, _, _ = _inputs(NK)
    valid = jnp.arange(NK)[None] < jnp.array([NK, 0, 1, 63])[:, None]  # key padding
    return {
        "encoder": (q, k, v, attn.Segments.groups(g, doc)),
        "cross": (q, k, v, attn.Segments.groups(g, doc, cross=True)),
        "key_padding": (q, k2, v2, attn.Segments.key_valid(valid)),
        "causal": (q, k, v, attn.Segments(causal=True)),
        "full_odd_kv": (q, k2, v2, attn.Segments()),
    }


def _value_and_grads(kind: str, q, k, v, seg):
    def f(q, k, v):
        return attn.attention(q, k, v, seg, kind=kind, platform="cpu")

    out, vjp = jax.vjp(f, q, k, v)
    cot = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
    return out, vjp(cot)


@pytest.fixture(scope="module")
def errors():
    """Max abs error of splash vs dense per case: (output, dq, dk, dv), and the outputs."""
    result = {}
    for name, (q, k, v, seg) in _cases().items():
        dense = jax.jit(lambda *a, seg=seg: _value_and_grads("dense", *a, seg))(q, k, v)
        fused = jax.jit(lambda *a, seg=seg: _value_and_grads("splash", *a, seg))(q, k, v)
        errs = [float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree.leaves(dense), jax.tree.leaves(fused), strict=True)]
        result[name] = (errs, dense, fused, seg)
    return result


@pytest.mark.parametrize("name", ["encoder", "cross", "key_padding", "causal", "full_odd_kv"])
def test_splash_matches_dense_forward_and_gradients(errors, name):
    errs, *_ = errors[name]
    print(name, "max abs err (out, dq, dk, dv):", ", ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < 2e-5, errs


def test_rows_without_keys_are_exactly_zero_in_outputs_and_gradients(errors):
    _, (out_d, (dq_d, _, _)), (out_f, (dq_f, _, _)), seg = errors["cross"]
    has_key = np.asarray(seg.has_key())
    assert not has_key[1].any() and not has_key[2].any() and has_key[0].any()
    for out, dq in ((out_d, dq_d), (out_f, dq_f)):
        out, dq = np.asarray(out), np.asarray(dq)
        assert (out[~has_key] == 0).all() and (dq[~has_key] == 0).all()
        assert np.abs(out[has_key]).min(axis=-1).max() > 0


def test_segments_describe_the_pgm_masks():
    _, _, _, g, doc = _inputs()
    same_doc = doc[:, :, None] == doc[:, None, :]
    same_group = g[:, :, None] == g[:, None, :]
    enc = attn.Segments.groups(g, doc).dense_mask(N, N)
    cross = attn.Segments.groups(g, doc, cross=True).dense_mask(N, N)
    np.testing.assert_array_equal(enc, same_doc & same_group)
    np.testing.assert_array_equal(cross, same_doc & ~same_group)
    # has_key is computed in O(L) and agrees with the dense mask.
    for seg, mask in ((attn.Segments.groups(g, doc, cross=True), cross),
                      (attn.Segments.groups(g, doc), enc)):
        np.testing.assert_array_equal(seg.has_key(), mask.any(-1))


def test_fused_kernel_builds_no_quadratic_array():
    """No [.., L, L] array (L = 300, padded to 384) in splash's forward + backward jaxpr
    outside the kernel; the dense path has them. (Traced only, not run. Splash broadcasts the
    ids over 128 lanes: [batch, 384, 128] is O(L).)"""
    n = 300
    kq, kg = jax.random.split(jax.random.key(1))
    q = k = v = jax.random.normal(kq, (1, n, H, D))
    seg = attn.Segments.groups(jax.random.bernoulli(kg, 0.5, (1, n)), cross=True)

    def shapes(kind):
        jaxpr = jax.make_jaxpr(lambda *a: _value_and_grads(kind, *a, seg))(q, k, v)
        out = set()

        def walk(jx):
            for eqn in jx.eqns:
                if eqn.primitive.name == "pallas_call":
                    continue  # inside the kernel: VMEM tiles, not HBM arrays
                out.update(tuple(o.aval.shape) for o in eqn.outvars if hasattr(o.aval, "shape"))
                for param in eqn.params.values():
                    for sub in param if isinstance(param, (tuple, list)) else (param,):
                        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                        if hasattr(sub, "eqns"):
                            walk(sub)

        walk(jaxpr.jaxpr)
        return out

    quadratic = lambda s: len(s) >= 2 and s[-1] >= n and s[-2] >= n
    assert any(quadratic(s) for s in shapes("dense"))
    assert not [s for s in shapes("splash") if quadratic(s)]


def test_resolve_and_validation():
    assert attn.resolve("auto", "tpu") == "splash"
    assert attn.resolve("auto", "cpu") == "dense" and attn.resolve("auto", "gpu") == "tokamax"
    assert attn.resolve("splash", "cpu") == "splash"
    with pytest.raises(ValueError, match="model.attention"):
        attn.resolve("flash3", "tpu")
    from tests.helpers import tiny_config

    assert ("attention", "must be one of ('auto', 'dense', 'splash', 'tokamax')") in \
        tiny_config(attention="flash3").problems()


def test_dense_entry_point_equals_masked_attention_oracle():
    q, k, v, seg = _cases()["cross"]
    mask = seg.dense_mask(N, N)
    np.testing.assert_array_equal(
        attn.attention(q, k, v, seg, kind="dense", platform="cpu"),
        layers.masked_attention(q, k, v, mask))


# ----------------------------------------------------------------------------- whole models
def _train_step_result(kind: str, mesh, batch) -> tuple:
    """One PGM train step (packed documents, padding, tiny model) with `kind` attention,
    traced under a 2-device data mesh (the fused kernels run inside shard_map there)."""
    import optax
    from flax import nnx

    from pgm_jax import sharding
    from pgm_jax.objectives.losses import LOSSES
    from pgm_jax.train.step import init_state, make_train_step
    from tests.helpers import randomized_model, tiny_config

    cfg = tiny_config(attention=kind, attention_platform="cpu", encoder_blocks=1,
                      decoder_blocks=1, length=40)
    model = randomized_model(cfg)
    tx = optax.sgd(0.1)
    graphdef, _ = nnx.split(model)
    step = make_train_step(graphdef, LOSSES["pgm"], tx, 0.0, 1, 2)
    replicated, split = (jax.sharding.NamedSharding(mesh, spec) for spec in
                         (jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec("data")))
    jitted = jax.jit(sharding.traced_under(mesh, step), in_shardings=(replicated, split))
    state, metrics = jitted(init_state(model, tx, 0), batch)
    return state.params, metrics


@functools.cache
def _train_batch_and_mesh():
    from configs import base
    from pgm_jax import sharding

    axes = base.get_config().mesh
    axes.data, axes.fsdp = 2, 1
    mesh = sharding.make_mesh(dict(axes), jax.devices()[:2])
    kt = jax.random.key(5)
    tokens = jax.random.randint(kt, (4, 40), 0, 63)
    segment_ids = jnp.zeros((4, 40), jnp.int32).at[:, 17:].set(1).at[1, 30:].set(2)
    valid = jnp.ones((4, 40), jnp.int32).at[3, 25:].set(0)
    return mesh, {"tokens": tokens, "valid": valid, "segment_ids": segment_ids}


@functools.cache
def _train_step_cached(kind: str):
    return _train_step_result(kind, *_train_batch_and_mesh())


@pytest.mark.parametrize("kind", ["splash", "tokamax"])
def test_pgm_train_step_with_fused_kernel_equals_dense(kind):
    """One PGM train step with `kind` attention equals the dense step (the dense one is
    computed once for both kernels)."""
    p_dense, m_dense = _train_step_cached("dense")
    p_fused, m_fused = _train_step_cached(kind)
    np.testing.assert_allclose(m_fused["loss"], m_dense["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_fused["grad_norm"], m_dense["grad_norm"], rtol=1e-4)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(p_fused), jax.tree.leaves(p_dense), strict=True))
    print(f"PGM train step, {kind} vs dense: max abs param diff", f"{err:.1e}")
    assert err < 1e-5


def test_splash_sequence_without_valid_key_is_exactly_zero(errors):
    """Key padding where sequence 1 has no valid key: splash (like dense) outputs exactly 0
    there, with zero query gradients (the kernel alone would average every key)."""
    _, _, (out, (dq, _, _)), seg = errors["key_padding"]
    assert not np.asarray(seg.kv[1]).any() and np.asarray(seg.kv[0]).all()
    out, dq = np.asarray(out), np.asarray(dq)
    assert (out[1] == 0).all() and (dq[1] == 0).all()
    assert (np.abs(out[[0, 2, 3]]).max(axis=-1) > 0).all()
