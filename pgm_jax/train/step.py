"""Train state and the pure train step (jitted with explicit shardings).

The model is split once into a static `graphdef` and a pure-dict parameter tree; the steps
merge them inside the traced function (flax gemma's functional pattern), so the state is a
plain pytree that optax, the EMA, `jax.jit` shardings and orbax all handle directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pgm_jax import sharding
from pgm_jax.objectives.losses import LossFn
from pgm_jax.objectives.schedule import antithetic_t

Array = jax.Array
Batch = dict[str, Array]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator.

    step: int32 []; params, ema: pure dicts of float32 arrays; opt_state: optax state;
    key: uint32 [2] base key, per-step keys are `fold_in(key, step)`.
    """

    step: Array
    params: dict
    opt_state: Any
    ema: dict
    key: Array


def ema_decay_at(step: Array, decay: float) -> Array:
    """The reference EMA warm-up: min(decay, (1 + n) / (10 + n)) at update n = step + 1."""
    n = (step + 1).astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def init_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state from an initialised model (EMA starts at the params)."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema=jax.tree.map(jnp.copy, params),
        key=jax.random.key_data(jax.random.key(seed)),
    )


def state_shardings(model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh
                    ) -> TrainState:
    """NamedShardings for every leaf of the TrainState (optimizer moments follow params)."""
    specs = sharding.param_specs(model, mesh)
    params_abs = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    opt_abs = jax.eval_shape(tx.init, params_abs)
    opt_specs = optax.tree_map_params(
        tx, lambda _, spec: spec, opt_abs, specs,
        transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P),
    )
    rep = sharding.replicated(mesh)
    return TrainState(
        step=rep,
        params=sharding.named(mesh, specs),
        opt_state=sharding.named(mesh, opt_specs),
        ema=sharding.named(mesh, specs),
        key=rep,
    )


def microbatches(batch: Batch, grad_accum: int, data_shards: int) -> Batch:
    """Global [B, ...] arrays -> [grad_accum, B / grad_accum, ...] micro-batches.

    Micro-batch j takes the j-th sub-slice of every data shard's rows (a shard holds B /
    data_shards contiguous rows), so each micro-batch stays spread over all devices and the
    split moves no data between them.
    """

    def split(x: Array) -> Array:
        per_shard = x.shape[0] // (data_shards * grad_accum)
        x = x.reshape(data_shards, grad_accum, per_shard, *x.shape[1:]).swapaxes(0, 1)
        return x.reshape(grad_accum, data_shards * per_shard, *x.shape[3:])

    return jax.tree.map(split, batch)


def accumulated_grads(graphdef: nnx.GraphDef, loss_fn: LossFn, params: dict, batch: Batch,
                      key: Array, grad_accum: int = 1, data_shards: int = 1
                      ) -> tuple[Array, Array, dict]:
    """(sum of token NLLs, valid tokens, gradient of the sum) over the batch.

    With grad_accum > 1 a `lax.scan` runs the micro-batches one after another, so activations
    exist for one micro-batch at a time; the diffusion times are drawn once, stratified over
    the global batch, and sliced like the tokens (`batch["t"]`, see
    `objectives.schedule.batch_times`).
    Micro-batch j draws its other noise from `fold_in(key, j)`.
    """

    def grads_of(mb: Batch, k: Array) -> tuple[Array, Array, dict]:
        def total_nll(p):
            return loss_fn(nnx.merge(graphdef, p), mb, k, True)

        (total, count), grads = jax.value_and_grad(total_nll, has_aux=True)(params)
        return total, count, grads

    if grad_accum == 1:
        return grads_of(batch, key)
    k_t, key = jax.random.split(key)
    t = antithetic_t(k_t, batch["tokens"].shape[0])
    micro = microbatches({**batch, "t": t}, grad_accum, data_shards)

    def body(acc, xs):
        j, mb = xs
        return jax.tree.map(jnp.add, acc, grads_of(mb, jax.random.fold_in(key, j))), None

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
             jax.tree.map(jnp.zeros_like, params))
    acc, _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
    return acc


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, ema_decay: float,
                    total: Array, count: Array, grads: dict) -> tuple[TrainState, Array, Array]:
    """One optimizer + EMA update from summed gradients; returns (state, mean loss, grad norm).

    total: float32 [] summed loss; count: float32 [] tokens it covers; grads: the summed
    gradients (same tree as `state.params`). Normalising by the token count here keeps the
    mean exact across micro-batches and data shards.
    """
    denom = jnp.maximum(count, 1.0)
    loss = total / denom
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
    # One bad batch must not poison the weights and Adam moments for good. The select is
    # computed on the device (no host sync) and fuses into the update's elementwise ops.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new = state.replace(step=state.step + 1, params=keep_old(params, state.params),
                        opt_state=keep_old(opt_state, state.opt_state),
                        ema=keep_old(ema, state.ema))
    return new, loss, grad_norm


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    ema_decay: float, grad_accum: int = 1, data_shards: int = 1
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """(state, batch) -> (state, metrics); pure, to be jitted with donation of the state.

    The loss is the per-token average over the global batch: gradients of the summed NLL
    (accumulated over `grad_accum` micro-batches, `accumulated_grads`) divided by the number
    of valid tokens. `data_shards` is the mesh's data x fsdp size (micro-batch layout).
    A step whose loss or gradient norm is NaN / Inf changes nothing but the step counter:
    params, optimizer state and EMA keep their values (the loop reports it from `metrics`).
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        total, count, grads = accumulated_grads(graphdef, loss_fn, state.params, batch, key,
                                                grad_accum, data_shards)
        new, loss, grad_norm = apply_gradients(state, tx, ema_decay, total, count, grads)
        metrics = {"loss": loss, "grad_norm": grad_norm, "tokens": count}
        return new, metrics

    return train_step


def jit_train_step(step_fn, shardings: TrainState, mesh: Mesh):
    """jax.jit with explicit in/out shardings; the old state's buffers are donated.

    Traced under the mesh so the models' activation constraints (`sharding.constrain`) apply.
    """
    # One sharding for every leaf of the batch, whatever its rank (text: tokens, valid and,
    # for packed data, segment_ids [B, L]; images: tokens [B, N], label [B]): the leading
    # axis over the batch axes, the rest replicated.
    batch_sh = sharding.batch_sharding(mesh, 1)
    metric_sh = NamedSharding(mesh, P())
    return jax.jit(sharding.traced_under(mesh, step_fn), in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, metric_sh), donate_argnums=(0,))

