"""SDTT distillation as a training mode (`config.distill.teacher` set; spec §8).

The run starts from the teacher run's raw (non-EMA) weights: student params = teacher = those
weights, EMA re-initialised from them, a fresh optimizer and step 0. Each step distils the
teacher into the student (`pgm_jax.objectives.sdtt`); at every round boundary the student is
copied into the teacher and a checkpoint is saved. Checkpoints hold the teacher as an extra
item, so a resumed or preempted run continues with the exact round and teacher. Evaluation, samples,
metrics and preemption work as in `pgm_jax.train.loop`, whose set-up and helpers this reuses.
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from ml_collections import ConfigDict

from pgm_jax import checkpoint, distributed, sharding
from pgm_jax import config as config_lib
from pgm_jax.metrics import TB_DIR, MetricsWriter, Progress
from pgm_jax.objectives import sdtt
from pgm_jax.restore import CHECKPOINT_DIR, restore_params
from pgm_jax.tensorboard import ProfileWindow
from pgm_jax.train import loop, setup
from pgm_jax.train.preemption import PreemptionWatch
from pgm_jax.train.step import TrainState, apply_gradients, init_state

ALGOS = ("pgm", "mdlm")


def schedule(config: ConfigDict) -> sdtt.Schedule:
    d = config.distill
    return sdtt.Schedule(d.grow_dt_every, d.orig_num_sampling_steps, d.min_num_sampling_steps,
                         d.num_distill_steps)


def check_config(config: ConfigDict) -> ConfigDict:
    """Raises ConfigError for a distillation setting that cannot work; returns the teacher
    run's stored config (on today's schema)."""
    d, err = config.distill, config_lib.ConfigError
    if config.algo not in ALGOS:
        raise err(f"config.algo={config.algo!r}: SDTT distils {' or '.join(ALGOS)} models")
    for key in ("num_distill_steps", "orig_num_sampling_steps", "grow_dt_every",
                "min_num_sampling_steps"):
        if d[key] <= 0:
            raise err(f"config.distill.{key}={d[key]!r}: must be a positive integer")
    if config.train.grad_accum != 1:
        raise err(f"config.train.grad_accum={config.train.grad_accum}: distillation runs "
                  "without gradient accumulation (as the reference)")
    if not os.path.isdir(os.path.join(d.teacher, CHECKPOINT_DIR)):
        raise err(f"config.distill.teacher={d.teacher!r}: not a run directory with checkpoints "
                  "(train one with pgm_jax.main or convert a reference .ckpt with "
                  "pgm_jax.convert)")
    stored = config_lib.on_current_schema(config_lib.load_run_config(d.teacher))
    config_lib.check_resume(config, stored, d.teacher)  # same algo, model and vocabulary
    return stored


def make_distill_step(graphdef: nnx.GraphDef, config: ConfigDict, tx, ema_decay: float):
    """(state, teacher params, batch) -> (state, metrics); pure, jitted by `jit_distill_step`.

    The round's dt comes from `state.step`, so a resumed run continues the same schedule.
    batch: tokens, valid int32 [B, L]. The update, EMA and non-finite guard are those of
    `pgm_jax.train.step.make_train_step`.
    """
    sched, d = schedule(config), config.distill
    algo, reference_grid = config.algo, d.reference_time_grid

    def step_fn(state: TrainState, teacher: dict, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        k_loss, k_drop = jax.random.split(key)
        dt = sched.dt(sched.round_of(state.step))
        teacher_fwd = sdtt.forward_fn(nnx.merge(graphdef, teacher), algo)

        def loss_fn(params):
            student = nnx.merge(graphdef, params)
            key = k_drop if student.cfg.dropout > 0 else None
            return sdtt.distill_loss(sdtt.forward_fn(student, algo, key), teacher_fwd,
                                     batch["tokens"], batch["valid"], k_loss, dt,
                                     student.cfg.mask_index, d.num_distill_steps,
                                     reference_grid)

        (total, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new, loss, grad_norm = apply_gradients(state, tx, ema_decay, total, count, grads)
        return new, {"loss": loss, "grad_norm": grad_norm, "tokens": count, "dt": dt}

    return step_fn


def jit_distill_step(step_fn, shardings: TrainState, mesh: jax.sharding.Mesh):
    """jax.jit with explicit shardings (teacher laid out like the params); state donated."""
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(sharding.traced_under(mesh, step_fn),
                   in_shardings=(shardings, shardings.params, sharding.batch_sharding(mesh, 1)),
                   out_shardings=(shardings, rep), donate_argnums=(0,))


def _restore_targets(run: setup.Run, ckpt: checkpoint.Checkpointer, step: int) -> dict:
    targets = setup._restore_targets(run, ckpt, step)
    targets["teacher"] = targets["params"]
    return targets


def _start(run: setup.Run, teacher_dir: str) -> tuple[TrainState, dict]:
    """(student state, teacher params) from the teacher run's newest raw weights."""
    _, raw, step = restore_params(teacher_dir, run.model_cfg, run.mesh, item="params")
    logging.info("distilling %s (raw weights of step %d)", teacher_dir, step)
    tx, seed = run.tx, run.config.seed

    def fresh(params):
        state = init_state(nnx.merge(run.graphdef, params), tx, seed)
        return state, jax.tree.map(jnp.copy, params)

    return jax.jit(fresh, in_shardings=(run.shardings.params,),
                   out_shardings=(run.shardings, run.shardings.params))(raw)


