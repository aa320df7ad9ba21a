"""The training loop: jitted steps -> metrics, evaluations, samples and checkpoints.

Set-up and restore live in `train.setup`, the validation routine (text and images) in
`objectives.validation`. Text algorithms (pgm, mdlm, complement_mdlm, ar) train on token
sequences; the image algorithms (image_pgm, maskgit) on class-labelled image token grids
({"tokens": [B, N], "label": [B]}), with image samples written as PNG grids (one row per class)
when the tokens are pixels.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from pgm_jax import checkpoint, distributed, sharding
from pgm_jax import config as config_lib
from pgm_jax.metrics import TB_DIR, MetricsWriter, NonFiniteError, Progress, nonfinite
from pgm_jax.objectives.validation import evaluate
from pgm_jax.restore import CHECKPOINT_DIR
from pgm_jax.sampling import generate, grid
from pgm_jax.sampling import image as image_sampling
from pgm_jax.sampling.settings import SamplerSettings
from pgm_jax.tensorboard import ProfileWindow
from pgm_jax.train.preemption import PreemptionWatch
from pgm_jax.train.setup import (
    Run,
    initial_state,
    jit_steps,
    resolved,
    restore_newest,
    setup,
    undo_on_failure,
)
from pgm_jax.train.step import TrainState


def write_samples(run: Run, params: dict, workdir: str, step: int) -> list[str]:
    """Samples with the current EMA params; writes `samples/step_<N>.txt`
    (N zero-padded to 6 digits, as the image samples) and returns the
    texts (images: `write_image_samples`, returns the paths written)."""
    if config_lib.is_image(run.config):
        return write_image_samples(run, params, workdir, step)
    c = run.config.sample
    tokens = generate(run.graphdef, params, run.model_cfg, jax.random.key(run.config.seed + step),
                      num_samples=c.num_samples, steps=c.steps, bos_id=run.data.tokenizer.bos_id,
                      top_p=c.top_p, temperature=c.temperature, float64=c.float64)
    texts = [run.data.tokenizer.decode(row) for row in np.asarray(tokens).tolist()]
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        with open(os.path.join(workdir, "samples", f"step_{step:06d}.txt"), "w") as f:
            f.write("\n\n".join(f"=== sample {i} ===\n{t}" for i, t in enumerate(texts)) + "\n")
    return texts


def write_image_samples(run: Run, params: dict, workdir: str, step: int) -> list[str]:
    """`sample.num_samples` images of each class (one grid row per class) with `params`:
    `samples/step_<N>.npz` and, for pixel tokens (digits), `samples/step_<N>.png`."""
    c, m = run.config.sample, run.model_cfg
    labels = image_sampling.grid_labels(m.num_classes, c.num_samples)
    codes = image_sampling.image_samples(run.graphdef, params, m,
                                         jax.random.key(run.config.seed + step), labels,
                                         c.batch_size, mesh=run.mesh,
                                         **SamplerSettings.build(run.config, m).image_kwargs())
    if jax.process_index() != 0:
        return []
    prefix = os.path.join(workdir, "samples", f"step_{step:06d}")
    return grid.save_image_samples(prefix, codes, labels, run.data.pixels(codes), c.num_samples,
                                   step=np.int64(step))


def train(config: ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) in `workdir`; returns the last train and eval metrics.

    A start that fails (config, data, checkpoint) leaves `workdir` as it was. A SIGTERM (or
    the multi-host preemption sync point) saves a checkpoint of the current step and returns
    early with result["preempted"] = True.
    """
    tc = config.train
    with undo_on_failure(workdir):
        run = setup(config, workdir)
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                       keep=tc.keep_checkpoints)
        try:
            it = run.data.train_iterator(tc.batch_size, config.seed, jax.process_index(),
                                         jax.process_count(), config.data.worker_count)
            restored = restore_newest(run, ckpt)
        except BaseException:
            ckpt.close()
            raise
    distributed.log_to_file(workdir)  # the start succeeded: from here the workdir is the run's
    if restored is not None:
        state, data_state = restored
        if data_state is not None:
            it.set_state(data_state)
        logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    else:
        state = initial_state(run)
    is_main = jax.process_index() == 0
    if is_main:
        config_lib.save_config(resolved(config, run.model_cfg), workdir)
    writer = MetricsWriter(workdir, enabled=is_main)
    profile = ProfileWindow(os.path.join(workdir, TB_DIR), tc.profile_start, tc.profile_steps)
    try:
        with PreemptionWatch(ckpt) as preemption:
            return _loop(run, workdir, state, it, ckpt, writer, profile, preemption)
    finally:
        profile.close()
        writer.close()
        ckpt.close()


