"""Class-conditional image samplers: the image PGM and the MaskGIT baseline (spec pgm_image §4).

Four samplers, by model kind x order:

* MaskGIT-confidence / MaskGIT-Halton: the full N-token forward every step with mask ids at
  unrevealed cells; every revealed cell is re-sampled each step (as the reference). Shapes
  never change, so the whole loop is one jitted `fori_loop`.
* PGM-Halton / PGM-confidence: `model.infer` on [BOS, clean tokens so far] (reveal order),
  queried at this step's Halton cells, or at every remaining cell for confidence (the
  confidence ranking needs them all). Tokens are written once and never revisited.

Why buckets (PGM): the encoder's cost should follow the decoded length, but jit needs static
shapes. The clean prefix is padded to the next multiple of `bucket` tokens (`clean_valid`
masks the padding keys, so samples do not depend on it) and each step's queries to the
largest count of its bucket group; one step function is compiled per (bucket, query count)
shape, about N / bucket of them, and reused by every step and call with that shape. The
grouping is the text sampler's (`pgm.plan_segments`, `pgm.default_bucket`).

Conventions: codes int32 [B, N] in raster order (token k at row k // side, col k % side);
PGM sequence positions are BOS 0 and token k at k + 1. Step i uses `fold_in(key, i)`.
Temperature divides the logits, as in the text samplers (the reference's `sm_temp` multiplier is
1 / temperature; both are 1 by default). It must be > 0: there is no greedy image mode.
CFG runs both branches in one doubled batch (labels [y; y], drop flags [False; True]) when
`cfg_w != 0`. Logits are guided and normalised in float32.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from pgm_jax import sharding
from pgm_jax.config import IMAGE_ORDERS as ORDERS
from pgm_jax.models import ModelConfig
from pgm_jax.models.registry import IMAGE_KINDS
from pgm_jax.sampling import image_orders as io
from pgm_jax.sampling import pgm
from pgm_jax.sampling.categorical import gumbel_argmax_float32

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """One PGM step: reveal `count` tokens after `decoded` ones, under static shapes."""

    step: int
    decoded: int
    count: int
    bucket: int  # encoder keys (BOS + clean, padded)
    width: int  # query slots (padded)


def sample_images(graphdef: nnx.GraphDef, params, model_cfg: ModelConfig, key: Array, *,
                  labels: Array, steps: int, order: str = "halton", temperature: float = 1.0,
                  cfg_w: float = 0.0, release_quirk: bool = False, bucket: int = 0,
                  mesh: Mesh | None = None, compile_only: bool = False) -> Array:
    """int32 [B, N] image codes in raster order, in [0, codebook_size).

    labels: int32 [B] class ids in [0, num_classes). `order`: "halton" | "confidence".
    `release_quirk` (PGM only) hides the last clean key as the released code does (§4.5).
    `bucket` (PGM only; 0 = `pgm.default_bucket(N + 1)`, N + 1 = pad every step to the full
    length) sets the encoder's shape granularity: it changes the cost, never the samples.
    `mesh`: the rows (labels and sampler state) are split over its data-parallel axes, as the
    text samplers' `batch_sharding` does; B must divide by their size. The samples do not
    depend on it (draws are keyed by step, or by row and position). `compile_only` compiles
    everything a call with these arguments runs, runs no step, and returns meaningless codes
    (benchmarks exclude compilation with it).
    """
    if model_cfg.kind not in IMAGE_KINDS:
        raise ValueError(f"model.kind={model_cfg.kind!r}: the image samplers need one of "
                         f"{IMAGE_KINDS}")
    if order not in ORDERS:
        raise ValueError(f"sample.order={order!r}: must be one of {ORDERS}")
    if not temperature > 0:
        raise ValueError(f"sample.temperature={temperature}: must be > 0 (it divides the "
                         "logits)")
    labels = jnp.asarray(labels, jnp.int32)
    rows = (lambda x: x) if mesh is None else functools.partial(_split_rows, mesh)
    if labels.ndim != 1:
        raise ValueError(f"labels must be int32 [batch], got shape {labels.shape}")
    if labels.is_fully_addressable:  # one small host read per call, never inside the loop
        host = np.asarray(labels)
        if host.size and not (0 <= host.min() and host.max() < model_cfg.num_classes):
            raise ValueError(f"labels must be class ids in [0, {model_cfg.num_classes}) "
                             f"(model.num_classes), got [{host.min()}, {host.max()}]")
    guided = float(cfg_w) != 0.0
    labels = rows(labels)
    if model_cfg.kind == "maskgit":
        return sample_maskgit(graphdef, params, model_cfg, key, labels=labels, steps=steps,
                              order=order, temperature=temperature, cfg_w=cfg_w, guided=guided,
                              compile_only=compile_only, rows=rows)
    return sample_pgm(graphdef, params, model_cfg, key, labels=labels, steps=steps, order=order,
                      temperature=temperature, cfg_w=cfg_w, guided=guided,
                      release_quirk=release_quirk, bucket=bucket, compile_only=compile_only,
                      rows=rows)


def _split_rows(mesh: Mesh, x: Array) -> Array:
    """x [B, ...] with its rows over the mesh's data-parallel axes (the rest replicated)."""
    return jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))


