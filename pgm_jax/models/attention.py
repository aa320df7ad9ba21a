"""One attention entry point: masks as O(L) segment ids, one kernel per platform.

Every PGM / MDLM / AR / image mask is "query i may see key j iff q_ids[i] == kv_ids[j]"
(and j <= i when causal), so a mask travels as two int arrays instead of a [L, L] bool array:

- PGM encoder: q = kv = 2*doc + group; GroupSwap and the decoder: q = 2*doc + group,
  kv = 2*doc + (1 - group) (`Segments.groups`).
- Packed inference: queries all 1, keys `valid` (`Segments.key_valid`); full and causal
  attention carry no ids at all.

A query with no allowed key outputs exactly zero on every kernel (PyTorch SDPA semantics,
spec §9.1): the kernels give such rows a uniform average, so the rows are zeroed after the
kernel from an O(L) per-query key count; their cotangent is then zero, and so are their
gradient contributions.

Kernels (`model.attention`):
- `dense`: the oracle, `layers.masked_attention` ([batch, heads, L, L] float32 scores); on a
  CPU it runs in query chunks that fit the cache.
- `splash`: Pallas splash attention (TPU, Mosaic), vmapped over the batch inside `shard_map`
  over the batch mesh axes, with separate query / key ids; O(L) memory in forward and
  backward. Off TPU it runs in Pallas interpret mode (tests only: slow).
- `tokamax`: tokamax's flash attention (GPU: Mosaic GPU for bf16 / fp16 on sm90+, else
  Triton) inside `shard_map` like splash. Its masks are per-query key ranges; a stable sort of
  the keys by id turns "same id" into one contiguous range per query. Off GPU it runs
  tokamax's chunked XLA implementation (tests).
- `auto`: `splash` on TPU, `tokamax` on GPU, `dense` elsewhere (see docs/attention.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from absl import flags, logging
from jax.sharding import PartitionSpec as P

from pgm_jax import sharding
from pgm_jax.models import layers
from pgm_jax.models.config import ATTENTION_KERNELS as KERNELS
from pgm_jax.models.config import ModelConfig

Array = jax.Array

# Splash tiles: sequences are padded to a multiple of _LANE; the largest of these block sizes
# that divides the padded length is used (512 suits L = 1024 on v5p / v5e: 2 x 2 tiles of
# [512, 512] float32 scores in VMEM).
_LANE = 128
_SPLASH_BLOCKS = (512, 256, 128)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Segments:
    """Who may attend whom, in O(L).

    q: int32 [batch, nq] or None; kv: int32 [batch, nk] or None. Query i sees key j iff
    q[b, i] == kv[b, j] (and j <= i when `causal`). q None with kv given: every query has id 1
    (key padding: kv = valid). Both None: full (or causal) attention.
    """

    q: Array | None = None
    kv: Array | None = None
    causal: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @staticmethod
    def groups(groups: Array, doc: Array | None = None, *, cross: bool = False,
               key_groups: Array | None = None) -> Segments:
        """PGM's masks from groups int/bool [batch, n] (and documents int [batch, n]).

        Self-attention: q = kv = 2*doc + g. `cross` (GroupSwap, decoder): q = 2*doc + g,
        kv = 2*doc + (1 - g_keys), where the keys' groups default to the queries'.
        """
        g = groups.astype(jnp.int32)
        gk = g if key_groups is None else key_groups.astype(jnp.int32)
        d = 0 if doc is None else 2 * doc.astype(jnp.int32)
        return Segments(q=d + g, kv=d + (1 - gk) if cross else d + gk)

    @staticmethod
    def key_valid(valid: Array) -> Segments:
        """Key padding: valid bool/int [batch, nk]; every query sees the valid keys."""
        return Segments(q=None, kv=valid.astype(jnp.int32))

    def dense_mask(self, nq: int, nk: int) -> Array:
        """The bool mask [batch | 1, nq | 1, nk] this describes (O(L^2) unless key padding)."""
        if self.q is None and self.kv is None:
            mask = jnp.ones((1, 1, nk), bool)
        elif self.q is None:
            mask = (self.kv == 1)[:, None, :]
        else:
            mask = self.q[:, :, None] == self.kv[:, None, :]
        if self.causal:
            mask = mask & jnp.tril(jnp.ones((nq, nk), bool))[None]
        return mask

    def has_key(self) -> Array | None:
        """bool [batch, nq | 1]: the query has at least one allowed key; None when all do.

        O(L log L): per-query counts of equal key ids by binary search in the sorted keys.
        Key padding gives [batch, 1] (a sequence without a valid key: every row empty), or,
        causal, [batch, n]: a valid key at or before the query. (Causal masks are self-
        attention, nq = nk; with query ids the query is assumed to see itself.)
        """
        if self.kv is None:
            return None
        if self.q is None:
            valid = self.kv == 1
            if self.causal:
                return jnp.cumsum(valid, axis=-1) > 0
            return jnp.any(valid, axis=-1, keepdims=True)
        if self.causal:
            return None
        kv = jnp.sort(self.kv, axis=-1)
        lo = jax.vmap(functools.partial(jnp.searchsorted, side="left"))(kv, self.q)
        hi = jax.vmap(functools.partial(jnp.searchsorted, side="right"))(kv, self.q)
        return hi > lo


def resolve(kind: str, platform: str) -> str:
    """The kernel `model.attention = kind` runs on `platform` ('cpu', 'tpu', 'gpu')."""
    if kind not in KERNELS:
        raise ValueError(f"model.attention={kind!r}: must be one of {KERNELS}")
    if kind != "auto":
        return kind
    return {"tpu": "splash", "gpu": "tokamax"}.get(platform, "dense")


def attention(q: Array, k: Array, v: Array, seg: Segments, *, kind: str = "auto",
              platform: str = "") -> Array:
    """Softmax attention; rows with no allowed key are exactly zero.

    q: [batch, nq, heads, d]; k, v: [batch, nk, heads, d]; seg: the mask. `kind`: a
    `model.attention` value; `platform`: the target ('' = this process's default backend).
    Returns [batch, nq, heads * d] in v's dtype.
    """
    platform = platform or jax.default_backend()
    kernel = resolve(kind, platform)
    if kernel == "dense":
        mask = seg.dense_mask(q.shape[1], k.shape[1])
        mask = jnp.broadcast_to(mask, (q.shape[0], *mask.shape[1:]))
        return layers.masked_attention(q, k, v, mask, cpu_chunks=platform == "cpu")
    if kernel == "tokamax":
        return tokamax_attention(q, k, v, seg, gpu=platform == "gpu")
    return splash_attention(q, k, v, seg, interpret=platform != "tpu")


# ----------------------------------------------------------------------------- splash (TPU)
def splash_attention(q: Array, k: Array, v: Array, seg: Segments, *,
                     interpret: bool = False) -> Array:
    """`attention` with Pallas splash attention, per example inside `shard_map`.

    Shapes as `attention`. Lengths are padded to a multiple of 128 with ids that match
    nothing (padded queries are dropped, padded keys never seen).
    """
    b, nq, h, d = q.shape
    nk = k.shape[1]
    has_key = seg.has_key()
    q_ids, kv_ids = _padded_ids(seg, b, nq, nk)
    nq_p, nk_p = _round_up(nq), _round_up(nk)
    scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    # Heads-major [batch, heads, n, d], as the kernel takes one example's [heads, n, d].
    qt = _pad(jnp.swapaxes(q * scale, 1, 2), nq_p)
    kt, vt = (_pad(jnp.swapaxes(t, 1, 2), nk_p) for t in (k, v))
    kernel = _splash_kernel(h, nq_p, nk_p, seg.causal, interpret)

    def per_shard(qt, kt, vt, q_ids, kv_ids):
        ids = None if q_ids is None else _splash_lib().SegmentIds(q_ids, kv_ids)
        in_axes = (0, 0, 0, None if ids is None else 0)
        return jax.vmap(kernel, in_axes=in_axes)(qt, kt, vt, ids)

    out = _per_batch_shard(per_shard, (qt, kt, vt), (q_ids, kv_ids))
    out = jnp.swapaxes(out[:, :, :nq], 1, 2).astype(v.dtype)  # [batch, nq, heads, d]
    if has_key is not None:
        out = jnp.where(has_key[:, :, None, None], out, jnp.zeros((), out.dtype))
    return out.reshape(b, nq, h * d)


def _per_batch_shard(fn, arrays: tuple[Array, ...], ids: tuple[Array | None, ...]) -> Array:
    """fn(*arrays, *ids) inside `shard_map` over the mesh's batch axes (when the traced mesh
    has any), every argument and the result split along axis 0; ids may be None. The kernels
    are Pallas calls, which XLA cannot partition itself."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in sharding.BATCH_AXES if not mesh.empty and a in mesh.axis_names)
    if axes:
        spec = P(axes)
        in_specs = (spec,) * len(arrays) + tuple(None if i is None else spec for i in ids)
        fn = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)
    return fn(*arrays, *ids)


