"""Train state, losses and the pure train / eval steps (jitted with explicit shardings).

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

from pgm_jax import objectives, sharding
from pgm_jax.models import PGM, DiT

Array = jax.Array
Batch = dict[str, Array]
LossFn = Callable[[nnx.Module, Batch, Array, bool], tuple[Array, Array]]


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


def pgm_loss(model: PGM, batch: Batch, key: Array, train: bool) -> tuple[Array, Array]:
    """PGM objective: (sum of weighted token NLLs, number of valid tokens).

    batch: tokens int32 [B, L], valid int32 [B, L] (optional segment_ids [B, L]). The times are
    stratified over the whole (global) batch; the partition is g ~ Bernoulli(1 - alpha_t).
    """
    tokens, valid = batch["tokens"], batch["valid"]
    k_t, k_g, k_drop = jax.random.split(key, 3)
    t = objectives.antithetic_t(k_t, tokens.shape[0])
    groups = objectives.sample_partition(k_g, t, tokens.shape)
    logits = model(tokens, groups, key=k_drop if train else None,
                   segment_ids=batch.get("segment_ids"))
    logp = objectives.target_logprob(logits, tokens, model.cfg.mask_index)
    nll = objectives.pgm_token_nll(logp, groups, t, train=train)
    return objectives.masked_mean(nll, valid)


def mdlm_loss(model: DiT, batch: Batch, key: Array, train: bool) -> tuple[Array, Array]:
    """MDLM objective (same estimator for train and eval): masked tokens weighted by 1/t."""
    tokens, valid = batch["tokens"], batch["valid"]
    k_t, k_m, k_drop = jax.random.split(key, 3)
    t = objectives.antithetic_t(k_t, tokens.shape[0])
    xt = objectives.mask_tokens(k_m, tokens, t, model.cfg.mask_index)
    logits = model(xt, key=k_drop if train else None)
    # SUBS adds -1e6 to the MASK logit; -inf gives the same log-probs to float32 precision.
    logp = objectives.target_logprob(logits, tokens, model.cfg.mask_index)
    nll = objectives.mdlm_token_nll(logp, xt, t, model.cfg.mask_index)
    return objectives.masked_mean(nll, valid)


LOSSES: dict[str, LossFn] = {"pgm": pgm_loss, "mdlm_dit": mdlm_loss}


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


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    ema_decay: float) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """(state, batch) -> (state, metrics); pure, to be jitted with donation of the state."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)

        def objective(params):
            total, count = loss_fn(nnx.merge(graphdef, params), batch, key, True)
            return total / jnp.maximum(count, 1.0), count

        (loss, count), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, ema_decay)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "tokens": count}
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
        return new, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn
                   ) -> Callable[[dict, Batch, Array], tuple[Array, Array]]:
    """(params, batch, key) -> (sum of token NLLs, valid tokens) with the eval estimator."""

    def eval_step(params: dict, batch: Batch, key: Array) -> tuple[Array, Array]:
        return loss_fn(nnx.merge(graphdef, params), batch, key, False)

    return eval_step


def jit_train_step(step_fn, shardings: TrainState, mesh: Mesh):
    """jax.jit with explicit in/out shardings; the old state's buffers are donated."""
    batch_sh = {"tokens": sharding.batch_sharding(mesh), "valid": sharding.batch_sharding(mesh)}
    metric_sh = NamedSharding(mesh, P())
    return jax.jit(step_fn, in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, metric_sh), donate_argnums=(0,))


def jit_eval_step(eval_fn, param_shardings, mesh: Mesh):
    batch_sh = {k: sharding.batch_sharding(mesh) for k in ("tokens", "valid")}
    rep = sharding.replicated(mesh)
    return jax.jit(eval_fn, in_shardings=(param_shardings, batch_sh, rep),
                   out_shardings=(rep, rep))