# ----------------------------------------------------------------------------- MaskGIT
def sample_maskgit(graphdef: nnx.GraphDef, params, model_cfg: ModelConfig, key: Array, *,
                   labels: Array, steps: int, order: str, temperature: float, cfg_w: float,
                   guided: bool, compile_only: bool = False, rows=lambda x: x) -> Array:
    """MaskGIT-confidence (§4.1) or MaskGIT-Halton (§4.2): int32 [B, N] raster codes.

    `guided` runs the doubled CFG batch (set when cfg_w != 0; with w = 0 it samples exactly
    what the unguided path does). `rows` places [B, ...] state (`sample_images`' mesh)."""
    n = model_cfg.length
    if order == "halton":
        # rank[k] = step-independent position of cell k in the Halton order; step i writes the
        # cells of rank < R_i.
        rank = np.empty(n, np.int32)
        rank[io.halton_order(io.grid_side(n))] = np.arange(n, dtype=np.int32)
        reveal = io.halton_totals(n, steps).astype(np.int32)
        temps = io.halton_temperatures(1.0 / temperature, steps)
        weights = io.cfg_weights(cfg_w, steps, ramp=False)
        noise = np.zeros(steps, np.float32)
    else:
        rank = np.zeros(n, np.int32)
        reveal = io.maskgit_confidence_k(n, steps)
        temps = np.full(steps, 1.0 / temperature, np.float32)
        weights = io.cfg_weights(cfg_w, steps, ramp=True)
        noise = io.gumbel_scales(steps)
    sched = jax.tree.map(jnp.asarray, (rank, reveal, temps, weights, noise))
    calls = jnp.int32(0 if compile_only else steps)
    code = rows(jnp.full((labels.shape[0], n), model_cfg.image_mask_id, jnp.int32))  # all MASK
    return _maskgit_loop(graphdef, params, key, labels, code, *sched, calls,
                         mask_id=model_cfg.image_mask_id, codebook_size=model_cfg.codebook_size,
                         order=order, guided=guided, row_sharding=_row_sharding(code))


@functools.partial(jax.jit, static_argnames=("graphdef", "mask_id", "codebook_size", "order",
                                             "guided", "row_sharding"))
