"""Sampling speed of a trained run's model: latency of one batch and tokens/s (spec §6.3).

  python -m benchmarks.run_sampling_speed --workdir=runs/demo --batch=4 --steps=128

Times `pgm_jax.sampling.generate` with the run's model shape (sampling_speed.py's
`time_sampler`: compilation excluded, median of `--runs` calls; speed does not depend on the
weights, so they are freshly initialised). Diffusion samplers make `--steps` network calls
(MDLM's cost per call is flat, so it is timed over `--mdlm_steps` calls and scaled, as in
sampling_speed.py); the AR sampler always makes L - 1. Prints one JSON line:
{"latency_s", "cpu_s", "tokens_per_s", "batch", "steps", "length", "timed_steps"}.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.sampling_speed import time_sampler
from pgm_jax.config import load_run_config, model_config, on_current_schema
from pgm_jax.data import load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--mdlm_steps", type=int, default=16)
    p.add_argument("--float64", action="store_true", help="reference float64 Gumbel arithmetic")
    a = p.parse_args()
    config = on_current_schema(load_run_config(a.workdir))
    cfg = model_config(config)
    bos = int(config.data.get("bos_id", -1))
    if bos < 0:
        bos = load_tokenizer(config.data, a.workdir).bos_id
    timed = min(a.mdlm_steps, a.steps) if cfg.kind == "mdlm_dit" else a.steps
    wall, cpu = time_sampler(cfg, a.batch, timed, a.float64, a.runs, bos)
    wall, cpu = wall * a.steps / timed, cpu * a.steps / timed
    print(json.dumps({"latency_s": wall, "cpu_s": cpu, "tokens_per_s": a.batch * cfg.length / wall,
                      "batch": a.batch, "steps": a.steps, "length": cfg.length,
                      "timed_steps": timed, "kind": cfg.kind}))


if __name__ == "__main__":
    main()
