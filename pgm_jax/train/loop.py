"""The training loop: config -> data -> model -> jitted steps -> checkpoints / eval / samples.

Text algorithms (pgm, mdlm, complement_mdlm, ar) train on token sequences; the image algorithms
(image_pgm, maskgit) on class-labelled image token grids ({"tokens": [B, N], "label": [B]}),
with image samples written as PNG grids (one row per class) when the tokens are pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from ml_collections import ConfigDict

from pgm_jax import checkpoint, distributed, sharding
from pgm_jax import config as config_lib
from pgm_jax.data import TextData, load_text_data
from pgm_jax.data.images import ImageData, load_image_data
from pgm_jax.eval import grid
from pgm_jax.metrics import TB_DIR, MetricsWriter, NonFiniteError, Progress, nonfinite
from pgm_jax.models import ModelConfig, attention, build_model
from pgm_jax.restore import CHECKPOINT_DIR
from pgm_jax.sampling import generate
from pgm_jax.sampling import image as image_sampling
from pgm_jax.tensorboard import ProfileWindow
from pgm_jax.train import optim
from pgm_jax.train.preemption import PreemptionWatch
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
    data: TextData | ImageData
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    shardings: TrainState
    tx: object


def setup(config: ConfigDict, workdir: str) -> Run:
    """Validates, loads data and tokenizer, builds the mesh and the abstract model.

    Raises ConfigError / DataError / MeshError; every config check runs before anything is
    written, and only data loading writes (the tokenizer; see `train` for the clean-up).
    """
    config_lib.validate(config)
    _check_resume(config, workdir)
    mesh = build_mesh(config)
    os.makedirs(workdir, exist_ok=True)
    if config_lib.is_image(config):
        m = config.model
        data = load_image_data(config.data, m.length, m.codebook_size, m.num_classes)
        model_cfg = config_lib.model_config(config)  # vocabulary from model.codebook_size
    else:
        data = load_text_data(config.data, config.model.length, workdir)
        model_cfg = config_lib.model_config(
            config, vocab_size=data.tokenizer.vocab_size, mask_index=data.tokenizer.mask_id
        )
    model_cfg = attention.on_mesh(model_cfg, mesh)
    graphdef, shardings, tx = abstract_training(config, model_cfg, mesh)
    return Run(config, model_cfg, data, mesh, graphdef, shardings, tx)


def build_mesh(config: ConfigDict, devices: list | None = None) -> jax.sharding.Mesh:
    """The mesh of `config.mesh` over `devices` (default all); refuses batch sizes that do not
    split over its data shards (training: into `train.grad_accum` micro-batches each) or over
    the processes."""
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    dp = sharding.data_parallel_size(mesh)
    accum = config.train.grad_accum
    for key, parts in (("batch_size", dp * accum), ("eval_batch_size", dp)):
        if config.train[key] % parts or config.train[key] % jax.process_count():
            raise config_lib.ConfigError(
                f"config.train.{key}={config.train[key]}: must be divisible by the data-parallel "
                f"size (mesh.data x mesh.fsdp, with mesh.dcn_*) = {dp}"
                + (f" times train.grad_accum={accum}" if key == "batch_size" else "")
                + f" and the process count {jax.process_count()}"
            )
    return mesh


def abstract_training(config: ConfigDict, model_cfg: ModelConfig, mesh: jax.sharding.Mesh
                      ) -> tuple[nnx.GraphDef, TrainState, object]:
    """(graphdef, TrainState shardings, optimizer) without allocating any parameter.

    Logs the parameter sharding table (process 0) and refuses a layout that leaves more than
    `mesh.max_replicated_fraction` of the parameters replicated.
    """
    for field, message in model_cfg.problems():
        raise config_lib.ConfigError(f"config.model.{field}: {message}")
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    abstract_model = nnx.eval_shape(lambda: build_model(model_cfg, config.seed))
    layouts = sharding.param_layouts(abstract_model, mesh)
    if jax.process_index() == 0:
        logging.info("parameter sharding:\n%s", sharding.sharding_table(layouts, mesh))
    sharding.check_replicated(layouts, mesh, config.mesh.max_replicated_fraction)
    graphdef, _ = nnx.split(abstract_model)
    return graphdef, state_shardings(abstract_model, tx, mesh), tx


def initial_state(run: Run) -> TrainState:
    """Fresh parameters, created directly on their shards."""
    cfg, seed, tx = run.model_cfg, run.config.seed, run.tx
    return jax.jit(lambda: init_state(build_model(cfg, seed), tx, seed),
                   out_shardings=run.shardings)()


def _check_resume(config: ConfigDict, workdir: str) -> None:
    """A workdir with checkpoints resumes only with the model and vocabulary they hold."""
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    if (os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)
            and os.path.exists(os.path.join(workdir, "config.json"))):
        config_lib.check_resume(config, config_lib.load_run_config(workdir), workdir)


def _restore_targets(run: Run, ckpt: checkpoint.Checkpointer, step: int) -> dict:
    """Abstract restore targets of a TrainState on the run's (current) mesh shardings."""
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
    return targets