def _maskgit_loop(graphdef, params, key, labels, code, rank, reveal, temps, weights, noise,
                  steps, *, mask_id, codebook_size, order, guided, row_sharding):
    """The whole MaskGIT loop: code int32 [B, N] from all-mask to clamped codes.

    rank: int32 [N] Halton rank of each cell; reveal: int32 [S] cumulative cells written by
    step i; temps, weights, noise: float32 [S] per-step logit multiplier, CFG weight, Gumbel
    scale; steps: traced int32 (0 compiles without running a step). `row_sharding`: the
    code's rows stay split as it says (None: unconstrained)."""
    model = nnx.merge(graphdef, params)
    b, n = labels.shape[0], rank.shape[0]
    if guided:
        labels_in, drop_in = io.doubled_conditioning(labels)
    else:
        labels_in, drop_in = labels, jnp.zeros_like(labels, bool)

    def body(i, code):
        k_sample, k_noise = jax.random.split(jax.random.fold_in(key, i))
        logits = model(io.double(code) if guided else code, labels_in, drop_in)
        logits = io.guide(logits, weights[i]) if guided else logits.astype(jnp.float32)
        logits = logits * temps[i]  # the mask column is not suppressed (as the reference)
        sampled = gumbel_argmax_float32(k_sample, logits)  # [B, N]
        if order == "halton":
            write = jnp.broadcast_to(rank[None] < reveal[i], (b, n))
        else:
            gumbel = jax.random.gumbel(k_noise, sampled.shape, jnp.float32)
            conf = io.confidence(logits, sampled, gumbel, noise[i])
            # Known cells rank first (+inf) and are re-sampled; k_i counts them.
            conf = jnp.where(code != mask_id, jnp.inf, conf)
            write = io.descending_ranks(conf) < reveal[i]
        return _constrain(jnp.where(write, sampled, code), row_sharding)

    code = jax.lax.fori_loop(0, steps, body, code)
    return jnp.clip(code, 0, codebook_size - 1)


# ----------------------------------------------------------------------------- PGM
def plan_pgm_steps(num_tokens: int, steps: int, order: str, bucket: int = 0) -> list[StepPlan]:
    """The host-side plan of a PGM run: one `StepPlan` per step that reveals tokens.

    Buckets come from `pgm.plan_segments` (BOS + clean tokens <= bucket). Halton queries the
    step's cells, padded to the largest count of its bucket group; confidence queries every
    remaining cell, padded to what remains at the group's first step.
    """
    counts = (io.halton_counts if order == "halton" else io.pgm_confidence_counts)(
        num_tokens, steps)
    live = np.flatnonzero(counts > 0)  # steps that reveal nothing make no call
    length = num_tokens + 1
    bucket = min(bucket or pgm.default_bucket(length), length)
    segments = pgm.plan_segments(counts[live][None], length, bucket, exact_width=True)
    decoded = np.cumsum(counts) - counts
    plans = []
    for seg in segments:
        width = seg.width if order == "halton" else num_tokens - int(decoded[live[seg.first]])
        plans.extend(StepPlan(int(s), int(decoded[s]), int(counts[s]), seg.bucket, width)
                     for s in live[seg.first:seg.last])
    return plans


