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
- `auto`: `splash` on TPU, `dense` elsewhere (see docs/attention.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from absl import logging
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
        """bool [batch, nq]: the query has at least one allowed key; None when all do.

        O(L log L): per-query counts of equal key ids by binary search in the sorted keys.
        (Causal masks are only used for self-attention, where a query sees itself.)
        """
        if self.causal or self.kv is None or self.q is None:
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
    return "splash" if platform == "tpu" else "dense"


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

    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in sharding.BATCH_AXES if not mesh.empty and a in mesh.axis_names)
    if axes:
        spec = P(axes)
        ids_specs = (None, None) if q_ids is None else (spec, spec)
        per_shard = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec, *ids_specs),
                                  out_specs=spec, check_vma=False)
    out = per_shard(qt, kt, vt, q_ids, kv_ids)[:, :, :nq]  # [batch, heads, nq, d]
    out = jnp.swapaxes(out, 1, 2).astype(v.dtype)
    if has_key is not None:
        out = jnp.where(has_key[:, :, None, None], out, jnp.zeros((), out.dtype))
    return out.reshape(b, nq, h * d)


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
