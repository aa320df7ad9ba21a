"""Self-Distillation Through Time (SDTT) for PGM and MDLM (spec §8): the math, no training loop.

A teacher takes `num_distill_steps` (2) ancestral MDLM steps of size dt from x_t; each token it
reveals gets the teacher's log-probabilities of the step that revealed it as its target, and
tokens still masked after the last step get that step's log-probabilities. The student makes
one forward at x_t and is trained with the reverse KL, KL(p_student || p_teacher), averaged over
the masked tokens. Rounds: dt = (1 - eps) / orig_num_sampling_steps * num_distill_steps^round,
round = step // grow_dt_every; at each round boundary the student becomes the teacher, and the
run stops when the teacher's effective number of steps, round(1 / dt), drops below
`min_num_sampling_steps`.

The PGM is used as a masked model with its training-mode forward: group 1 = the MASK positions
(their MASK tokens are never read), group 0 = the visible tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pgm_jax.objectives import schedule

Array = jax.Array
Forward = Callable[[Array, Array], Array]  # (x_t int32 [B, L], t float32 [B]) -> logp [B, L, V]

SAMPLING_EPS = 1e-5  # the distillation branch's `sampling_eps` (t range and dt)
NEG = -1e7  # the reference's finite "-inf" for MASK in its SUBS post-processing


# ----------------------------------------------------------------------------- round schedule
@dataclasses.dataclass(frozen=True)
class Schedule:
    """The round schedule of `config.distill` (see the module docstring)."""

    grow_dt_every: int = 10_000
    orig_num_sampling_steps: int = 1024
    min_num_sampling_steps: int = 8
    num_distill_steps: int = 2

    def dt(self, round_: int | Array) -> Array | float:
        """The teacher's step size in `round_` (python number or traced int)."""
        base = (1.0 - SAMPLING_EPS) / self.orig_num_sampling_steps
        if isinstance(round_, int):
            return base * self.num_distill_steps ** round_
        return base * jnp.power(float(self.num_distill_steps), round_.astype(jnp.float32))

    def round_of(self, step: int | Array) -> int | Array:
        return step // self.grow_dt_every

    def effective_steps(self, round_: int) -> int:
        """The teacher's number of sampling steps in `round_`, round(1 / dt)."""
        return round(1.0 / self.dt(round_))

    def last_step(self, num_steps: int) -> int:
        """The step at which training ends: `num_steps`, or the first round boundary whose
        effective number of steps is below `min_num_sampling_steps` (the reference exits
        there, before that step's update)."""
        boundary = self.grow_dt_every
        while boundary < num_steps:
            if self.effective_steps(boundary // self.grow_dt_every) < self.min_num_sampling_steps:
                return boundary
            boundary += self.grow_dt_every
        return num_steps

    def rounds(self, num_steps: int) -> list[tuple[int, int, float]]:
        """(first step, round, teacher dt) of every round a run of `num_steps` trains."""
        end = self.last_step(num_steps)
        return [(s, s // self.grow_dt_every, self.dt(s // self.grow_dt_every))
                for s in range(0, end, self.grow_dt_every)]


# ----------------------------------------------------------------------------- times
def sample_times(key: Array, n: int) -> Array:
    """Antithetic times float32 [n]: one U(0,1) shifted by i/n, mod 1, into [eps, 1)."""
    u = jax.random.uniform(key, (), jnp.float32)
    strata = jnp.mod(u + jnp.arange(n, dtype=jnp.float32) / n, 1.0)
    return (1.0 - SAMPLING_EPS) * strata + SAMPLING_EPS


def teacher_times(t: Array, dt: Array | float, num_steps: int, reference_grid: bool = False
                  ) -> Array:
    """The teacher's step start times float32 [num_steps, B] for batch times t [B].

    Correct grid: t, t - dt, ..., t - (n-1) dt (n steps of dt from t). `reference_grid`: the
    reference's (and upstream SDTT's) `t_start * space + (1 - t_start) * t_end` with space =
    linspace(1, 0, n), t_end = t - n dt, i.e. [t + (1 - t)(t - 2dt), (1 - t)(t - 2dt)] for n = 2
    (spec §9 item 9). Both are clamped at `SAMPLING_EPS`.
    """
    t = t[None, :]
    if reference_grid:
        space = jnp.linspace(1.0, 0.0, num_steps, dtype=jnp.float32)[:, None]
        ts = t * space + (1.0 - t) * (t - dt * num_steps)
    else:
        ts = t - dt * jnp.arange(num_steps, dtype=jnp.float32)[:, None]
    return jnp.maximum(ts, SAMPLING_EPS)


# ----------------------------------------------------------------------------- forwards
def masked_logprobs(logits: Array, mask_index: int) -> Array:
    """float32 [B, L, V] log-probabilities with MASK excluded (its entry is the finite NEG, so
    exp() is exactly 0 and the KL and its gradient stay finite)."""
    logits = logits.astype(jnp.float32).at[..., mask_index].set(NEG)
    return jax.nn.log_softmax(logits, axis=-1)


def forward_fn(model: nnx.Module, algo: str, key: Array | None = None) -> Forward:
    """The model as a masked denoiser: (x_t, t) -> log p(x0 | x_t) [B, L, V].

    PGM: training-mode forward with groups = (x_t == MASK). MDLM: the DiT on x_t with
    sigma(t) (read only with time conditioning). `key` enables dropout.
    """
    mask = model.cfg.mask_index
    if algo == "pgm":
        return lambda xt, t: masked_logprobs(model(xt, (xt == mask).astype(jnp.int32), key=key),
                                             mask)
    if algo == "mdlm":
        return lambda xt, t: masked_logprobs(model(xt, sigma=schedule.sigma_of(t), key=key),
                                             mask)
    raise ValueError(f"SDTT distils algo pgm or mdlm, not {algo!r}")


# ----------------------------------------------------------------------------- targets, loss
def teacher_targets(forward: Forward, xt: Array, t: Array, dt: Array | float, key: Array,
                    mask_index: int, num_steps: int = 2, reference_grid: bool = False
                    ) -> Array:
    """Per-token teacher log-probabilities float32 [B, L, V] (no gradient).

    xt: int32 [B, L]; t: float32 [B]. Step i at time s_i (`teacher_times`) reveals each masked
    token with probability (alpha(s_i - dt) - alpha(s_i)) / (1 - alpha(s_i)) (>= 1 when
    s_i - dt < 0: all of them) to a draw from the teacher's p(x0 | x); the tokens it reveals take
    that step's log-probabilities as targets, and the tokens left masked the last step's.
    """
    ts = teacher_times(t, dt, num_steps, reference_grid)
    x, targets, logp = xt, jnp.zeros((*xt.shape, 1), jnp.float32), None
    for i in range(num_steps):  # 2 steps: unrolled
        s = ts[i]
        logp = forward(x, s)
        a_t, a_s = schedule.alpha(s), schedule.alpha(s - dt)
        p_reveal = (a_s - a_t) / (1.0 - a_t)
        k_tok, k_rev = jax.random.split(jax.random.fold_in(key, i))
        x0 = jax.random.categorical(k_tok, logp, axis=-1).astype(x.dtype)
        reveal = (x == mask_index) & (jax.random.uniform(k_rev, x.shape) < p_reveal[:, None])
        targets = jnp.where(reveal[..., None], logp, targets)
        x = jnp.where(reveal, x0, x)
    targets = jnp.where((x == mask_index)[..., None], logp, targets)
    return jax.lax.stop_gradient(targets)


def reverse_kl(student_logp: Array, teacher_logp: Array, weight: Array) -> tuple[Array, Array]:
    """(sum over weighted tokens of KL(p_student || p_teacher), sum of weights).

    student_logp, teacher_logp: float32 [B, L, V]; weight: [B, L] (masked and valid tokens).
    The reference's `F.kl_div(teacher, student, log_target=True, reduction='batchmean')` over
    the masked tokens is the ratio of the two.
    """
    kl = jnp.sum(jnp.exp(student_logp) * (student_logp - teacher_logp), axis=-1)
    w = weight.astype(jnp.float32)
    return jnp.sum(kl * w), jnp.sum(w)


def distill_loss(student: Forward, teacher: Forward, x0: Array, valid: Array, key: Array,
                 dt: Array | float, mask_index: int, num_steps: int = 2,
                 reference_grid: bool = False) -> tuple[Array, Array]:
    """One SDTT estimate on clean tokens x0 int32 [B, L]: (sum of token KLs, masked tokens).

    t ~ `sample_times`, x_t = x0 masked with probability (1 - 1e-3) t, teacher targets from
    `teacher_targets`, student log p from one forward at x_t.
    """
    k_t, k_m, k_teach = jax.random.split(key, 3)
    t = sample_times(k_t, x0.shape[0])
    xt = schedule.mask_tokens(k_m, x0, t, mask_index)
    targets = teacher_targets(teacher, xt, t, dt, k_teach, mask_index, num_steps, reference_grid)
    return reverse_kl(student(xt, t), targets, (xt == mask_index) & (valid > 0))