def sample_pgm(graphdef: nnx.GraphDef, params, model_cfg: ModelConfig, key: Array, *,
               labels: Array, steps: int, order: str, temperature: float, cfg_w: float,
               guided: bool, release_quirk: bool = False, bucket: int = 0,
               compile_only: bool = False, rows=lambda x: x) -> Array:
    """PGM-Halton or PGM-confidence (§4.3): int32 [B, N] raster codes.

    State: `packed` int32 [B, N+1+pad] tokens in reveal order (BOS first) and `positions`
    their sequence positions; for Halton the positions are fixed up front, for confidence the
    not-yet-revealed positions follow the revealed ones in their current order.
    """
    n = model_cfg.length
    plans = plan_pgm_steps(n, steps, order, bucket)
    b = labels.shape[0]
    pad = max(p.width for p in plans)
    first = io.halton_order(io.grid_side(n)) if order == "halton" else np.arange(n)
    positions = np.concatenate([[0], first + 1, np.zeros(pad, np.int64)]).astype(np.int32)
    positions = jnp.broadcast_to(jnp.asarray(positions), (b, positions.shape[0]))
    packed = jnp.full(positions.shape, model_cfg.image_bos_id, jnp.int32)
    packed, positions = rows(packed), rows(positions)
    if order == "halton":
        temps = io.halton_temperatures(1.0 / temperature, steps)
        noise = np.zeros(steps, np.float32)
    else:
        temps = np.full(steps, 1.0 / temperature, np.float32)
        noise = io.gumbel_scales(steps)
    weights = io.cfg_weights(cfg_w, steps, ramp=True)
    if compile_only:  # one call per compiled shape, each running no step
        plans = list({(p.bucket, p.width): dataclasses.replace(p, count=0) for p in plans}
                     .values())
    for p in plans:
        scalars = (jnp.int32(p.decoded), jnp.int32(p.count), jnp.float32(weights[p.step]),
                   jnp.float32(temps[p.step]), jnp.float32(noise[p.step]))
        packed, positions = _pgm_step(
            graphdef, params, packed, positions, labels, jax.random.fold_in(key, p.step),
            *scalars, jnp.int32(0 if compile_only else 1), bucket=p.bucket, width=p.width,
            order=order, guided=guided, release_quirk=release_quirk, num_tokens=n,
            codebook_size=model_cfg.codebook_size, row_sharding=_row_sharding(packed))
    return _finish(packed[:, :n + 1], positions[:, :n + 1], model_cfg.codebook_size,
                   _row_sharding(packed))


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "bucket", "width", "order", "guided", "release_quirk",
                     "num_tokens", "codebook_size", "row_sharding"),
    donate_argnums=(2, 3),
)
def _pgm_step(graphdef, params, packed, positions, labels, key, decoded, count, w, temp, noise,
              calls, *, bucket, width, order, guided, release_quirk, num_tokens, codebook_size,
              row_sharding):
    """One PGM step: reveals `count` tokens after the first `decoded` (traced scalars).

    The encoder sees the static prefix [:bucket] (BOS + decoded tokens + padding keys marked
    invalid); the decoder the `width` positions after them (slots past the step's count, or
    past the sequence, are padding). `calls` (0 or 1) runs the step that many times: 0
    compiles it without running it. Returns the updated (packed, positions), their rows
    split as `row_sharding` says (None: unconstrained).
    """
    body = functools.partial(_pgm_step_body, graphdef, params, labels, key, decoded, count, w,
                             temp, noise, bucket=bucket, width=width, order=order, guided=guided,
                             release_quirk=release_quirk, num_tokens=num_tokens,
                             codebook_size=codebook_size)
    def step(_, state):
        return tuple(_constrain(x, row_sharding) for x in body(*state))

    return jax.lax.fori_loop(0, calls, step, (packed, positions))


def _pgm_step_body(graphdef, params, labels, key, decoded, count, w, temp, noise, packed,
                   positions, *, bucket, width, order, guided, release_quirk, num_tokens,
                   codebook_size):
    model = nnx.merge(graphdef, params)
    b = packed.shape[0]
    start = 1 + decoded
    slots = jnp.arange(width)[None, :]
    window_pos = jax.lax.dynamic_slice_in_dim(positions, start, width, axis=1)  # [B, width]
    window_tok = jax.lax.dynamic_slice_in_dim(packed, start, width, axis=1)
    clean_valid = jnp.broadcast_to(jnp.arange(bucket)[None, :] < start, (b, bucket))
    args = (packed[:, :bucket], positions[:, :bucket], clean_valid, window_pos)
    if guided:
        labels_in, drop_in = io.doubled_conditioning(labels)
        logits = model.infer(*map(io.double, args), labels_in, drop_in,
                             release_quirk=release_quirk)
        logits = io.guide(logits, w)
    else:
        logits = model.infer(*args, labels, jnp.zeros_like(labels, bool),
                             release_quirk=release_quirk).astype(jnp.float32)
    # Draws are keyed by (row, position), so padding slots and keys never shift them.
    k_sample, k_noise = jax.random.split(key)
    if order == "halton":
        # PGM-Halton never samples an id past the codebook (mask, BOS); step 0's temperature
        # is pre-halved.
        logits = logits.at[..., codebook_size:].set(-jnp.inf) * temp
        new = io.draw_at_positions(k_sample, logits, window_pos)
        new = jnp.where(slots < count, new, window_tok)
        return jax.lax.dynamic_update_slice_in_dim(packed, new, start, axis=1), positions
    # Confidence: no suppression (the final clamp maps stray mask / BOS ids into the codebook).
    logits = logits * temp
    new = io.draw_at_positions(k_sample, logits, window_pos)
    conf = io.confidence(logits, new, io.gumbel_at_positions(k_noise, window_pos), noise)
    conf = jnp.where(slots < num_tokens - decoded, conf, -jnp.inf)  # past the sequence
    chosen = io.descending_ranks(conf) < count
    # Chosen slots move to the front of the window in their current order, the rest follow
    # in theirs (the reference's masked_select), so the next window starts after the chosen.
    perm = jnp.argsort(jnp.where(chosen, 0, 1), axis=1, stable=True)
    new = jnp.take_along_axis(new, perm, axis=1)
    window_pos = jnp.take_along_axis(window_pos, perm, axis=1)
    packed = jax.lax.dynamic_update_slice_in_dim(packed, new, start, axis=1)
    positions = jax.lax.dynamic_update_slice_in_dim(positions, window_pos, start, axis=1)
    return packed, positions


