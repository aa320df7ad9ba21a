"""Run set-up: config -> mesh, data, abstract model and shardings; fresh or restored state.

`setup` does every check before anything is written (see `undo_on_failure`); the training
loop (`train.loop`), `pgm_jax.evaluate` and the dry run build on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator

import jax
from absl import logging
from flax import nnx
from ml_collections import ConfigDict

from pgm_jax import checkpoint, sharding
from pgm_jax import config as config_lib
from pgm_jax.data import TextData, load_text_data
from pgm_jax.data.images import ImageData, load_image_data
from pgm_jax.models import ModelConfig, attention, build_model
from pgm_jax.objectives.losses import LOSSES
from pgm_jax.objectives.validation import eval_step_for, jit_eval_step
from pgm_jax.restore import CHECKPOINT_DIR
from pgm_jax.train import optim
from pgm_jax.train.step import (
    TrainState,
    init_state,
    jit_train_step,
    make_train_step,
    state_shardings,
)


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
    eval_fn = eval_step_for(config.algo, run.graphdef)
    return (jit_train_step(train_fn, run.shardings, run.mesh),
            jit_eval_step(eval_fn, run.shardings.ema, run.mesh))


@contextlib.contextmanager
def undo_on_failure(workdir: str) -> Iterator[None]:
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


def resolved(config: ConfigDict, model_cfg: ModelConfig) -> ConfigDict:
    """The config with the tokenizer-derived vocabulary filled in."""
    c = ConfigDict(config.to_dict())
    c.model.vocab_size = model_cfg.vocab_size
    c.model.mask_index = model_cfg.mask_index
    return c

