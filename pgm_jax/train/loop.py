"""The training loop: config -> data -> model -> jitted steps -> checkpoints / eval / samples."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx
from ml_collections import ConfigDict

from pgm_jax import checkpoint, sharding
from pgm_jax import config as config_lib
from pgm_jax.data import TextData, load_text_data
from pgm_jax.data.pipeline import eval_batches, num_eval_batches, train_iterator
from pgm_jax.metrics import MetricsWriter, Progress
from pgm_jax.models import ModelConfig, build_model
from pgm_jax.restore import CHECKPOINT_DIR
from pgm_jax.sampling import generate
from pgm_jax.train import optim
from pgm_jax.train.step import (
    LOSSES,
    TrainState,
    init_state,
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_train_step,
    state_shardings,
)

EVAL_SEED_OFFSET = 7919  # eval noise key: fixed per run so evaluations are comparable


@dataclasses.dataclass
class Run:
    """Everything built at start-up that the loop and the entry points share."""

    config: ConfigDict
    model_cfg: ModelConfig
    data: TextData
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    shardings: TrainState
    tx: object


def setup(config: ConfigDict, workdir: str) -> Run:
    """Validates, loads data and tokenizer, builds the mesh and the abstract model.

    Raises ConfigError / DataError / MeshError before anything is written but the tokenizer.
    """
    config_lib.validate(config)
    mesh = sharding.make_mesh(dict(config.mesh))
    dp = sharding.data_parallel_size(mesh)
    for key in ("batch_size", "eval_batch_size"):
        if config.train[key] % dp or config.train[key] % jax.process_count():
            raise config_lib.ConfigError(
                f"config.train.{key}={config.train[key]}: must be divisible by the "
                f"data-parallel size mesh.data x mesh.fsdp = {dp} and the process count"
            )
    os.makedirs(workdir, exist_ok=True)
    data = load_text_data(config.data, config.model.length, workdir)
    model_cfg = config_lib.model_config(
        config, vocab_size=data.tokenizer.vocab_size, mask_index=data.tokenizer.mask_id
    )
    for field, message in model_cfg.problems():
        raise config_lib.ConfigError(f"config.model.{field}: {message}")
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    abstract_model = nnx.eval_shape(lambda: build_model(model_cfg, config.seed))
    graphdef, _ = nnx.split(abstract_model)
    shardings = state_shardings(abstract_model, tx, mesh)
    return Run(config, model_cfg, data, mesh, graphdef, shardings, tx)


def initial_state(run: Run) -> TrainState:
    """Fresh parameters, created directly on their shards."""
    cfg, seed, tx = run.model_cfg, run.config.seed, run.tx
    return jax.jit(lambda: init_state(build_model(cfg, seed), tx, seed),
                   out_shardings=run.shardings)()


def restore_state(run: Run, ckpt: checkpoint.Checkpointer, step: int
                  ) -> tuple[TrainState, dict | None]:
    """The TrainState and data-iterator state saved at `step`, on the current mesh."""
    abstract = jax.eval_shape(lambda: initial_state(run))
    sh = run.shardings
    opt_target = {"step": abstract.step, "opt_state": abstract.opt_state, "key": abstract.key}
    opt_sh = {"step": sh.step, "opt_state": sh.opt_state, "key": sh.key}
    targets = {
        "params": checkpoint.abstract(abstract.params, sh.params),
        "ema": checkpoint.abstract(abstract.ema, sh.ema),
        "opt": checkpoint.abstract(opt_target, opt_sh),
    }
    if "data" in ckpt.item_names(step):
        targets["data"] = None
    r = ckpt.restore(step, targets)
    opt = r["opt"]
    state = TrainState(step=opt["step"], params=r["params"], opt_state=opt["opt_state"],
                       ema=r["ema"], key=opt["key"])
    return state, r.get("data")


def evaluate(run: Run, eval_fn, params: dict, max_batches: int = 0) -> dict[str, float]:
    """Validation NELBO per token and perplexity over the validation split (EMA params)."""
    bs = run.config.train.eval_batch_size
    base = jax.random.key(run.config.seed + EVAL_SEED_OFFSET)
    total, count = 0.0, 0.0
    n = num_eval_batches(len(run.data.val_blocks), bs)
    batches = eval_batches(run.data.val_blocks, bs, jax.process_index(), jax.process_count())
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        gb = sharding.global_batch(run.mesh, {k: batch[k] for k in ("tokens", "valid")})
        t, c = eval_fn(params, gb, jax.random.fold_in(base, i))
        total, count = total + float(t), count + float(c)
    nll = total / max(count, 1.0)
    return {"nll": nll, "ppl": math.exp(min(nll, 50.0)), "bpd": nll / math.log(2),
            "tokens": count, "batches": min(n, max_batches or n)}


def write_samples(run: Run, params: dict, workdir: str, step: int) -> list[str]:
    """Samples with the current EMA params; writes `samples/step_<N>.txt`, returns texts."""
    c = run.config.sample
    tokens = generate(run.graphdef, params, run.model_cfg, jax.random.key(run.config.seed + step),
                      num_samples=c.num_samples, steps=c.steps, bos_id=run.data.tokenizer.bos_id,
                      top_p=c.top_p, temperature=c.temperature, float64=c.float64)
    texts = [run.data.tokenizer.decode(row) for row in np.asarray(tokens).tolist()]
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        with open(os.path.join(workdir, "samples", f"step_{step}.txt"), "w") as f:
            f.write("\n\n".join(f"=== sample {i} ===\n{t}" for i, t in enumerate(texts)) + "\n")
    return texts


def train(config: ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) in `workdir`; returns the last train and eval metrics."""
    run = setup(config, workdir)
    tc = config.train
    is_main = jax.process_index() == 0
    if is_main:
        config_lib.save_config(_resolved(config, run.model_cfg), workdir)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                   keep=tc.keep_checkpoints)
    it = train_iterator(run.data.train_blocks, tc.batch_size, config.seed, jax.process_index(),
                        jax.process_count(), config.data.worker_count)
    latest = ckpt.latest_step()
    if latest is not None:
        state, data_state = restore_state(run, ckpt, latest)
        if data_state is not None:
            it.set_state(data_state)
        logging.info("resumed from %s at step %d", ckpt.directory, latest)
    else:
        state = initial_state(run)
    loss_fn = LOSSES[run.model_cfg.kind]
    train_step = jit_train_step(make_train_step(run.graphdef, loss_fn, run.tx,
                                                config.optim.ema_decay), run.shardings, run.mesh)
    eval_step = jit_eval_step(make_eval_step(run.graphdef, loss_fn), run.shardings.ema, run.mesh)
    writer = MetricsWriter(workdir, enabled=is_main)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("%s model: %.2fM parameters; mesh %s; global batch %d x %d tokens",
                 run.model_cfg.kind, n_params / 1e6, dict(run.mesh.shape), tc.batch_size,
                 run.model_cfg.length)

    step = int(state.step)
    result: dict = {"step": step}
    if step == 0:
        result["eval"] = _eval_and_log(run, eval_step, state, writer, 0)
    progress = Progress(tc.num_steps, tc.batch_size * run.model_cfg.length)
    pending = None  # (step, metrics) fetched one step late so the host never stalls the device
    progress.start(step)
    while step < tc.num_steps:
        t0 = time.perf_counter()
        batch = sharding.global_batch(run.mesh, next(it))
        progress.add("data", time.perf_counter() - t0)
        state, metrics = train_step(state, batch)
        step += 1
        if pending is not None:
            result["train"] = _log_train(progress, writer, *pending)
            pending = None
        if step % tc.log_every == 0 or step == tc.num_steps:
            pending = (step, metrics)
        if step % tc.eval_every == 0 or step == tc.num_steps:
            if pending is not None:
                result["train"] = _log_train(progress, writer, *pending)
                pending = None
            t0 = time.perf_counter()
            result["eval"] = _eval_and_log(run, eval_step, state, writer, step)
            progress.add("eval", time.perf_counter() - t0)
            progress.start(step)
        if tc.sample_every and (step % tc.sample_every == 0 or step == tc.num_steps):
            texts = write_samples(run, state.ema, workdir, step)
            logging.info("sample at step %d: %s", step, texts[0][:200].replace("\n", " "))
            progress.start(step)
        if step % tc.checkpoint_every == 0 or step == tc.num_steps:
            t0 = time.perf_counter()
            ckpt.save(step, params=state.params, ema=state.ema,
                      opt={"step": state.step, "opt_state": state.opt_state, "key": state.key},
                      data=it.get_state())
            progress.add("checkpoint", time.perf_counter() - t0)
    if pending is not None:
        result["train"] = _log_train(progress, writer, *pending)
    if "eval" not in result:  # resumed a finished run: report its quality anyway
        result["eval"] = _eval_and_log(run, eval_step, state, writer, step)
    ckpt.close()
    result["step"] = step
    result["phase_seconds"] = dict(progress.phase_seconds)
    return result


def _log_train(progress: Progress, writer: MetricsWriter, step: int, metrics: dict) -> dict:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    speed = progress.report(step, {"loss": values["loss"], "grad_norm": values["grad_norm"]})
    values.update(speed)
    writer.write(step, "train", values)
    return values


def _eval_and_log(run: Run, eval_step, state: TrainState, writer: MetricsWriter, step: int
                  ) -> dict:
    ev = evaluate(run, eval_step, state.ema, run.config.train.eval_batches)
    logging.info("eval step %d: val nll %.4f | ppl %.2f | %d tokens", step, ev["nll"], ev["ppl"],
                 ev["tokens"])
    writer.write(step, "eval", ev)
    return ev


def _resolved(config: ConfigDict, model_cfg: ModelConfig) -> ConfigDict:
    """The config with the tokenizer-derived vocabulary filled in."""
    c = ConfigDict(config.to_dict())
    c.model.vocab_size = model_cfg.vocab_size
    c.model.mask_index = model_cfg.mask_index
    return c

