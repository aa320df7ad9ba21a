"""Reveal orders, unmasking schedules and guidance for the image samplers (spec pgm_image §4).

Host-side (numpy) parts are fixed per (N, S) and decide every step's static shape:

* the 2-D Halton order of the grid cells (`halton_order`);
* the arccos schedules: confidence T_i (MaskGIT reveals k_i = max(T_i, i+1) cumulatively,
  PGM n_0 = 1 then T_i - T_{i-1}, the last step what remains) and Halton R_i;
* per-step scalars: the CFG weight ramp, the Halton temperatures, the Gumbel scale.

The schedules use float32 arithmetic and truncation as the reference's torch code does
(`torch.linspace` / `torch.arccos` in float32, then `int`), so boundary cases round alike
(float64 would move a token between steps for some (N, S), e.g. N = 4096, S = 90).

Device-side parts are pure jax functions: classifier-free guidance on a doubled batch, the
confidence score log p(sampled) + Gumbel * scale, and ranks by `lax.top_k`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pgm_jax.sampling.categorical import gumbel_argmax_float32

Array = jax.Array
R_TEMP = 5.0  # the samplers' Gumbel scale at step 0 (`r_temp`), decaying linearly to 0
HALTON_WARMUP_SCALE = 0.5  # Halton samplers multiply step 0's logits by 0.5 (`temp_warmup=1`)
_HALF_PI = np.float32(math.pi * 0.5)


# ----------------------------------------------------------------------------- Halton order
def _radical_inverse(index: np.ndarray, base: int) -> np.ndarray:
    """Van der Corput: the base-b digits of `index` mirrored after the point, float64."""
    out = np.zeros(index.shape, np.float64)
    scale = 1.0 / base
    index = index.copy()
    while index.any():
        out += (index % base) * scale
        index //= base
        scale /= base
    return out


def halton_cells(side: int) -> np.ndarray:
    """int32 [side**2, 2] (row, col): the 2-D Halton order of a side x side grid.

    Halton points 1, 2, ... (base 2 -> row, base 3 -> col; point 0, the origin, is skipped)
    scaled by `side` and floored; repeated cells keep their first occurrence. For side 32 the
    order starts (16, 10), (8, 21), (24, 3), (4, 14). Points are generated until every cell is
    hit (the reference draws a fixed 10,000, enough for side 32).
    """
    if side <= 0:
        raise ValueError(f"grid side must be positive, got {side}")
    cells = side * side
    count = max(4 * cells, 64)
    while True:
        index = np.arange(1, count + 1, dtype=np.int64)
        pts = np.stack([_radical_inverse(index, 2), _radical_inverse(index, 3)], axis=1)
        grid = np.floor(pts * side).astype(np.int64)
        _, first = np.unique(grid[:, 0] * side + grid[:, 1], return_index=True)
        if len(first) == cells:
            return grid[np.sort(first)].astype(np.int32)
        count *= 2


def halton_order(side: int) -> np.ndarray:
    """int32 [side**2]: raster indices (row * side + col) in Halton order, a permutation."""
    cells = halton_cells(side)
    return (cells[:, 0] * side + cells[:, 1]).astype(np.int32)


def grid_side(num_tokens: int) -> int:
    """The side of the square token grid; N must be a perfect square."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"model.length={num_tokens} image tokens is not a square grid")
    return side


# ----------------------------------------------------------------------------- schedules
def _check_steps(num_tokens: int, steps: int) -> None:
    if not 2 <= steps <= num_tokens:
        raise ValueError(f"sample.steps={steps} must be in [2, N={num_tokens}] for the image "
                         "samplers")