def _splash_lib():
    from jax.experimental.pallas.ops.tpu import splash_attention

    return splash_attention


def _round_up(n: int) -> int:
    return -(-n // _LANE) * _LANE


def _block(n: int) -> int:
    return next(blk for blk in _SPLASH_BLOCKS if n % blk == 0)


def _pad(x: Array, n: int) -> Array:
    """Pads axis 2 of [batch, heads, n0, d] to n with zeros."""
    return x if x.shape[2] == n else jnp.pad(x, ((0, 0), (0, 0), (0, n - x.shape[2]), (0, 0)))


def _padded_ids(seg: Segments, b: int, nq: int, nk: int) -> tuple[Array | None, Array | None]:
    """int32 ids [batch, nq_p], [batch, nk_p] for the kernel, or (None, None) when no mask
    beyond the static one is needed. Padded keys get -2 and padded queries -1: never equal
    to a real id (ids are >= 0) nor to each other."""
    nq_p, nk_p = _round_up(nq), _round_up(nk)
    if seg.q is None and seg.kv is None and nq_p == nq and nk_p == nk:
        return None, None
    qi = jnp.ones((b, nq), jnp.int32) if seg.q is None else seg.q.astype(jnp.int32)
    if seg.kv is None:
        qi = jnp.ones((b, nq), jnp.int32)
        ki = jnp.ones((b, nk), jnp.int32)
    else:
        ki = seg.kv.astype(jnp.int32)
    qi = jnp.pad(qi, ((0, 0), (0, nq_p - nq)), constant_values=-1)
    ki = jnp.pad(ki, ((0, 0), (0, nk_p - nk)), constant_values=-2)
    return qi, ki


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, nq: int, nk: int, causal: bool, interpret: bool):
    """A splash kernel for one example's [heads, nq, d] x [heads, nk, d] (cached by shape)."""
    lib = _splash_lib()
    bq, bk = _block(nq), _block(nk)
    blocks = lib.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk,
                            block_q_dkv=bq, block_kv_dkv=bk, block_kv_dkv_compute=bk,
                            block_q_dq=bq, block_kv_dq=bk)
    one = lib.CausalMask((nq, nk)) if causal else lib.FullMask((nq, nk))
    mask = lib.MultiHeadMask([one] * heads)
    # Concrete mask-info arrays (the kernel is cached across traces, so no tracers in it).
    with jax.ensure_compile_time_eval():
        return lib.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                   interpret=interpret)