def _loop(run: Run, workdir: str, state: TrainState, it, ckpt: checkpoint.Checkpointer,
          writer: MetricsWriter, profile: ProfileWindow, preemption: PreemptionWatch) -> dict:
    tc = run.config.train
    train_step, eval_step = jit_steps(run)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("%s model: %.2fM parameters; mesh %s; global batch %d x %d tokens",
                 run.model_cfg.kind, n_params / 1e6, dict(run.mesh.shape), tc.batch_size,
                 run.model_cfg.length)

    step = int(state.step)
    result: dict = {"step": step}
    progress = Progress(tc.num_steps, tc.batch_size * run.model_cfg.length, step)
    if step == 0:
        with progress.phase("eval"):
            result["eval"] = _eval_and_log(run, eval_step, state, writer, 0)
    window: list = []  # (step, metrics on device) since the last log line
    pending = None  # the last window, fetched one step late so the host never stalls the device
    first = step
    while step < tc.num_steps:
        profile.before_step(step + 1)
        with progress.phase("data"):
            batch = sharding.global_batch(run.mesh, next(it))
        with progress.phase("compile") if step == first else contextlib.nullcontext():
            state, metrics = train_step(state, batch)
        step += 1
        window.append((step, metrics))
        profile.after_step(step, state)
        if pending is not None:
            result["train"] = _log_train(progress, writer, pending, tc.nonfinite)
            pending = None
        if step % tc.log_every == 0 or step == tc.num_steps:
            pending, window = window, []
        preempted = preemption.reached(step)
        if (step % tc.eval_every == 0 or step == tc.num_steps) and not preempted:
            if pending is not None:
                result["train"] = _log_train(progress, writer, pending, tc.nonfinite)
                pending = None
            jax.block_until_ready(state)  # the steps' own time stays in "step"
            with progress.phase("eval"):
                result["eval"] = _eval_and_log(run, eval_step, state, writer, step)
        if (tc.sample_every and (step % tc.sample_every == 0 or step == tc.num_steps)
                and not preempted):
            jax.block_until_ready(state)
            with progress.phase("sample"):
                texts = write_samples(run, state.ema, workdir, step)
            if texts:
                logging.info("sample at step %d: %s", step, texts[0][:200].replace("\n", " "))
        if step % tc.checkpoint_every == 0 or step == tc.num_steps or preempted:
            jax.block_until_ready(state)
            with progress.phase("checkpoint"):
                ckpt.save(step, params=state.params, ema=state.ema,
                          opt={"step": state.step, "opt_state": state.opt_state,
                               "key": state.key},
                          data=it.get_state())
                if preempted:
                    ckpt.wait()  # the process is about to exit: commit it now
        if preempted:
            logging.warning("preempted at step %d: checkpoint saved in %s, stopping", step,
                            ckpt.directory)
            result["preempted"] = True
            break
    for chunk in (pending, window):
        if chunk:
            result["train"] = _log_train(progress, writer, chunk, tc.nonfinite)
    if "eval" not in result and not result.get("preempted"):
        # resumed a finished run: report its quality anyway
        result["eval"] = _eval_and_log(run, eval_step, state, writer, step)
    result["step"] = step
    result["phase_seconds"] = dict(progress.phase_seconds)
    return result


def _log_train(progress: Progress, writer: MetricsWriter, window: list, mode: str) -> dict:
    """Reports the non-finite steps of `window` (stops the run for mode 'stop') and writes
    the metrics of its last step with throughput, ETA and time shares."""
    fetched = jax.device_get([m for _, m in window])
    bad = []
    for (step, _), m in zip(window, fetched, strict=True):
        what = nonfinite({k: float(v) for k, v in m.items()})
        if what:
            logging.warning("step %d: non-finite %s: update skipped", step, what)
            bad.append((step, what))
    if bad and mode == "stop":
        raise NonFiniteError(
            f"step {bad[0][0]}: non-finite {bad[0][1]}; the run stops "
            "(config.train.nonfinite='stop'; 'skip' would carry on without those updates)"
        )
    step = window[-1][0]
    values = {k: float(v) for k, v in fetched[-1].items()}
    speed = progress.report(step, {"loss": values["loss"], "grad_norm": values["grad_norm"]})
    values.update(speed)
    values["nonfinite_steps"] = float(len(bad))
    writer.write(step, "train", values)
    return values


def _eval_and_log(run: Run, eval_step, state: TrainState, writer: MetricsWriter, step: int
                  ) -> dict:
    ev = evaluate(eval_step, state.ema, run.data, run.mesh, run.config,
                  run.config.train.eval_batches)
    if "ppl" in ev:
        logging.info("eval step %d: val nll %.4f | ppl %.2f | %d tokens", step, ev["nll"],
                     ev["ppl"], ev["tokens"])
    else:
        logging.info("eval step %d: val nll %.4f nats/token (%.4f bits) | %d images", step,
                     ev["nll"], ev["bits_per_token"], ev["images"])
    writer.write(step, "eval", ev)
    return ev
