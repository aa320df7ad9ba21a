"""Runs lm-eval on a pgm_jax run directory: restore, register, check the tasks, evaluate."""

from __future__ import annotations

import logging

from pgm_jax import sharding
from pgm_jax.cli import UsageError, require
from pgm_jax.config import load_run_config, model_config
from pgm_jax.models.registry import TEXT_KINDS
from pgm_jax.restore import restore_params
from pgm_jax.sampling import text_run
from pgm_jax.sampling.settings import SamplerSettings


def task_dict(tasks: list[str], include_path: str | None):
    """lm-eval's tasks (data loaded); UsageError with one line when a task is unknown or its
    data is not available offline."""
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    require(not unknown, f"--tasks: unknown task(s) {unknown}: use lm-eval's task names, or "
            "put a task YAML in --include_path")
    try:
        return manager, get_task_dict(tasks, manager)
    except Exception as e:
        raise UsageError(
            f"--tasks={','.join(tasks)}: the task data could not be loaded offline "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); on a "
            "machine with network run `python -c \"from lm_eval.tasks import TaskManager, "
            f"get_task_dict; get_task_dict({tasks!r}, TaskManager())\"` to fill the Hugging "
            "Face cache (HF_HOME), copy it here, or give a local task in --include_path"
        ) from None


def evaluate(workdir: str, tasks: list[str], *, limit: int | None, include_path: str | None,
             num_mc_samples: int, mc_batch: int, joint: bool, weights: str, step: int | None,
             steps: int | None, batch_size: int, seed: int) -> dict:
    """lm-eval's results dict (per-task metrics with stderr, configs, versions)."""
    import lm_eval

    from pgm_jax.eval.harness_model import PGMJaxLM

    config = load_run_config(workdir)
    mcfg = model_config(config)
    require(mcfg.kind in TEXT_KINDS, f"{workdir}: a {mcfg.kind} run; the "
            "harness takes text runs (PGM, MDLM, AR)")
    tokenizer = text_run.run_tokenizer(config, workdir)
    require(tokenizer is not None, f"{workdir} has no tokenizer, so task text cannot be "
            "encoded: put the run's tokenizer file in the workdir")
    s = SamplerSettings.build(config, mcfg, steps=steps)
    manager, tdict = task_dict(tasks, include_path)
    mesh = sharding.inference_mesh()
    graphdef, params, step = restore_params(workdir, mcfg, mesh, step, item=weights)
    lm = PGMJaxLM(graphdef, params, mcfg, tokenizer, mesh,
                  bos_id=text_run.bos_id(config, tokenizer, workdir),
                  num_mc_samples=num_mc_samples, mc_batch=mc_batch, joint=joint, steps=s.steps,
                  batch_size=batch_size, seed=seed)
    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager,
                                      log_samples=False, bootstrap_iters=1000,
                                      random_seed=seed, numpy_random_seed=seed)
    results["pgm_jax"] = {"workdir": workdir, "step": int(step), "kind": mcfg.kind,
                          "num_mc_samples": num_mc_samples, "joint": joint, "weights": weights}
    del tdict
    return results


def table(results: dict) -> str:
    from lm_eval.utils import make_table

    return make_table(results)
