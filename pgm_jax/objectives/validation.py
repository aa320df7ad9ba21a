"""Validation NELBO: the eval estimator of each loss, jitted, summed over the validation split.

Shared by the training loop (`pgm_jax.train`) and `pgm_jax.evaluate` (`pgm_jax.eval`), which
must not import each other. One routine, `evaluate`, serves text and images; per-batch sums
stay on the device and are fetched once per evaluation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from pgm_jax import sharding
from pgm_jax.models.registry import IMAGE_ALGOS
from pgm_jax.objectives.losses import LOSSES, LossFn

Array = jax.Array
Batch = dict[str, Array]
EvalStep = Callable[[dict, Batch, Array], tuple[Array, Array]]
EVAL_SEED_OFFSET = 7919  # eval noise key: fixed per run so evaluations are comparable


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn) -> EvalStep:
    """(params, batch, key) -> (sum of token NLLs, valid tokens) with the eval estimator."""

    def eval_step(params: dict, batch: Batch, key: Array) -> tuple[Array, Array]:
        return loss_fn(nnx.merge(graphdef, params), batch, key, False)

    return eval_step


def image_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn) -> EvalStep:
    """(params, batch, key) -> (sum of token NLLs, tokens) over the real rows of an image batch.

    batch: tokens int32 [B, N], label int32 [B], weight float32 [B] (0 on padding rows). The
    loss is evaluated image by image (`vmap` over rows, one key each) and weighted, so padding
    rows count for nothing whatever the loss does with a batch. The mapped axis is named as
    the mesh's batch axes (`spmd_axis_name`), so the models' activation constraints, which
    see one-image batches, keep the rows split over the data-parallel devices.
    """

    def eval_step(params: dict, batch: Batch, key: Array) -> tuple[Array, Array]:
        model = nnx.merge(graphdef, params)

        def one(tokens, label, k):
            return loss_fn(model, {"tokens": tokens[None], "label": label[None]}, k, False)

        keys = jax.random.split(key, batch["tokens"].shape[0])
        totals, counts = jax.vmap(one, spmd_axis_name=sharding.BATCH_AXES)(
            batch["tokens"], batch["label"], keys)
        w = batch["weight"]
        return jnp.sum(totals * w), jnp.sum(counts * w)

    return eval_step


def eval_step_for(algo: str, graphdef: nnx.GraphDef) -> EvalStep:
    """The (unjitted) eval step of `config.algo`: `image_eval_step` for images."""
    return (image_eval_step if algo in IMAGE_ALGOS else make_eval_step)(graphdef, LOSSES[algo])


def jit_eval_step(eval_fn: EvalStep, param_shardings, mesh: Mesh):
    """eval_fn(params, batch, key) jitted with the batch's leading axis over the batch axes."""
    rep = sharding.replicated(mesh)
    return jax.jit(sharding.traced_under(mesh, eval_fn),
                   in_shardings=(param_shardings, sharding.batch_sharding(mesh, 1), rep),
                   out_shardings=(rep, rep))


@functools.partial(jax.jit, donate_argnums=(0,))
def _accumulate(acc: tuple[Array, Array, Array], total: Array, count: Array
                ) -> tuple[Array, Array, Array]:
    """(sum, compensation, count) + one batch, on the device. Kahan-compensated float32 sum
    (the old host float64 sum to float32 precision whatever the number of batches); counts
    are whole tokens (weights are 0 / 1), kept exact in int32."""
    s, comp, n = acc
    y = total - comp
    t = s + y
    return t, (t - s) - y, n + jnp.round(count).astype(jnp.int32)


def evaluate(eval_step: EvalStep, params: dict, data, mesh: Mesh, config: ConfigDict,
             max_batches: int = 0) -> dict[str, float]:
    """Validation NELBO per token over `data`'s validation split (all of it by default).

    eval_step: jitted (params, batch, key) -> (sum of NLLs, tokens) (`jit_eval_step`); data:
    a TextData / ImageData (`eval_batches`, `num_eval_batches`); batch i's key is
    fold_in(key(seed + EVAL_SEED_OFFSET), i). Text: {"nll", "ppl", "bpd", "tokens",
    "batches"}. Images: {"nll" (nats per image token), "bits_per_token", "tokens", "images",
    "batches"}; a perplexity over pixel levels or VQ codes means nothing, so there is none.
    """
    bs = config.train.eval_batch_size
    base = jax.random.key(config.seed + EVAL_SEED_OFFSET)
    image = config.algo in IMAGE_ALGOS
    keys = ("tokens", "label", "weight") if image else ("tokens", "valid")
    n = data.num_eval_batches(bs)
    acc = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    for i, batch in enumerate(data.eval_batches(bs, jax.process_index(), jax.process_count())):
        if max_batches and i >= max_batches:
            break
        gb = sharding.global_batch(mesh, {k: batch[k] for k in keys})
        acc = _accumulate(acc, *eval_step(params, gb, jax.random.fold_in(base, i)))
    total, _, count = jax.device_get(acc)  # the one host transfer of the evaluation
    total, count = float(total), float(count)
    nll = total / max(count, 1.0)
    batches_seen = min(n, max_batches or n)
    if image:
        return {"nll": nll, "bits_per_token": nll / math.log(2), "tokens": count,
                "images": count / config.model.length, "batches": batches_seen}
    return {"nll": nll, "ppl": math.exp(min(nll, 50.0)), "bpd": nll / math.log(2),
            "tokens": count, "batches": batches_seen}
