"""PGM's efficient samplers (spec §3.1, §3.2), with the encoder cost tracking decoded length.

Every sequence starts as [BOS] at position 0; the other L-1 positions are visited in a
per-sequence uniformly random order. At each network call the encoder sees only the clean
tokens (packed, with their absolute positions) and the decoder only the positions decoded at
this call. Two schedules decide how many tokens each call decodes:

* `efficient-uniform` (the reference default): k = L / S per call, so the last call gets k-1.
* `efficient-non-uniform`: Binomial(L, dt) per sequence and call (dt = (1 - 1e-5) / S, the
  rate at t = 1, never re-evaluated; spec §9.16), clipped to what is left; a final call
  decodes any leftovers. Calls where no sequence decodes anything are skipped, as in the
  reference.

The schedule never depends on the sampled tokens, so it is drawn up front and the host knows
every call's shapes before the first one runs.

Why buckets: under jit shapes are static. Padding the encoder input to L at every call would
make each call cost as much as the last one and lose most of PGM's speed-up. Instead the
clean prefix is padded to the next multiple of `bucket` tokens (key padding is masked by
`concrete_lengths`, so it has no effect); consecutive calls that fit one bucket run inside
one compiled `fori_loop`, and only L / bucket shapes are ever compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgm_jax.sampling.categorical import sample_logits, x64_scope
from pgm_jax.sampling.prompts import Conditioning

Array = jax.Array
MODES = ("efficient-uniform", "efficient-non-uniform")
T_MIN = 1e-5  # the reference's final time; sets the non-uniform rate dt = (1 - T_MIN) / S


def tokens_per_step(length: int, steps: int) -> int:
    """k = L / S; the reference requires S to divide L (checked by the callers' flags)."""
    if length % steps:
        raise ValueError(f"sample.steps={steps} must divide model.length={length}")
    return length // steps


def default_bucket(length: int) -> int:
    """Bucket size: L/16 rounded up to a multiple of 8, at least 64 (at most 16 shapes).

    Padding costs half a bucket per call on average, L/32 tokens or ~6% of the mean clean
    length L/2 (12% with L/8 buckets); each bucket is one more compilation, so short sequences,
    where compiling dominates, get few.
    """
    return max(64, int(math.ceil(length / 16 / 8) * 8))


def uniform_counts(num_samples: int, length: int, steps: int,
                   remaining: np.ndarray | None = None) -> np.ndarray:
    """int32 [N, calls]: k = L/S tokens per call until each sequence's `remaining` positions
    (int [N]; default L-1, so the last of S calls gets k-1) are decoded: a prompt shortens
    the schedule to ceil(remaining / k) calls."""
    k = tokens_per_step(length, steps)
    remaining = np.full(num_samples, length - 1) if remaining is None else remaining
    calls = max(1, -(-int(np.max(remaining)) // k))
    done = k * np.arange(calls)[None, :]
    counts = np.clip(np.asarray(remaining)[:, None] - done, 0, k).astype(np.int32)
    return _drop_empty_calls(counts)


def binomial_counts(key: Array, num_samples: int, length: int, steps: int,
                    remaining: np.ndarray | None = None) -> np.ndarray:
    """int32 [N, calls]: the reference's non-uniform schedule (see the module docstring),
    clipped to each sequence's `remaining` positions (int [N]; default L-1)."""
    dt = (1.0 - T_MIN) / steps
    remaining = np.full((num_samples, 1), length - 1) if remaining is None else \
        np.asarray(remaining)[:, None]
    draws = jax.random.binomial(key, length, dt, (num_samples, steps), jnp.float32)
    decoded = np.minimum(np.cumsum(np.asarray(draws, np.int64), axis=1), remaining)
    counts = np.diff(decoded, axis=1, prepend=0)
    leftover = remaining - decoded[:, -1:]
    if leftover.any():
        counts = np.concatenate([counts, leftover], axis=1)
    return _drop_empty_calls(counts.astype(np.int32))


def _drop_empty_calls(counts: np.ndarray) -> np.ndarray:
    return counts[:, counts.max(axis=0) > 0]


@dataclasses.dataclass(frozen=True)
class Segment:
    """Calls [first, last) compiled as one loop: clean prefix <= bucket, `width` queries."""

    first: int
    last: int
    bucket: int
    width: int


def plan_segments(counts: np.ndarray, length: int, bucket: int, exact_width: bool,
                  given: np.ndarray | None = None) -> list[Segment]:
    """Groups consecutive calls by encoder bucket; one query width per group.

    `exact_width`: the decoder gets exactly the largest count of the group (the uniform
    schedule decodes k every call). Otherwise the width is rounded up to a power of two, so
    that different draws of a ragged schedule reuse the compiled shapes. `given` (int [N],
    default 1: BOS) is each sequence's clean length before the first call.
    """
    decoded_before = np.cumsum(counts, axis=1) - counts  # [N, calls]
    if given is not None:
        decoded_before = decoded_before + (np.asarray(given) - 1)[:, None]
    need = 1 + decoded_before.max(axis=0)
    buckets = np.minimum(-(-need // bucket) * bucket, length)
    segments: list[Segment] = []
    for b in np.unique(buckets):  # buckets grow with the call index: each is one run
        calls = np.flatnonzero(buckets == b)
        width = int(counts[:, calls].max())
        if not exact_width:
            width = 1 << (width - 1).bit_length()
        segments.append(Segment(int(calls[0]), int(calls[-1]) + 1, int(b), width))
    return segments


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "bucket", "width", "top_p", "temperature", "float64"),
    donate_argnums=(2,),
)
def _run_segment(graphdef, params, packed, positions, decoded_before, counts, key, first, last,
                 *, bucket, width, top_p, temperature, float64):
    """Runs calls [first, last) whose clean prefix fits in `bucket` tokens.

    packed: int32 [N, L + pad] tokens in decoding order (index 0 is BOS; entries past the
    decoded prefix hold anything); positions: int32 [N, L + pad] their absolute positions
    (0, then the permutation of 1..L-1, then 0 padding); decoded_before, counts: int32
    [N, calls]. Returns the updated `packed`.
    """
    model = nnx.merge(graphdef, params)
    n = packed.shape[0]
    rows = jnp.arange(n)[:, None]
    slots = jnp.arange(width)[None, :]
    # The encoder input is a static slice: decoded tokens are packed at the front.
    clean_pos = positions[:, :bucket]

    def body(s, packed):
        before, count = decoded_before[:, s], counts[:, s]
        q_idx = 1 + before[:, None] + slots  # [N, width] indices into the packed order
        q_pos = jnp.take_along_axis(positions, q_idx, axis=1)
        logits = model.infer(packed[:, :bucket], clean_pos, q_pos, 1 + before)
        new = sample_logits(jax.random.fold_in(key, s), logits, mask_index=model.cfg.mask_index,
                            top_p=top_p, temperature=temperature, float64=float64)
        # Query slots past this sequence's count (ragged schedules, the last call's padding)
        # keep what is there; they are decoded by a later call, or are padding.
        new = jnp.where(slots < count[:, None], new, jnp.take_along_axis(packed, q_idx, axis=1))
        return packed.at[rows, q_idx].set(new)

    return jax.lax.fori_loop(first, last, body, packed)


def sample(graphdef: nnx.GraphDef, params: dict, key: Array, *, num_samples: int, length: int,
           steps: int, bos_id: int, top_p: float = 1.0, temperature: float = 1.0,
           float64: bool = False, mode: str = "efficient-uniform", bucket: int = 0,
           batch_sharding=None, compile_only: bool = False, cond: Conditioning | None = None
           ) -> Array:
    """Draws `num_samples` sequences int32 [num_samples, length] with BOS at position 0.

    `cond` (optional, `num_samples` rows): given tokens start in the clean set at their
    positions and stay as they are; only its `decode` positions are visited (in a uniformly
    random order), so the number of calls and the encoder's length count only those.

    `bucket` (0 = `default_bucket(length)`; `length` = pad to L, the naive baseline) sets the
    encoder's shape granularity; it changes the cost, never the samples. `compile_only` runs
    every compiled loop over an empty range of calls: it compiles what a real call with the
    same arguments needs, and returns the (undecoded) initial tokens.
    """
    if mode not in MODES:
        raise ValueError(f"sample.mode={mode!r}: must be one of {MODES}")
    k_order, k_sched, k_steps = jax.random.split(key, 3)
    remaining = None if cond is None else cond.num_decode
    if mode == "efficient-uniform":
        counts = uniform_counts(num_samples, length, steps, remaining)
    else:
        counts = binomial_counts(k_sched, num_samples, length, steps, remaining)
    segments = plan_segments(counts, length, min(bucket or default_bucket(length), length),
                             exact_width=mode == "efficient-uniform",
                             given=None if cond is None else cond.num_given)
    if not segments:  # a prompt that leaves nothing to decode
        return jnp.asarray(cond.tokens, jnp.int32)
    pad = max(s.width for s in segments)
    decoded_before = np.cumsum(counts, axis=1) - counts
    if cond is None:
        # Per-sequence uniformly random order of positions 1..L-1 (argsort of uniforms).
        u = jax.random.uniform(k_order, (num_samples, length - 1), jnp.float32)
        order = (jnp.argsort(u, axis=1) + 1).astype(jnp.int32)
        order = jnp.concatenate([jnp.zeros((num_samples, 1), jnp.int32), order], 1)
        packed = jnp.full((num_samples, length + pad), bos_id, jnp.int32)
    else:
        order, packed = _conditioned_order(k_order, cond, pad)
        # The given tokens are the first `num_given` packed entries: shifting every call's
        # decoded count by num_given - 1 makes `_run_segment` (written for BOS alone) query
        # after them and give the encoder exactly the clean prefix.
        decoded_before = decoded_before + (cond.num_given - 1)[:, None]
    positions = jnp.concatenate([order, jnp.zeros((num_samples, pad), jnp.int32)], 1)
    arrays = (packed, positions, jnp.asarray(decoded_before, jnp.int32),
              jnp.asarray(counts, jnp.int32))
    if batch_sharding is not None:
        arrays = jax.device_put(arrays, batch_sharding)
    packed, positions, decoded_before, counts = arrays
    with x64_scope(float64):
        for seg in segments:
            first = seg.last if compile_only else seg.first
            packed = _run_segment(graphdef, params, packed, positions, decoded_before, counts,
                                  k_steps, first, seg.last, bucket=seg.bucket, width=seg.width,
                                  top_p=float(top_p), temperature=float(temperature),
                                  float64=float64)
    return to_natural_order(packed[:, :length], positions[:, :length])


def _conditioned_order(key: Array, cond: Conditioning, pad: int) -> tuple[Array, Array]:
    """(positions int32 [N, L], packed tokens int32 [N, L + pad]): the given positions in
    increasing order (BOS first), then the decode positions in a uniformly random order, then
    the unused ones (never reached)."""
    n, length = cond.given.shape
    pos = jnp.arange(length, dtype=jnp.float32)[None] / length
    u = jax.random.uniform(key, (n, length), jnp.float32)
    rank = jnp.where(cond.given, pos - 2.0, jnp.where(cond.decode, u, pos + 2.0))
    order = jnp.argsort(rank, axis=1).astype(jnp.int32)
    packed = jnp.take_along_axis(jnp.asarray(cond.tokens, jnp.int32), order, axis=1)
    return order, jnp.pad(packed, ((0, 0), (0, pad)))


@jax.jit
def to_natural_order(packed: Array, positions: Array) -> Array:
    """out[b, positions[b, i]] = packed[b, i]; positions[b] is a permutation of 0..L-1."""
    rows = jnp.arange(packed.shape[0])[:, None]
    return jnp.zeros_like(packed).at[rows, positions].set(packed)