def train(config: ConfigDict, workdir: str) -> dict:
    """Distils `config.distill.teacher` in `workdir` (or resumes); returns the last metrics
    like `pgm_jax.train.loop.train`, with the final "round" and teacher "dt"."""
    tc, sched = config.train, schedule(config)
    check_config(config)
    with setup.undo_on_failure(workdir):
        if config.data.source in ("pydoc", "files"):  # the teacher's own tokenizer
            tok = os.path.join(config.distill.teacher, "tokenizer.model")
            if os.path.isfile(tok) and not os.path.exists(os.path.join(workdir, "tokenizer.model")):
                os.makedirs(workdir, exist_ok=True)
                shutil.copy(tok, workdir)
        run = setup.setup(config, workdir)
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                       keep=tc.keep_checkpoints)
        try:
            it = run.data.train_iterator(tc.batch_size, config.seed, jax.process_index(),
                                         jax.process_count(), config.data.worker_count)
            restored = ckpt.restore_newest(lambda s: _restore_targets(run, ckpt, s))
            if restored is None:
                state, teacher = _start(run, config.distill.teacher)
        except BaseException:
            ckpt.close()
            raise
    distributed.log_to_file(workdir)
    if restored is not None:
        r = restored[1]
        state, data_state = setup._train_state(r)
        teacher = r["teacher"]
        if data_state is not None:
            it.set_state(data_state)
        logging.info("resumed distillation at step %d (round %d)", int(state.step),
                     sched.round_of(int(state.step)))
    if jax.process_index() == 0:
        config_lib.save_config(setup.resolved(config, run.model_cfg), workdir)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    profile = ProfileWindow(os.path.join(workdir, TB_DIR), tc.profile_start, tc.profile_steps)
    try:
        with PreemptionWatch(ckpt) as preemption:
            return _loop(run, workdir, state, teacher, it, ckpt, writer, preemption, sched)
    finally:
        profile.close()
        writer.close()
        ckpt.close()


def _loop(run: setup.Run, workdir: str, state: TrainState, teacher: dict, it,
          ckpt: checkpoint.Checkpointer, writer: MetricsWriter, preemption: PreemptionWatch,
          sched: sdtt.Schedule) -> dict:
    tc = run.config.train
    step_fn = jit_distill_step(make_distill_step(run.graphdef, run.config, run.tx,
                                                 run.config.optim.ema_decay),
                               run.shardings, run.mesh)
    _, eval_step = setup.jit_steps(run)
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=run.shardings.params)
    end = sched.last_step(tc.num_steps)
    for first, r, dt in sched.rounds(tc.num_steps):
        logging.info("round %d from step %d: teacher dt %.6g (%d steps), student %d steps", r,
                     first, dt, sched.effective_steps(r),
                     round(1.0 / (dt * sched.num_distill_steps)))
    step = int(state.step)
    result: dict = {"step": step}
    progress = Progress(tc.num_steps, tc.batch_size * run.model_cfg.length, step)
    if step == 0:
        result["eval"] = loop._eval_and_log(run, eval_step, state, writer, 0)
    window: list = []
    while step < end:
        batch = sharding.global_batch(run.mesh, next(it))
        state, metrics = step_fn(state, teacher, batch)
        step += 1
        window.append((step, metrics))
        if step % tc.log_every == 0 or step == end:
            result["train"] = loop._log_train(progress, writer, window, tc.nonfinite)
            window = []
        preempted = preemption.reached(step)
        boundary = step % sched.grow_dt_every == 0 and step < end
        if boundary:  # the next round's teacher is the current student (not its EMA)
            teacher = copy(state.params)
            r = sched.round_of(step)
            logging.info("step %d: round %d, student -> teacher, teacher dt %.6g (%d steps)",
                         step, r, sched.dt(r), sched.effective_steps(r))
        if (step % tc.eval_every == 0 or step == end) and not preempted:
            result["eval"] = loop._eval_and_log(run, eval_step, state, writer, step)
        if tc.sample_every and (step % tc.sample_every == 0 or step == end) and not preempted:
            loop.write_samples(run, state.ema, workdir, step)
        if step % tc.checkpoint_every == 0 or step == end or preempted or boundary:
            jax.block_until_ready(state)
            ckpt.save(step, params=state.params, ema=state.ema,
                      opt={"step": state.step, "opt_state": state.opt_state, "key": state.key},
                      data=it.get_state(), teacher=teacher)
            if preempted:
                ckpt.wait()
        if preempted:
            logging.warning("preempted at step %d: checkpoint saved in %s", step, ckpt.directory)
            result["preempted"] = True
            break
    if window:
        result["train"] = loop._log_train(progress, writer, window, tc.nonfinite)
    if end < tc.num_steps and step == end:
        logging.info("step %d: the next round would sample in fewer than %d steps: stopping",
                     end, sched.min_num_sampling_steps)
    if "eval" not in result and not result.get("preempted"):
        result["eval"] = loop._eval_and_log(run, eval_step, state, writer, step)
    r = sched.round_of(max(step - 1, 0))
    result.update(step=step, round=r, dt=sched.dt(r))
    return result
