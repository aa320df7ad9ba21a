"""Fused attention kernels against the dense oracle: max abs errors of outputs and gradients.

  python benchmarks/attention_numerics.py                      # CPU: splash (Pallas interpret
                                                               # mode) and tokamax (chunked XLA)
  python benchmarks/attention_numerics.py --length 1024 --kernels tokamax   # on a GPU: the
                                                               # Mosaic GPU / Triton kernels

For every PGM / MDLM / AR mask (edge cases below), in float32 and bfloat16, the entry point
`pgm_jax.models.attention.attention` runs with `dense` and with each fused kernel on the same
inputs (normal q, k, v; a fixed cosine cotangent), and the table gives max |fused - dense| of
the output and of dq, dk, dv (both sides at the same dtype, errors in float32). Rows with no
allowed key must be exactly 0 on every kernel: `empty_rows_zero` checks outputs and dq there.
With --quadratic, each kernel's forward + backward program (GroupSwap mask, L >= 300) is also
searched for arrays of [.., L, L] outside Pallas kernels (the O(L) claim of docs/attention.md;
on CPU tokamax runs its chunked XLA implementation, which does build a bool [L, L] mask).

Edge cases (batch of 4 sequences, `--length` tokens, 12 more keys where keys differ):
  encoder        q = kv = group, random groups
  groupswap      q = group, kv = 1 - group (GroupSwap and the decoder's cross-attention)
  decoder_keys   the same over keys with their own groups (image PGM's decoder), nk = L + 12
  packed_enc     encoder mask over 3 packed documents (ids 2*doc + group)
  packed_cross   GroupSwap mask over 3 packed documents
  empty_group    GroupSwap with one-group sequences (every row empty) and one-token groups
  one_group      encoder over one-group sequences
  key_padding    key padding with L + 12, 0 (no valid key at all), 1 and L // 2 valid keys
  causal, full   MDLM / AR masks (full: nk = L + 12)
Prints the table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from pgm_jax.models import attention as attn

Array = jax.Array
BATCH, EXTRA_KEYS = 4, 12


def cases(length: int, heads: int, head_dim: int) -> dict[str, tuple]:
    """name -> (q [4, L, heads, d], k, v [4, L | L + 12, heads, d], Segments), float32."""
    n, nk = length, length + EXTRA_KEYS
    keys = jax.random.split(jax.random.key(0), 6)
    q = jax.random.normal(keys[0], (BATCH, n, heads, head_dim))
    k, v = (jax.random.normal(key, (BATCH, nk, heads, head_dim)) for key in keys[1:3])
    ks, vs = k[:, :n], v[:, :n]
    g = jax.random.bernoulli(keys[3], 0.5, (BATCH, n)).astype(jnp.int32)
    g_keys = jax.random.bernoulli(keys[4], 0.5, (BATCH, nk)).astype(jnp.int32)
    doc = jnp.minimum(jnp.arange(n) * 3 // n, 2)[None].repeat(BATCH, 0)
    doc = doc.at[1].set(jnp.minimum(jnp.arange(n) * 3 // (2 * n), 2))  # uneven documents
    one = jnp.zeros_like(g).at[1].set(1).at[2, 0].set(1).at[3, n - 1].set(1)
    valid = jnp.arange(nk)[None] < jnp.array([nk, 0, 1, n // 2])[:, None]
    groups = attn.Segments.groups
    return {
        "encoder": (q, ks, vs, groups(g)),
        "groupswap": (q, ks, vs, groups(g, cross=True)),
        "decoder_keys": (q, k, v, groups(g, cross=True, key_groups=g_keys)),
        "packed_enc": (q, ks, vs, groups(g, doc)),
        "packed_cross": (q, ks, vs, groups(g, doc, cross=True)),
        "empty_group": (q, ks, vs, groups(one, cross=True)),
        "one_group": (q, ks, vs, groups(one.at[2:].set(0))),
        "key_padding": (q, k, v, attn.Segments.key_valid(valid)),
        "causal": (q, ks, vs, attn.Segments(causal=True)),
        "full": (q, k, v, attn.Segments()),
    }


def value_and_grads(kind: str, dtype: str, platform: str, q, k, v, seg):
    """(output, (dq, dk, dv)) as float32 for a fixed cotangent; inputs cast to `dtype`."""
    def f(q, k, v):
        return attn.attention(q, k, v, seg, kind=kind, platform=platform)

    q, k, v = (t.astype(dtype) for t in (q, k, v))
    out, vjp = jax.vjp(f, q, k, v)
    cot = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape).astype(dtype)
    return jax.tree.map(lambda x: x.astype(jnp.float32), (out, vjp(cot)))


def quadratic_shapes(kind: str, platform: str, q, k, v, seg) -> list[tuple[int, ...]]:
    """Shapes [.., >= L, >= L] of the arrays the forward + backward program builds outside
    Pallas kernels (traced, bf16)."""
    n = q.shape[1]
    jaxpr = jax.make_jaxpr(lambda *a: value_and_grads(kind, "bfloat16", platform, *a, seg))(
        q, k, v)
    found = set()

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "pallas_call":
                continue  # inside a kernel: on-chip tiles, not HBM arrays
            for o in eqn.outvars:
                shape = tuple(getattr(o.aval, "shape", ()))
                if len(shape) >= 2 and shape[-1] >= n and shape[-2] >= n:
                    found.add(shape)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    sub = getattr(sub, "jaxpr", sub)
                    if hasattr(sub, "eqns"):
                        walk(sub)

    walk(jaxpr.jaxpr)
    return sorted(found)


def measure(args: argparse.Namespace) -> list[dict]:
    platform = jax.default_backend()
    inputs = cases(args.length, args.heads, args.head_dim)
    rows = []
    for dtype in ("float32", "bfloat16"):
        results = {}
        for kind in ("dense", *args.kernels):
            t0 = time.perf_counter()
            # Inputs as arguments, not constants (XLA would constant-fold the whole program).
            results[kind] = jax.jit(lambda inputs, kind=kind, dtype=dtype: {
                name: value_and_grads(kind, dtype, platform, *c)
                for name, c in inputs.items()})(inputs)
            jax.block_until_ready(results[kind])
            print(f"  {kind} {dtype}: {time.perf_counter() - t0:.1f} s (compile + run)",
                  file=sys.stderr, flush=True)
        for name, (_, _, _, seg) in inputs.items():
            has_key = seg.has_key()
            for kind in args.kernels:
                errs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
                    jax.tree.leaves(results["dense"][name]), jax.tree.leaves(results[kind][name]),
                    strict=True)]
                out, (dq, _, _) = results[kind][name]
                zero = None
                if has_key is not None:
                    empty = ~np.broadcast_to(np.asarray(has_key), out.shape[:2])
                    zero = bool((np.asarray(out)[empty] == 0).all()
                                and (np.asarray(dq)[empty] == 0).all()) if empty.any() else None
                rows.append({"case": name, "kernel": kind, "dtype": dtype, "out": errs[0],
                             "dq": errs[1], "dk": errs[2], "dv": errs[3],
                             "empty_rows_zero": zero})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = {"gpu": "tokamax", "tpu": "splash"}.get(jax.default_backend(), "splash,tokamax")
    p.add_argument("--kernels", default=default, help=f"fused kernels (default here: {default})")
    p.add_argument("--length", type=int, default=37, help="queries per sequence (odd: padding)")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--quadratic", action="store_true",
                   help="also list [L, L] arrays outside Pallas kernels, per kernel")
    args = p.parse_args()
    args.kernels = tuple(args.kernels.split(","))
    device = jax.devices()[0]
    rows = measure(args)
    print(f"{device.device_kind} ({device.platform}), jax {jax.__version__}, batch {BATCH}, "
          f"L {args.length}, heads {args.heads}, head dim {args.head_dim}; max |fused - dense|")
    print(f"{'case':13s} {'kernel':8s} {'dtype':9s} {'out':>8s} {'dq':>8s} {'dk':>8s} {'dv':>8s}"
          f"  empty rows = 0")
    for r in rows:
        zero = {None: "-", True: "yes", False: "NO"}[r["empty_rows_zero"]]
        print(f"{r['case']:13s} {r['kernel']:8s} {r['dtype']:9s} {r['out']:8.1e} {r['dq']:8.1e} "
              f"{r['dk']:8.1e} {r['dv']:8.1e}  {zero}")
    result = {"benchmark": "attention_numerics", "device": device.device_kind,
              "platform": device.platform, "length": args.length, "rows": rows}
    if args.quadratic:  # at L >= 300: above the head dim and splash's 128 id lanes
        n = max(args.length, 300)
        q, k, v, seg = cases(n, args.heads, args.head_dim)["groupswap"]
        result["quadratic_length"] = n
        result["quadratic"] = {kind: quadratic_shapes(kind, device.platform, q, k, v, seg)
                               for kind in ("dense", *args.kernels)}
        for kind, shapes in result["quadratic"].items():
            print(f"[L, L] arrays outside kernels, {kind} (GroupSwap, L {n}, fwd + bwd): "
                  f"{shapes or 'none'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
