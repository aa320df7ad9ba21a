"""Generative perplexity and entropy of runs at several sampling step counts, one judge.

  python -m pgm_jax.compare_steps --runs=teacher=runs/demo,student=runs/demo-distill \\
      --judge=runs/demo-ar --steps=8,16,32 --num_samples=128

Prints a markdown table and one JSON line per cell (EMA weights, float64 sampling by default:
the paper's setting for these figures). `make demo-distill` uses it.
"""

from __future__ import annotations

import json
import os

from absl import flags

from pgm_jax import cli

_RUNS = flags.DEFINE_list("runs", None, "NAME=WORKDIR pairs (pgm_jax runs of text models).")
_JUDGE = flags.DEFINE_string("judge", None, "Judge LM: a GPT-2 directory or a pgm_jax AR run.")
_STEPS = flags.DEFINE_list("steps", ["8", "16", "32"], "Sampling step counts.")
_NUM = flags.DEFINE_integer("num_samples", 128, "Samples per run and step count.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Samples per sampling batch.")
_F64 = flags.DEFINE_bool("float64", True, "Reference float64 Gumbel arithmetic.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (the same for every cell).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the rows here (JSON lines).")


def main(argv: list[str]) -> None:
    cli.no_positional_args(argv)
    cli.require(bool(_RUNS.value), "--runs=NAME=WORKDIR,... is required")
    cli.require(bool(_JUDGE.value), "--judge is required (a GPT-2 directory or an AR run)")
    runs = {}
    for item in _RUNS.value:
        name, sep, workdir = item.partition("=")
        cli.require(bool(sep and name and workdir), f"--runs: {item!r} is not NAME=WORKDIR")
        cli.require(os.path.isdir(workdir), f"--runs: {workdir}: no such directory")
        runs[name] = workdir
    try:
        steps = [int(s) for s in _STEPS.value]
    except ValueError:
        raise cli.UsageError(f"--steps={','.join(_STEPS.value)}: must be integers") from None
    cli.require(all(s > 0 for s in steps), "--steps: must be positive")
    cli.require(_NUM.value > 0 and _BATCH.value > 0, "--num_samples, --batch_size: positive")
    from pgm_jax.eval.steps_table import markdown, steps_table

    rows = steps_table(runs, _JUDGE.value, steps, num_samples=_NUM.value,
                       batch_size=_BATCH.value, float64=_F64.value, seed=_SEED.value)
    for r in rows:
        print(json.dumps(r))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(markdown(rows))
    print(f"judge {rows[0]['judge']}; {_NUM.value} samples per cell; float64={_F64.value}")


if __name__ == "__main__":
    cli.run(main)