# ----------------------------------------------------------------------------- tokamax (GPU)
# tokamax implementations tried in order (the first that accepts the call runs). GPU: Mosaic
# GPU (sm90 / sm100, bf16 / fp16: O(L) forward and backward), else Triton (float32, older
# GPUs). Elsewhere the chunked XLA implementation (tests; it builds a bool [L, L] mask).
_TOKAMAX_GPU = ("mosaic_gpu", "triton")
_TOKAMAX_OTHER = ("xla_chunked",)


def tokamax_attention(q: Array, k: Array, v: Array, seg: Segments, *, gpu: bool) -> Array:
    """`attention` with tokamax's flash attention, per batch shard inside `shard_map`.

    Shapes as `attention`. tokamax masks each query by one key range [k_start, k_end). Keys
    are stably sorted by id, so the keys with a query's id are contiguous (found by binary
    search, O(L log L)); queries are sorted too, so that the queries of one kernel block share
    their range and the kernel skips the key blocks outside it. Lengths are padded to a
    multiple of 128 (padded keys lie past every range); outputs return to query order.
    """
    if seg.causal and seg.q is not None:
        raise ValueError("model.attention=tokamax: causal attention with query ids is not "
                         "supported (no model uses it); use dense or splash")
    b, nq, h, d = q.shape
    scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    shard = functools.partial(_tokamax_shard, causal=seg.causal,
                              names=_TOKAMAX_GPU if gpu else _TOKAMAX_OTHER)
    out = _per_batch_shard(shard, (q * scale, k, v), (seg.q, seg.kv))
    return out.astype(v.dtype).reshape(b, nq, h * d)


