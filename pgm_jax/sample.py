"""Sample from a trained (or converted) run with its EMA weights.

  python -m pgm_jax.sample --workdir=runs/demo [--num_samples=8 --steps=32 --top_p=0.9]

PGM runs use the efficient sampler (`--mode`: efficient-uniform or efficient-non-uniform), MDLM
runs the ancestral sampler, AR runs decode left to right. The EMA weights are restored onto a
data-parallel mesh over every device and each batch is sharded over it (when the devices
divide `--batch_size`); a progress bar counts samples. Writes `samples.jsonl` (checkpoint step,
token ids, text) and `samples.txt` under the workdir (or the `--output` prefix).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from pgm_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by pgm_jax.main/convert.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_NUM = flags.DEFINE_integer("num_samples", None, "Number of samples (default: config).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Samples per batch (default: config).")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps / network calls (default: config).")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus probability (1.0 = off).")
_TEMP = flags.DEFINE_float("temperature", None, "Softmax temperature (0 = greedy).")
_F64 = flags.DEFINE_bool("float64", None, "Reference float64 Gumbel arithmetic.")
_MODE = flags.DEFINE_enum("mode", None, ["efficient-uniform", "efficient-non-uniform"],
                          "PGM schedule (default: config sample.mode).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUTPUT = flags.DEFINE_string("output", None, "Output path prefix (default: WORKDIR/samples).")


def main(argv: list[str]) -> None:
    cli.no_positional_args(argv)
    cli.require(bool(_WORKDIR.value), "--workdir is required")
    cli.require(os.path.isdir(_WORKDIR.value),
                f"--workdir={_WORKDIR.value}: no such directory (a run of pgm_jax.main)")
    cli.require(_STEP.value is None or _STEP.value >= 0, f"--step={_STEP.value}: must be >= 0")
    import jax  # noqa: PLC0415

    from pgm_jax.config import load_run_config, model_config  # noqa: PLC0415
    from pgm_jax.sampling import from_run  # noqa: PLC0415

    workdir = _WORKDIR.value
    config = load_run_config(workdir)
    s = from_run.settings(config, model_config(config), num_samples=_NUM.value,
                          batch_size=_BATCH.value, steps=_STEPS.value, top_p=_TOP_P.value,
                          temperature=_TEMP.value, float64=_F64.value, mode=_MODE.value)
    tokenizer = from_run.run_tokenizer(config, workdir)
    t0 = time.perf_counter()
    tokens, step = from_run.sample_run(workdir, config, s, _STEP.value, _SEED.value, tokenizer)
    seconds = time.perf_counter() - t0
    texts = [tokenizer.decode(row) if tokenizer else None for row in tokens.tolist()]
    prefix = _OUTPUT.value or os.path.join(workdir, "samples")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        with open(prefix + ".jsonl", "w") as f:
            for row, text in zip(tokens.tolist(), texts, strict=True):
                f.write(json.dumps({"step": step, "tokens": row, "text": text}) + "\n")
        with open(prefix + ".txt", "w") as f:
            for j, (row, text) in enumerate(zip(tokens.tolist(), texts, strict=True)):
                f.write(f"=== sample {j} ===\n{row if text is None else text}\n\n")
    for j, (row, text) in enumerate(zip(tokens.tolist(), texts, strict=True)):
        print(f"=== sample {j} ===\n{row if text is None else text}\n")
    print(f"wrote {prefix}.jsonl and {prefix}.txt ({len(tokens)} samples in {seconds:.1f}s, "
          f"compilation included)")


if __name__ == "__main__":
    cli.run(main)
