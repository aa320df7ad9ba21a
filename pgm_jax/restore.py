"""Loading a run's weights for inference (sampling, evaluation); its tokenizer comes from
`pgm_jax.data.load_tokenizer`."""

from __future__ import annotations

import os

import jax
from flax import nnx

from pgm_jax import checkpoint, sharding
from pgm_jax.models import ModelConfig, build_model

CHECKPOINT_DIR = "checkpoints"


def restore_params(workdir: str, model_cfg: ModelConfig, mesh: jax.sharding.Mesh,
                   step: int | None = None, item: str = "ema"
                   ) -> tuple[nnx.GraphDef, dict, int]:
    """(graphdef, params on `mesh`, step) for the `item` ('ema' or 'params') weights."""
    abstract_model = nnx.eval_shape(lambda: build_model(model_cfg))
    graphdef, abstract_state = nnx.split(abstract_model)
    shardings = sharding.named(mesh, sharding.param_specs(abstract_model, mesh))
    target = checkpoint.abstract(nnx.to_pure_dict(abstract_state), shardings)
    # closed whether or not the restore succeeds
    with checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), read_only=True) as ckpt:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise checkpoint.CheckpointError(
                f"no checkpoint in {ckpt.directory}: train with pgm_jax.main or convert one "
                "with pgm_jax.convert"
            )
        params = ckpt.restore(step, {item: target})[item]
    return graphdef, params, step
