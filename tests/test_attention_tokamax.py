"""`model.attention=tokamax` (sorted keys, per-query key ranges) against the dense oracle, in
float32 and bfloat16, forward and gradients; on CPU tokamax runs its chunked XLA
implementation (the GPU kernels take the same ranges).

One batch of 4 sequences of an odd length (37 queries; 41 keys where keys differ), through
every mask: the encoder (q = kv = 2*doc + group) and GroupSwap / decoder (kv = 2*doc +
1 - group) with 2 packed documents in row 0, one-group rows 1 and 2 (their cross rows have no
key) and random groups in row 3; a decoder over keys with their own groups (image PGM); key
padding with 41, 0 (no valid key at all), 1 and 20 valid keys; causal; full. The full PGM
train step with tokamax is compared with the dense step in test_attention.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgm_jax.models import attention as attn

Array = jax.Array
B, N, NK, H, D = 4, 37, 41, 2, 8
CASES = ("encoder", "cross", "cross_keys", "key_padding", "causal", "full")
# Max abs error bounds against dense at the same dtype (outputs and gradients are O(1)):
# float32 rounding only; bfloat16: both sides round scores / probabilities to 8 bits.
TOL = {"float32": 2e-5, "bfloat16": 4e-2}


def cases() -> dict[str, tuple[Array, Array, Array, attn.Segments]]:
    """name -> (q [B, N, H, D], k, v [B, N | NK, H, D], Segments), float32."""
    kq, kk, kv, kg, kh = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(kq, (B, N, H, D))
    k, v = (jax.random.normal(key, (B, NK, H, D)) for key in (kk, kv))
    g = jax.random.bernoulli(kg, 0.5, (B, N)).astype(jnp.int32).at[1].set(0).at[2].set(1)
    g_keys = jax.random.bernoulli(kh, 0.5, (B, NK)).astype(jnp.int32).at[1].set(1)
    doc = jnp.zeros((B, N), jnp.int32).at[0, N // 3:].set(1)
    valid = jnp.arange(NK)[None] < jnp.array([NK, 0, 1, 20])[:, None]
    ks, vs = k[:, :N], v[:, :N]
    return {
        "encoder": (q, ks, vs, attn.Segments.groups(g, doc)),
        "cross": (q, ks, vs, attn.Segments.groups(g, doc, cross=True)),
        "cross_keys": (q, k, v, attn.Segments.groups(g, cross=True, key_groups=g_keys)),
        "key_padding": (q, k, v, attn.Segments.key_valid(valid)),
        "causal": (q, ks, vs, attn.Segments(causal=True)),
        "full": (q, k, v, attn.Segments()),
    }


def value_and_grads(kind: str, dtype: str, q, k, v, seg):
    """(output, (dq, dk, dv)) in float32 for a fixed cotangent, inputs cast to `dtype`."""
    def f(q, k, v):
        return attn.attention(q, k, v, seg, kind=kind, platform="cpu")

    q, k, v = (t.astype(dtype) for t in (q, k, v))
    out, vjp = jax.vjp(f, q, k, v)
    cot = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape).astype(dtype)
    return jax.tree.map(lambda x: x.astype(jnp.float32), (out, vjp(cot)))


@pytest.fixture(scope="module")
def results():
    """(kind, dtype) -> {case: (out, (dq, dk, dv))}: one compiled program per kernel / dtype."""
    inputs = cases()

    def run(kind, dtype):
        return jax.jit(lambda: {name: value_and_grads(kind, dtype, *c)
                                for name, c in inputs.items()})()

    return {(kind, dtype): run(kind, dtype) for kind in ("dense", "tokamax")
            for dtype in TOL}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("case", CASES)
def test_tokamax_matches_dense_forward_and_gradients(results, case, dtype):
    dense, fused = results["dense", dtype][case], results["tokamax", dtype][case]
    errs = [float(jnp.max(jnp.abs(a - b))) for a, b in
            zip(jax.tree.leaves(dense), jax.tree.leaves(fused), strict=True)]
    print(case, dtype, "max abs err (out, dq, dk, dv):", ", ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < TOL[dtype], errs


@pytest.mark.parametrize("dtype", list(TOL))
def test_rows_without_keys_are_exactly_zero(results, dtype):
    """Cross rows of one-group sequences and every row of a sequence without a valid key:
    outputs and query gradients exactly 0, on tokamax as on dense; other rows are not."""
    for case, empty in (("cross", np.array([False, True, True, False])),
                        ("key_padding", np.array([False, True, False, False]))):
        out, (dq, _, _) = results["tokamax", dtype][case]
        rows, dq = np.asarray(out).reshape(B, N, -1), np.asarray(dq)
        assert (rows[empty] == 0).all() and (dq[empty] == 0).all(), case
        assert (np.abs(rows[~empty]).max(axis=-1) > 0).any(), case


def test_key_ranges_cover_exactly_the_allowed_keys():
    """Sorted keys + [k_start, k_end) per sorted query == the dense mask, for every case."""
    for name, (q, k, _, seg) in cases().items():
        nq, nk = q.shape[1], k.shape[1]
        for b in range(B):
            start, end, has_key, q_order, k_order = attn._key_ranges(
                None if seg.q is None else seg.q[b], None if seg.kv is None else seg.kv[b],
                nq=nq, nk=nk, causal=seg.causal)
            q_order = np.arange(nq) if q_order is None else np.asarray(q_order)
            k_order = np.arange(nk) if k_order is None else np.asarray(k_order)
            rng = np.arange(nk)[None]
            ranges = (rng >= np.asarray(start)[:, None]) & (rng < np.asarray(end)[:, None])
            if has_key is not None:
                ranges &= np.asarray(has_key)[:, None]
            mask = np.broadcast_to(seg.dense_mask(nq, nk), (B, nq, nk))[b]
            np.testing.assert_array_equal(ranges, mask[q_order][:, k_order], err_msg=name)


def test_causal_with_query_ids_is_refused():
    q, k, v, seg = cases()["encoder"]
    with pytest.raises(ValueError, match="causal attention with query ids"):
        attn.attention(q, k, v, attn.Segments(seg.q, seg.kv, causal=True), kind="tokamax",
                       platform="cpu")


def test_pgm_packed_inference_with_tokamax_equals_dense():
    """The sampler's forward (packed encoder over padded clean tokens: key padding) gives the
    same logits with tokamax as with dense (13 clean slots, 9 queries)."""
    from flax import nnx

    from tests.helpers import randomized_model, tiny_config

    rng = np.random.default_rng(3)
    clean = jnp.asarray(rng.integers(0, 63, (3, 13)), jnp.int32)
    clean_pos = jnp.asarray(np.sort(rng.permutation(32)[:13])[None].repeat(3, 0), jnp.int32)
    noisy_pos = jnp.asarray(rng.permutation(32)[:9][None].repeat(3, 0), jnp.int32)
    lengths = jnp.array([13, 1, 7], jnp.int32)
    logits = {}
    for kind in ("dense", "tokamax"):
        model = randomized_model(tiny_config(attention=kind, attention_platform="cpu"))
        # The model as an argument: closed over, its weights would be folded as constants.
        logits[kind] = nnx.jit(lambda model, *a: model.infer(*a))(
            model, clean, clean_pos, noisy_pos, lengths)
    err = float(jnp.max(jnp.abs(logits["tokamax"] - logits["dense"])))
    scale = float(jnp.max(jnp.abs(logits["dense"])))
    print("PGM packed inference, tokamax vs dense: max abs logit diff", f"{err:.1e}",
          f"(max |logit| {scale:.1f})")
    assert err < 1e-5 * scale  # measured 4e-6 relative (splash: 2e-6; random weights)