def _train_state(r: dict) -> tuple[TrainState, dict | None]:
    opt = r["opt"]
    state = TrainState(step=opt["step"], params=r["params"], opt_state=opt["opt_state"],
                       ema=r["ema"], key=opt["key"])
    return state, r.get("data")


def restore_state(run: Run, ckpt: checkpoint.Checkpointer, step: int
                  ) -> tuple[TrainState, dict | None]:
    """The TrainState and data-iterator state saved at `step`, on the current mesh."""
    return _train_state(ckpt.restore(step, _restore_targets(run, ckpt, step)))


def restore_newest(run: Run, ckpt: checkpoint.Checkpointer
                   ) -> tuple[TrainState, dict | None] | None:
    """Like `restore_state` for the newest checkpoint that restores (damaged ones are skipped
    with a warning); None when the directory holds no checkpoint."""
    restored = ckpt.restore_newest(lambda step: _restore_targets(run, ckpt, step))
    return None if restored is None else _train_state(restored[1])


def jit_steps(run: Run) -> tuple:
    """(train_step, eval_step) of `run`'s algorithm, jitted on its mesh and shardings.

    train_step(state, batch) -> (state, metrics); eval_step(params, batch, key) -> (sum of
    token NLLs, tokens). Text batches are {"tokens", "valid"} [B, L]; image batches
    {"tokens" [B, N], "label" [B]} (+ "weight" [B] for evaluation).
    """
    config, tc = run.config, run.config.train
    loss_fn = LOSSES[config.algo]
    train_fn = make_train_step(run.graphdef, loss_fn, run.tx, config.optim.ema_decay,
                               tc.grad_accum, sharding.data_parallel_size(run.mesh))
    eval_fn = (image_eval_step if config_lib.is_image(config) else make_eval_step)(
        run.graphdef, loss_fn)
    return (jit_train_step(train_fn, run.shardings, run.mesh),
            jit_eval_step(eval_fn, run.shardings.ema, run.mesh))


