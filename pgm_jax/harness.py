"""Downstream evaluation of a run with lm-eval-harness (spec §6.5).

  python -m pgm_jax.harness --workdir=RUN --tasks=lambada_openai,piqa [--limit=N]
      [--num_mc_samples=1024] [--joint] [--include_path=DIR] [--output=PATH.json]

The run (PGM, MDLM or AR; EMA weights, or `--weights=params` for the raw weights the reference
harness loads, spec §9 item 7) is registered with lm-eval as the model "pgm_jax"
(pgm_jax/eval/harness_model.py). Likelihoods are conditional Monte-Carlo ELBOs of the
continuation by default; `--joint` gives the reference's per-token NELBO of context +
continuation (pgm_jax/eval/likelihood.py). Writes lm-eval's results JSON to `--output`
(default WORKDIR/harness_results.json) and prints lm-eval's table.

No network: standard tasks need their Hugging Face datasets in the local cache; local tasks
are YAML files (+ their data) in `--include_path`.
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from pgm_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (pgm_jax.main / convert).")
_TASKS = flags.DEFINE_list("tasks", None, "lm-eval task names, comma-separated.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate the first N examples of each task.")
_MC = flags.DEFINE_integer("num_mc_samples", 1024, "Monte-Carlo samples per likelihood "
                           "(PGM / MDLM; the reference uses 1024).")
_MC_BATCH = flags.DEFINE_integer("mc_batch", 256, "Monte-Carlo samples per forward pass.")
_JOINT = flags.DEFINE_bool("joint", False, "The reference's joint per-token NELBO instead of "
                           "the conditional likelihood of the continuation.")
_INCLUDE = flags.DEFINE_string("include_path", None, "Folder of extra task YAML files.")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "params"], "EMA or raw weights.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps for generate_until (default: "
                              "config sample.steps).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per generate_until batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the Monte-Carlo draws and the sampler.")
_OUTPUT = flags.DEFINE_string("output", None, "Results JSON (default: "
                              "WORKDIR/harness_results.json).")


def main(argv: list[str]) -> None:
    cli.no_positional_args(argv)
    cli.require(bool(_WORKDIR.value), "--workdir is required")
    cli.require(os.path.isdir(_WORKDIR.value), f"--workdir={_WORKDIR.value}: no such directory")
    cli.require(bool(_TASKS.value), "--tasks is required (e.g. --tasks=lambada_openai,piqa)")
    cli.require(_MC.value > 0, f"--num_mc_samples={_MC.value}: must be positive")
    cli.require(_MC_BATCH.value > 0, f"--mc_batch={_MC_BATCH.value}: must be positive")
    cli.require(_LIMIT.value is None or _LIMIT.value > 0, f"--limit={_LIMIT.value}: must be > 0")
    cli.require(_INCLUDE.value is None or os.path.isdir(_INCLUDE.value),
                f"--include_path={_INCLUDE.value}: no such directory")
    output = _OUTPUT.value or os.path.join(_WORKDIR.value, "harness_results.json")
    cli.writable_dir("output", os.path.dirname(os.path.abspath(output)))
    # No network: datasets must come from the local cache or local files.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pgm_jax.eval import harness_run

    t0 = time.perf_counter()
    results = harness_run.evaluate(
        _WORKDIR.value, _TASKS.value, limit=_LIMIT.value, include_path=_INCLUDE.value,
        num_mc_samples=_MC.value, mc_batch=_MC_BATCH.value, joint=_JOINT.value,
        weights=_WEIGHTS.value, step=_STEP.value, steps=_STEPS.value,
        batch_size=_BATCH.value, seed=_SEED.value)
    with open(output, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(harness_run.table(results))
    print(f"wrote {output} ({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    cli.run(main)