def _torch_linspace01(steps: int) -> np.ndarray:
    """float32 [S]: torch.linspace(0, 1, S) in float32 (each half stepped from its own end)."""
    step = np.float32(1.0) / np.float32(steps - 1)
    i = np.arange(steps)
    low = step * i.astype(np.float32)
    high = np.float32(1.0) - step * (steps - 1 - i).astype(np.float32)
    return np.where(i < steps // 2, low, high).astype(np.float32)


def _arccos_fraction(r: np.ndarray) -> np.ndarray:
    """float32 1 - arccos(r) / (pi/2): the fraction of revealed tokens at schedule point r."""
    r = np.asarray(r, np.float32)
    return (np.float32(1.0) - np.arccos(r).astype(np.float32) / _HALF_PI).astype(np.float32)


def confidence_totals(num_tokens: int, steps: int) -> np.ndarray:
    """int64 [S]: T_i = int(N (1 - arccos(i/(S-1)) / (pi/2))); T_0 = 0, T_{S-1} = N."""
    _check_steps(num_tokens, steps)
    frac = _arccos_fraction(_torch_linspace01(steps))
    return (frac * np.float32(num_tokens)).astype(np.int64)


def maskgit_confidence_k(num_tokens: int, steps: int) -> np.ndarray:
    """int32 [S]: MaskGIT's cumulative top-k size k_i = max(T_i, i+1) (known tokens included)."""
    totals = confidence_totals(num_tokens, steps)
    return np.maximum(totals, np.arange(1, steps + 1)).astype(np.int32)


def pgm_confidence_counts(num_tokens: int, steps: int) -> np.ndarray:
    """int32 [S]: tokens PGM-confidence reveals per step: 1, then T_i - T_{i-1}, and at the
    last step whatever remains (one off from MaskGIT's cumulative k_i, as the reference)."""
    totals = confidence_totals(num_tokens, steps)
    counts = np.diff(totals, prepend=0)
    counts[0] = max(int(totals[0]), 1)
    counts[-1] = num_tokens - counts[:-1].sum()
    return counts.astype(np.int32)


def halton_totals(num_tokens: int, steps: int) -> np.ndarray:
    """int64 [S]: R_i = max(i+1, int(N (1 - arccos((i+1)/S) / (pi/2)))); R_{S-1} = N."""
    _check_steps(num_tokens, steps)
    ratio = np.array([(i + 1) / steps for i in range(steps)], np.float64).astype(np.float32)
    totals = (_arccos_fraction(ratio) * np.float32(num_tokens)).astype(np.int64)
    return np.maximum(totals, np.arange(1, steps + 1))


def halton_counts(num_tokens: int, steps: int) -> np.ndarray:
    """int32 [S]: tokens revealed per Halton step, R_i - R_{i-1} (20, 20, 21, ... 164 for
    N=1024, S=32)."""
    return np.diff(halton_totals(num_tokens, steps), prepend=0).astype(np.int32)


def cfg_weights(w: float, steps: int, ramp: bool) -> np.ndarray:
    """float32 [S]: guidance weights, w i/(S-1) (ramp) or constant w (MaskGIT-Halton)."""
    if not ramp:
        return np.full(steps, w, np.float32)
    return (w * (np.arange(steps) / (steps - 1))).astype(np.float32)


def gumbel_scales(steps: int) -> np.ndarray:
    """float32 [S]: the confidence samplers' noise scale R_TEMP (1 - i/(S-1))."""
    return (R_TEMP * (1.0 - np.arange(steps) / (steps - 1))).astype(np.float32)


def halton_temperatures(sm_temp: float, steps: int) -> np.ndarray:
    """float32 [S]: the Halton samplers' logit multipliers linspace(1, sm_temp, S) (the
    reference's sm_temp_min = 1 .. sm_temp; sm_temp = 1 / sample.temperature), step 0 halved
    (`temp_warmup=1`)."""
    temps = np.linspace(1.0, sm_temp, steps).astype(np.float32)
    temps[0] *= HALTON_WARMUP_SCALE
    return temps


# ----------------------------------------------------------------------------- device parts
def doubled_conditioning(labels: Array) -> tuple[Array, Array]:
    """Labels [y; y] int32 [2B] and drop flags [False; True] bool [2B] for one CFG pass:
    the second half is the unconditional branch (the model maps dropped labels to the null
    class)."""
    b = labels.shape[0]
    drop = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
    return jnp.concatenate([labels, labels]), drop


def double(x: Array) -> Array:
    """[B, ...] -> [2B, ...]: the same rows for both CFG branches."""
    return jnp.concatenate([x, x], axis=0)


def guide(logits: Array, w: Array | float) -> Array:
    """[2B, ..., V] logits of a doubled batch -> (1 + w) l_cond - w l_uncond, float32 [B, ..., V].

    Computed in float32 (the torch PGM path guides bf16 logits: a deliberate deviation)."""
    cond, uncond = jnp.split(logits.astype(jnp.float32), 2, axis=0)
    return (1.0 + w) * cond - w * uncond


def confidence(scaled_logits: Array, sampled: Array, gumbel: Array, noise_scale: Array | float
               ) -> Array:
    """float32 [...]: log p(sampled) + noise_scale * gumbel, p = softmax(scaled_logits).

    scaled_logits: [..., V] (temperature already applied); sampled: int32 [...]; gumbel:
    standard Gumbel noise float32 [...].
    """
    logp = jax.nn.log_softmax(scaled_logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, sampled[..., None], axis=-1)[..., 0]
    return picked + noise_scale * gumbel


def position_keys(key: Array, positions: Array) -> Array:
    """PRNG keys [B, q], one per (row, sequence position): fold_in(fold_in(key, row), pos).

    Keying draws by position rather than by slot makes a sample independent of how many
    padding slots or keys a step carries, so bucket sizes cannot change it.
    """
    rows = jnp.arange(positions.shape[0], dtype=jnp.int32)
    per_row = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
    return jax.vmap(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))(per_row, positions)


def draw_at_positions(key: Array, logits: Array, positions: Array) -> Array:
    """A draw from softmax(logits) float32 [B, q, V] -> int32 [B, q], keyed by position."""
    keys = position_keys(key, positions)
    return jax.vmap(jax.vmap(gumbel_argmax_float32))(keys, logits)


def gumbel_at_positions(key: Array, positions: Array) -> Array:
    """Standard Gumbel noise float32 [B, q], keyed by (row, position)."""
    keys = position_keys(key, positions)
    return jax.vmap(jax.vmap(lambda k: jax.random.gumbel(k, (), jnp.float32)))(keys)


def descending_ranks(scores: Array) -> Array:
    """int32 [B, n]: each entry's rank by decreasing score (0 = highest), via `lax.top_k`.

    Ranks let a traced count k select the top k (rank < k) under one static shape; ties are
    measure-zero with Gumbel noise (torch's `conf >= kth` could take extra tokens there).
    """
    n = scores.shape[-1]
    _, idx = jax.lax.top_k(scores, n)
    rows = jnp.arange(scores.shape[0])[:, None]
    return jnp.zeros(scores.shape, jnp.int32).at[rows, idx].set(
        jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), scores.shape))