def _tokamax_shard(q: Array, k: Array, v: Array, q_ids: Array | None, kv_ids: Array | None,
                   *, causal: bool, names: tuple[str, ...]) -> Array:
    """One batch shard: q [b, nq, h, d] (pre-scaled), k, v [b, nk, h, d] -> [b, nq, h, d]."""
    nq, nk = q.shape[1], k.shape[1]
    nq_p, nk_p = _round_up(nq), _round_up(nk)
    start, end, has_key, q_order, k_order = jax.vmap(
        functools.partial(_key_ranges, nq=nq, nk=nk, causal=causal),
        in_axes=(None if q_ids is None else 0, None if kv_ids is None else 0),
        axis_size=q.shape[0])(q_ids, kv_ids)
    if q_order is not None:
        q = _take_rows(q, q_order)
    if k_order is not None:
        k, v = _take_rows(k, k_order), _take_rows(v, k_order)
    # Padded queries see key 0 (finite, dropped below); padded keys lie past every range.
    start, end = (jnp.pad(x, ((0, 0), (0, nq_p - nq)), constant_values=c)
                  for x, c in ((start, 0), (end, 1)))
    q = jnp.pad(q, ((0, 0), (0, nq_p - nq), (0, 0), (0, 0)))
    k, v = (jnp.pad(t, ((0, 0), (0, nk_p - nk), (0, 0), (0, 0))) for t in (k, v))
    mask = _tokamax_mask(k_start=start[:, None], k_end=end[:, None])  # [b, 1 (heads), nq_p]
    out = _tokamax_call(q, k, v, mask, names)[:, :nq]
    if has_key is not None:
        out = jnp.where(has_key[:, :, None, None], out, jnp.zeros((), out.dtype))
    if q_order is not None:
        out = _take_rows(out, jnp.argsort(q_order, axis=-1))
    return out


