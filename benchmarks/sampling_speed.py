"""Sampling speed: PGM vs MDLM at matched shapes (spec §6.3), 128 steps, warm-up excluded.

  python -m benchmarks.sampling_speed --preset=cpu     # 2-core CPU, ~22 min (--batches 1: ~6)
  python -m benchmarks.sampling_speed --preset=paper   # accelerator: the paper's models
  python -m benchmarks.sampling_speed --preset=cpu --bucket_study  # encoder buckets vs padding
  python -m benchmarks.sampling_speed --preset=cpu --prompt_len=512 --batches 1 --runs 1
      # conditional: a 512-token prompt, only the L-1-512 positions after it decoded

Presets (random weights, as the reference's `latency_sample` mode; speed does not depend on them):
  paper  OWT L=1024: PGM 8/8 vs MDLM 12 blocks (H 768, 12 heads, V 50258); LM1B L=128: PGM 6/6
         vs MDLM 12 blocks (V 30522); batch 32; bfloat16 matmuls (the reference's autocast).
         Paper: 5.35x at L=1024, 1.79x at L=128 (spec §6.6).
  cpu    L=1024, H 256, 4 heads, V 50258: PGM 8/8 vs MDLM 12 blocks, batches 1 and 4, float32
         matmuls. MDLM's cost per network call is flat, so it is timed over `--mdlm_steps`
         (default 4) steps and scaled to 128 (stated in the table).
With `--prompt_len P` every sequence starts from [BOS] + P random prompt tokens: PGM's calls
and encoder length count only the L-1-P positions left (ceil((L-1-P)/k) calls), while MDLM still
runs its S full-length steps, so the ratio should grow roughly like (L-1)/(L-1-P) for PGM's part.
tok/s counts the tokens sampled: batch x (L - 1 - P).
Each row is timed at two sampling precisions: float64 (the reference's Gumbel arithmetic, the
paper's setting) and float32 (both samplers at their best). Latency is the median of `--runs`
timed calls; compilation is excluded (PGM compiles each bucket's loop over an empty range of
calls, MDLM runs one untimed call). The table also gives CPU seconds (all threads of the
process): on a machine shared with other jobs they are the trustworthy cost, and their ratio
the trustworthy PGM/MDLM ratio. Prints the table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time

import jax
import numpy as np
from flax import nnx

from configs import lm1b, owt
from pgm_jax.config import model_config
from pgm_jax.models import ModelConfig, build_model
from pgm_jax.models.attention import resolve
from pgm_jax.models.config import ATTENTION_KERNELS
from pgm_jax.sampling import generate, pgm, prompts

STEPS = 128


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    pgm: ModelConfig
    mdlm: ModelConfig
    bos_id: int


# model.attention for every sampler (`--attention`; the presets' default is auto).
ATTENTION = {"kind": None}


def _model_cfg(config_module, preset: str, dtype: str | None, **overrides) -> ModelConfig:
    c = config_module.get_config(preset)
    c.model.dropout = 0.0
    if ATTENTION["kind"]:
        c.model.attention = ATTENTION["kind"]
    if dtype:
        c.model.dtype = dtype
    for k, v in overrides.items():
        c.model[k] = v
    return model_config(c)


def shapes(preset: str) -> list[Shape]:
    if preset == "paper":
        return [
            Shape("owt", _model_cfg(owt, "pgm_8_8", None), _model_cfg(owt, "mdlm", None), 50256),
            Shape("lm1b", _model_cfg(lm1b, "pgm_6_6", None), _model_cfg(lm1b, "mdlm", None),
                  101),
        ]
    small = dict(hidden_size=256, n_heads=4, cond_dim=128)
    return [Shape("owt-cpu", _model_cfg(owt, "pgm_8_8", "float32", **small),
                  _model_cfg(owt, "mdlm", "float32", **small), 50256)]


def time_sampler(cfg: ModelConfig, batch: int, steps: int, float64: bool, runs: int, bos: int,
                 bucket: int = 0, prompt_len: int = 0) -> tuple[float, float]:
    """Median (wall, CPU) seconds per call of `generate` over `runs` calls, after compiling.

    CPU seconds (all threads of this process) barely change when other processes share the
    cores, so they show the cost on a busy machine where wall time does not.
    """
    graphdef, params = nnx.split(build_model(cfg))
    params = nnx.to_pure_dict(params)
    kw = dict(num_samples=batch, steps=steps, bos_id=bos, float64=float64, bucket=bucket)
    if prompt_len:
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size - 1, (batch, prompt_len))
        kw["cond"] = prompts.prefixes(ids.tolist(), cfg.length, bos)
    if cfg.kind == "pgm":  # compile every bucket's loop without running a single call
        jax.block_until_ready(pgm.sample(graphdef, params, jax.random.key(0), length=cfg.length,
                                         compile_only=True, **kw))
    else:
        jax.block_until_ready(generate(graphdef, params, cfg, jax.random.key(0), **kw))

    def call(seed: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), cpu_seconds()
        jax.block_until_ready(generate(graphdef, params, cfg, jax.random.key(seed), **kw))
        return time.perf_counter() - t0, cpu_seconds() - c0

    walls, cpus = zip(*(call(seed) for seed in range(1, runs + 1)), strict=True)
    return statistics.median(walls), statistics.median(cpus)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def speed_rows(preset: str, batches: list[int], runs: int, mdlm_steps: int,
               prompt_len: int = 0, precisions: tuple[str, ...] = ("float64", "float32")
               ) -> list[dict]:
    rows = []
    for shape in shapes(preset):
        length = shape.pgm.length
        for batch in batches:
            for precision in precisions:
                f64 = precision == "float64"
                pgm_s, pgm_cpu = time_sampler(shape.pgm, batch, STEPS, f64, runs, shape.bos_id,
                                              prompt_len=prompt_len)
                m = min(mdlm_steps, STEPS)
                mdlm_s, mdlm_cpu = (v * STEPS / m for v in time_sampler(
                    shape.mdlm, batch, m, f64, runs, shape.bos_id, prompt_len=prompt_len))
                decoded = batch * (length - 1 - prompt_len)  # tokens sampled (BOS, prompt given)
                row = {"shape": shape.name, "length": length, "steps": STEPS, "batch": batch,
                       "precision": precision, "pgm_s": pgm_s, "mdlm_s": mdlm_s,
                       "pgm_tok_s": decoded / pgm_s, "mdlm_tok_s": decoded / mdlm_s,
                       "ratio": mdlm_s / pgm_s, "pgm_cpu_s": pgm_cpu, "mdlm_cpu_s": mdlm_cpu,
                       "cpu_ratio": mdlm_cpu / pgm_cpu, "mdlm_timed_steps": m,
                       "prompt_len": prompt_len}
                rows.append(row)
                print(_format(row), flush=True)
    return rows


def bucket_rows(preset: str, batch: int, runs: int) -> list[dict]:
    """PGM float32 latency with encoder buckets of L/16, L/8 and full padding (bucket = L)."""
    rows = []
    for shape in shapes(preset):
        length = shape.pgm.length
        for bucket in (pgm.default_bucket(length), 2 * pgm.default_bucket(length), length):
            bucket = min(bucket, length)
            wall, cpu = time_sampler(shape.pgm, batch, STEPS, False, runs, shape.bos_id, bucket)
            row = {"shape": shape.name, "length": length, "batch": batch, "bucket": bucket,
                   "compiled_shapes": -(-length // bucket), "pgm_s": wall, "pgm_cpu_s": cpu}
            rows.append(row)
            print(f"  bucket {bucket:5d} ({row['compiled_shapes']:2d} shapes): {wall:8.2f} s "
                  f"({cpu:.2f} CPU s)", flush=True)
    return rows


HEADER = (f"{'shape':8s} {'L':>5s} {'S':>4s} {'B':>3s} {'precision':>9s} {'PGM s':>8s} "
          f"{'MDLM s':>8s} {'PGM tok/s':>10s} {'MDLM tok/s':>10s} {'ratio':>6s} "
          f"{'PGM cpu s':>9s} {'MDLM cpu s':>10s} {'cpu ratio':>9s}")


def _format(r: dict) -> str:
    note = "" if r["mdlm_timed_steps"] == r["steps"] else \
        f"  (MDLM timed over {r['mdlm_timed_steps']} steps, x{r['steps'] // r['mdlm_timed_steps']})"
    return (f"{r['shape']:8s} {r['length']:5d} {r['steps']:4d} {r['batch']:3d} "
            f"{r['precision']:>9s} {r['pgm_s']:8.2f} {r['mdlm_s']:8.2f} {r['pgm_tok_s']:10.1f} "
            f"{r['mdlm_tok_s']:10.1f} {r['ratio']:6.2f} {r['pgm_cpu_s']:9.2f} "
            f"{r['mdlm_cpu_s']:10.2f} {r['cpu_ratio']:9.2f}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes (default: cpu 1 4, paper 32)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per sampler (median)")
    parser.add_argument("--mdlm_steps", type=int, default=None,
                        help="MDLM steps actually timed (default: cpu 4, paper 128)")
    parser.add_argument("--prompt_len", type=int, default=0,
                        help="prompt tokens after BOS (conditional sampling; default 0)")
    parser.add_argument("--precisions", nargs="+", default=["float64", "float32"],
                        choices=("float64", "float32"), help="sampling precisions timed")
    parser.add_argument("--attention", default=None, choices=ATTENTION_KERNELS,
                        help="model.attention for both samplers (default: auto)")
    parser.add_argument("--bucket_study", action="store_true",
                        help="also time PGM with L/16, L/8 buckets and full padding")
    args = parser.parse_args()
    ATTENTION["kind"] = args.attention
    batches = args.batches or ([1, 4] if args.preset == "cpu" else [32])
    mdlm_steps = args.mdlm_steps or (4 if args.preset == "cpu" else STEPS)
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})"
    kernel = resolve(args.attention or "auto", jax.default_backend())
    print(f"device: {device}, attention: {kernel}\n{HEADER}", flush=True)
    result = {"rows": speed_rows(args.preset, batches, args.runs, mdlm_steps, args.prompt_len,
                                 tuple(args.precisions))}
    if args.bucket_study:
        print(f"PGM encoder shape buckets (float32, batch {batches[0]}):", flush=True)
        result["buckets"] = bucket_rows(args.preset, batches[0], args.runs)
    result["device"], result["attention"] = device, kernel
    print(json.dumps(result))


if __name__ == "__main__":
    main()
