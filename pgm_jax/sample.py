"""Sample from a trained (or converted) run with its EMA weights.

  python -m pgm_jax.sample --workdir=runs/demo [--num_samples=8 --steps=32 --top_p=0.9]

PGM runs use the efficient-uniform sampler, MDLM runs the ancestral sampler. Writes
`samples.jsonl` (token ids + text) and `samples.txt` under the workdir (or `--output`).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags, logging

from pgm_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by pgm_jax.main/convert.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_NUM = flags.DEFINE_integer("num_samples", None, "Number of samples (default: config).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Samples per batch (default: config).")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps / network calls (default: config).")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus probability (1.0 = off).")
_TEMP = flags.DEFINE_float("temperature", None, "Softmax temperature (0 = greedy).")
_F64 = flags.DEFINE_bool("float64", None, "Reference float64 Gumbel arithmetic.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUTPUT = flags.DEFINE_string("output", None, "Output path prefix (default: WORKDIR/samples).")


def _pick(flag, default):
    return default if flag.value is None else flag.value


def main(argv: list[str]) -> None:
    del argv
    cli.require(bool(_WORKDIR.value), "--workdir is required")
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from pgm_jax import sharding  # noqa: PLC0415
    from pgm_jax.config import load_run_config, model_config  # noqa: PLC0415
    from pgm_jax.restore import load_tokenizer, restore_params  # noqa: PLC0415
    from pgm_jax.sampling import generate  # noqa: PLC0415

    workdir = _WORKDIR.value
    config = load_run_config(workdir)
    sc = config.sample
    num = _pick(_NUM, sc.num_samples)
    batch = _pick(_BATCH, sc.batch_size)
    steps = _pick(_STEPS, sc.steps)
    top_p, temp, f64 = _pick(_TOP_P, sc.top_p), _pick(_TEMP, sc.temperature), _pick(_F64,
                                                                                  sc.float64)
    cli.require(num > 0 and batch > 0, "--num_samples and --batch_size must be positive")
    cli.require(0.0 < top_p <= 1.0, f"--top_p={top_p}: must be in (0, 1]")
    cli.require(temp >= 0.0, f"--temperature={temp}: must be >= 0")
    mcfg = model_config(config)
    cli.require(steps > 0 and mcfg.length % steps == 0,
                f"--steps={steps}: must divide model.length={mcfg.length}")
    tokenizer = load_tokenizer(workdir)
    bos = tokenizer.bos_id if tokenizer else int(config.get("bos_id", 0))
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    graphdef, params, step = restore_params(workdir, mcfg, mesh, _STEP.value, item="ema")
    shard = sharding.batch_sharding(mesh) if batch % mesh.size == 0 else None
    logging.info("sampling %d x %d tokens from step %d with %d steps (%s)", num, mcfg.length,
                 step, steps, mcfg.kind)
    rows = []
    key = jax.random.key(_SEED.value)
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, num, batch)):
        tokens = generate(graphdef, params, mcfg, jax.random.fold_in(key, i), num_samples=batch,
                          steps=steps, bos_id=bos, top_p=top_p, temperature=temp, float64=f64,
                          batch_sharding=shard)
        tokens = np.asarray(jax.device_get(tokens))[: num - start]
        for row in tokens.tolist():
            rows.append({"tokens": row, "text": tokenizer.decode(row) if tokenizer else None})
        logging.info("batch %d/%d done (%.1fs)", i + 1, -(-num // batch),
                     time.perf_counter() - t0)
    prefix = _OUTPUT.value or os.path.join(workdir, "samples")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        with open(prefix + ".jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")
        with open(prefix + ".txt", "w") as f:
            for j, r in enumerate(rows):
                f.write(f"=== sample {j} ===\n{r['text'] if tokenizer else r['tokens']}\n\n")
    for j, r in enumerate(rows):
        print(f"=== sample {j} ===\n{r['text'] if tokenizer else r['tokens']}\n")
    print(f"wrote {prefix}.jsonl and {prefix}.txt ({len(rows)} samples, "
          f"{time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    cli.run(main)