def _key_ranges(q_ids: Array | None, kv_ids: Array | None, *, nq: int, nk: int, causal: bool
                ) -> tuple[Array, Array, Array | None, Array | None, Array | None]:
    """One example's key ranges: (k_start, k_end int32 [nq], has_key bool [nq] | None,
    query order [nq] | None, key order [nk] | None), queries and ranges in kernel order.

    Full / causal: no sort. Key padding (q_ids None): valid keys (kv = 1) sorted last, in
    their order: [n_invalid, nk), or causally [n_invalid, n_invalid + #valid keys <= i).
    Ids: both sides stably sorted by id; query id s sees [first key >= s, first key > s). A
    query with no key gets a one-key range (finite softmax, no NaN in the kernels' backward
    passes) and is zeroed afterwards.
    """
    if kv_ids is None:
        end = jnp.minimum(jnp.arange(1, nq + 1), nk) if causal else jnp.full((nq,), nk)
        return jnp.zeros((nq,), jnp.int32), end.astype(jnp.int32), None, None, None
    if q_ids is None:
        valid = (kv_ids == 1).astype(jnp.int32)
        k_order = jnp.argsort(valid, stable=True)
        first = nk - jnp.sum(valid)
        if causal:
            seen = jnp.cumsum(valid)[jnp.minimum(jnp.arange(nq), nk - 1)]
        else:
            seen = jnp.broadcast_to(nk - first, (nq,))
        start, end, q_order = jnp.broadcast_to(first, (nq,)), first + seen, None
    else:
        k_order = jnp.argsort(kv_ids, stable=True)
        q_order = jnp.argsort(q_ids, stable=True)
        sorted_kv, sorted_q = kv_ids[k_order], q_ids[q_order]
        start = jnp.searchsorted(sorted_kv, sorted_q, side="left")
        end = jnp.searchsorted(sorted_kv, sorted_q, side="right")
    has_key = end > start
    start = jnp.where(has_key, start, jnp.minimum(start, nk - 1))
    end = jnp.where(has_key, end, start + 1)
    return start.astype(jnp.int32), end.astype(jnp.int32), has_key, q_order, k_order


def _take_rows(x: Array, order: Array) -> Array:
    """x [b, n, ...] with axis 1 reordered by order int [b, n]."""
    return jnp.take_along_axis(x, order.reshape(*order.shape, *(1,) * (x.ndim - 2)), axis=1)


def _tokamax_ops():
    """tokamax's attention modules (api, base), imported on use (~4 s: off the CPU start-up
    path). Private modules: the public function takes only a bool [L, L] mask and key lengths,
    not per-query key ranges, hence the exact pin in requirements.txt."""
    from tokamax._src.ops.attention import api, base

    # tokamax reads its options from absl flags and parses sys.argv itself when nobody has,
    # which fails on an argparse script's own flags (benchmarks/): use the defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return api, base


def _tokamax_mask(**ranges: Array):
    """tokamax's Mask from per-query key ranges (k_start, k_end)."""
    return _tokamax_ops()[1].Mask(**ranges)


def _tokamax_call(q: Array, k: Array, v: Array, mask, names: tuple[str, ...]) -> Array:
    """The first of tokamax's implementations `names` that accepts the call (the others raise
    NotImplementedError at trace time: Mosaic GPU for float32, or below sm90)."""
    api, _ = _tokamax_ops()
    errors = []
    for name in names:
        if name not in api.IMPLEMENTATIONS:  # its kernels did not import (no GPU support)
            errors.append(f"{name}: not available")
            continue
        try:
            return api.IMPLEMENTATIONS[name](q, k, v, mask=mask, logits_scale=1.0)
        except NotImplementedError as e:
            errors.append(f"{name}: {e}")
    raise NotImplementedError("model.attention=tokamax: no implementation accepts "
                              f"{q.dtype} {q.shape}: " + "; ".join(errors))


def attend(q: Array, k: Array, v: Array, seg: Segments, kernel: tuple[str, str]) -> Array:
    """`attention` with `kernel` = (model.attention, attention platform), as the blocks hold."""
    return attention(q, k, v, seg, kind=kernel[0], platform=kernel[1])


def kernel_for(kernel: tuple[str, str]) -> str:
    """The kernel that `attend(..., kernel)` runs."""
    return resolve(kernel[0], kernel[1] or jax.default_backend())


def on_mesh(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> ModelConfig:
    """`cfg` compiled for `mesh`'s devices: their platform decides `auto` and the dense
    layout (CPU query chunks or one block), whatever this process's default backend. Logs the
    kernel (the start-up line that says which attention runs)."""
    platform = mesh.devices.flat[0].platform
    kernel = resolve(cfg.attention, platform)
    logging.info("attention: %s kernel (model.attention=%s, platform %s)", kernel,
                 cfg.attention, platform)
    return dataclasses.replace(cfg, attention_platform=platform)