def image_eval_step(graphdef: nnx.GraphDef, loss_fn):
    """(params, batch, key) -> (sum of token NLLs, tokens) over the real rows of an image batch.

    batch: tokens int32 [B, N], label int32 [B], weight float32 [B] (0 on padding rows). The
    loss is evaluated image by image (`vmap` over rows, one key each) and weighted, so padding
    rows count for nothing whatever the loss does with a batch. The mapped axis is named as
    the mesh's batch axes (`spmd_axis_name`), so the models' activation constraints, which
    see one-image batches, keep the rows split over the data-parallel devices.
    """

    def eval_step(params: dict, batch: dict, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        model = nnx.merge(graphdef, params)

        def one(tokens, label, k):
            return loss_fn(model, {"tokens": tokens[None], "label": label[None]}, k, False)

        keys = jax.random.split(key, batch["tokens"].shape[0])
        totals, counts = jax.vmap(one, spmd_axis_name=sharding.BATCH_AXES)(
            batch["tokens"], batch["label"], keys)
        w = batch["weight"]
        return jnp.sum(totals * w), jnp.sum(counts * w)

    return eval_step


def evaluate(run: Run, eval_fn, params: dict, max_batches: int = 0) -> dict[str, float]:
    """Validation NELBO per token over the validation split (EMA params).

    Text: {"nll", "ppl", "bpd", "tokens", "batches"}. Images: {"nll" (nats per image token),
    "bits_per_token", "tokens", "images", "batches"}; a perplexity over pixel levels or VQ
    codes means nothing, so there is none.
    """
    bs = run.config.train.eval_batch_size
    base = jax.random.key(run.config.seed + EVAL_SEED_OFFSET)
    image = config_lib.is_image(run.config)
    keys = ("tokens", "label", "weight") if image else ("tokens", "valid")
    total, count = 0.0, 0.0
    n = run.data.num_eval_batches(bs)
    batches = run.data.eval_batches(bs, jax.process_index(), jax.process_count())
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        gb = sharding.global_batch(run.mesh, {k: batch[k] for k in keys})
        t, c = eval_fn(params, gb, jax.random.fold_in(base, i))
        total, count = total + float(t), count + float(c)
    nll = total / max(count, 1.0)
    batches_seen = min(n, max_batches or n)
    if image:
        return {"nll": nll, "bits_per_token": nll / math.log(2), "tokens": count,
                "images": count / run.model_cfg.length, "batches": batches_seen}
    return {"nll": nll, "ppl": math.exp(min(nll, 50.0)), "bpd": nll / math.log(2),
            "tokens": count, "batches": batches_seen}


def write_samples(run: Run, params: dict, workdir: str, step: int) -> list[str]:
    """Samples with the current EMA params; writes `samples/step_<N>.txt` and returns the
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
        with open(os.path.join(workdir, "samples", f"step_{step}.txt"), "w") as f:
            f.write("\n\n".join(f"=== sample {i} ===\n{t}" for i, t in enumerate(texts)) + "\n")
    return texts


def write_image_samples(run: Run, params: dict, workdir: str, step: int) -> list[str]:
    """`sample.num_samples` images of each class (one grid row per class) with `params`:
    `samples/step_<N>.npz` and, for pixel tokens (digits), `samples/step_<N>.png`."""
    c, m = run.config.sample, run.model_cfg
    labels = image_sampling.grid_labels(m.num_classes, c.num_samples)
    codes = image_sampling.image_samples(run.graphdef, params, m,
                                         jax.random.key(run.config.seed + step), labels,
                                         c.batch_size, **image_sampling.sampler_settings(c))
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
    with _undo_on_failure(workdir):
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
        config_lib.save_config(_resolved(config, run.model_cfg), workdir)
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
    ev = evaluate(run, eval_step, state.ema, run.config.train.eval_batches)
    if "ppl" in ev:
        logging.info("eval step %d: val nll %.4f | ppl %.2f | %d tokens", step, ev["nll"],
                     ev["ppl"], ev["tokens"])
    else:
        logging.info("eval step %d: val nll %.4f nats/token (%.4f bits) | %d images", step,
                     ev["nll"], ev["bits_per_token"], ev["images"])
    writer.write(step, "eval", ev)
    return ev


@contextlib.contextmanager
def _undo_on_failure(workdir: str) -> Iterator[None]:
    """Deletes whatever a failing start-up created: new entries of `workdir`, or the workdir
    (with any parent directory it needed) when it did not exist before."""
    path = os.path.abspath(workdir)
    created = None  # the outermost directory this start-up would create
    while not os.path.exists(path):
        created, path = path, os.path.dirname(path)
    before = set() if created else set(os.listdir(workdir))
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        else:
            for name in set(os.listdir(workdir)) - before:
                entry = os.path.join(workdir, name)
                if os.path.isdir(entry) and not os.path.islink(entry):
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(entry)
        raise


def _resolved(config: ConfigDict, model_cfg: ModelConfig) -> ConfigDict:
    """The config with the tokenizer-derived vocabulary filled in."""
    c = ConfigDict(config.to_dict())
    c.model.vocab_size = model_cfg.vocab_size
    c.model.mask_index = model_cfg.mask_index
    return c