@functools.partial(jax.jit, static_argnames=("codebook_size", "row_sharding"))
def _finish(packed: Array, positions: Array, codebook_size: int, row_sharding=None) -> Array:
    """Reveal order -> raster codes int32 [B, N]: scatter, drop BOS, clamp into the codebook."""
    codes = jnp.clip(pgm.to_natural_order(packed, positions)[:, 1:], 0, codebook_size - 1)
    return _constrain(codes, row_sharding)


def _row_sharding(x: Array):
    """x's sharding when its rows are split over devices (`sample_images`' mesh), else None."""
    sh = x.sharding
    return sh if isinstance(sh, jax.sharding.NamedSharding) and not sh.is_fully_replicated \
        else None


def _constrain(x: Array, row_sharding) -> Array:
    """Why: the model's gathers and scatters leave XLA free to replicate the sampler state;
    this keeps each device on its own rows."""
    return x if row_sharding is None else jax.lax.with_sharding_constraint(x, row_sharding)


def grid_labels(num_classes: int, per_class: int, classes: list[int] | None = None
                ) -> np.ndarray:
    """int32 [len(classes) * per_class]: each class repeated per_class times, class by class
    (one grid row per class). Default classes: all when <= 10, else 10 spread evenly."""
    if classes is None:
        classes = (list(range(num_classes)) if num_classes <= 10 else
                   np.linspace(0, num_classes - 1, 10).round().astype(int).tolist())
    return np.repeat(np.asarray(classes, np.int32), per_class)


def image_samples(graphdef: nnx.GraphDef, params: dict, model_cfg: ModelConfig, key: jax.Array,
                  labels: np.ndarray, batch_size: int, mesh: Mesh | None = None, **sampler
                  ) -> np.ndarray:
    """int32 [M, N] samples of `labels` (int [M]) on the host, `batch_size` at a time.

    Batch i draws with `fold_in(key, i)`; the last batch is padded to `batch_size` (one
    compiled shape). With `mesh`, each batch is split over its data-parallel devices when they
    divide `batch_size` (as `sampling.generate_many`), else it is not split; the samples are
    the same either way. `sampler`: `sample_images`' settings (steps, order, temperature,
    cfg_w, release_quirk, bucket).
    """
    if mesh is not None and batch_size % sharding.data_parallel_size(mesh):
        logging.warning("batch size %d is not divisible by the %d data-parallel devices: the "
                        "batch is not sharded", batch_size, sharding.data_parallel_size(mesh))
        mesh = None
    out = []
    for i, start in enumerate(range(0, len(labels), batch_size)):
        chunk = np.asarray(labels[start:start + batch_size], np.int32)
        padded = np.pad(chunk, (0, batch_size - len(chunk)))
        codes = sample_images(graphdef, params, model_cfg, jax.random.fold_in(key, i),
                              labels=padded, mesh=mesh, **sampler)
        codes = multihost_utils.process_allgather(codes, tiled=True)  # every process: all rows
        out.append(np.asarray(codes)[:len(chunk)])
    return np.concatenate(out).astype(np.int32)
