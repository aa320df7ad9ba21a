"""Image sampling speed: PGM vs MaskGIT at ImageNet token shapes (spec pgm_image §4.3, §4.6).

  python -m benchmarks.image_sampling_speed --preset=cpu     # 2-core CPU, ~20 minutes
  python -m benchmarks.image_sampling_speed --preset=paper   # accelerator: the paper's models

Both presets sample N = 1024 tokens (32 x 32 VQ-8 grid, codebook 16384, 1000 classes) in 32
steps with the Halton and the confidence orders (`pgm_jax.sampling.image.sample_images`).
Weights are random (speed does not depend on them). VQ decoding to pixels is NOT included
(the reference's `sample_speed` includes it; it is the same for both models). CFG doubling is
off unless --cfg_w != 0.
  paper  H 1024, 16 heads, bfloat16 (the reference's autocast): PGM 12/12 and 14/10 vs
         MaskGIT-L (24 blocks); batches 1 and 32 (the reference's latency and throughput
         settings). Paper: PGM-Halton 7.5x MaskGIT's throughput (GPU and settings unknown).
  cpu    H 256, 4 heads, float32: PGM 12/12 vs MaskGIT 24 blocks; batches 1 and 4. MaskGIT's
         cost per step is flat, so it is timed over `--maskgit_steps` (default 4) steps and
         scaled to 32 (stated in the table).
Latency is the median of `--runs` timed calls; compilation is excluded (every compiled shape
is built by a `compile_only` call first, and its time is reported in the JSON). PGM compiles
one step per encoder bucket (`--bucket`; the cpu preset uses 128-token buckets, 8 shapes,
because each compilation costs seconds on a CPU; padding then adds ~1/6 to PGM's encoder
work, so the cpu ratios are slightly pessimistic for PGM). The table also gives CPU seconds
of the process: on a machine shared with other jobs they, and their ratio, are the
trustworthy cost. Prints the table, then one JSON line {"rows": [...], "device": ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.sampling_speed import cpu_seconds
from configs import imagenet_vq
from pgm_jax.config import model_config
from pgm_jax.models import ModelConfig, build_model
from pgm_jax.sampling.image import ORDERS, sample_images
from pgm_jax.sampling.pgm import default_bucket

STEPS = 32


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str  # the PGM variant
    pgm: ModelConfig
    maskgit: ModelConfig


def _model_cfg(preset: str, cpu: bool) -> ModelConfig:
    c = imagenet_vq.get_config(preset)
    c.model.dropout = 0.0
    if cpu:
        c.model.hidden_size = c.model.cond_dim = 256
        c.model.n_heads, c.model.dtype = 4, "float32"
    return model_config(c)


def pairs(preset: str) -> list[Pair]:
    cpu = preset == "cpu"
    maskgit = _model_cfg("maskgit_l", cpu)
    variants = ("pgm_12_12",) if cpu else ("pgm_12_12", "pgm_14_10")
    return [Pair(v, _model_cfg(v, cpu), maskgit) for v in variants]


def timed(call: Callable[[int], jax.Array], runs: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `call(seed)` over seeds 1..runs, results awaited."""
    walls, cpus = [], []
    for seed in range(1, runs + 1):
        t0, c0 = time.perf_counter(), cpu_seconds()
        jax.block_until_ready(call(seed))
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return statistics.median(walls), statistics.median(cpus)


class Sampler:
    """A model with random weights, and timing of `sample_images` on it."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        graphdef, params = nnx.split(build_model(cfg))
        self.graphdef, self.params = graphdef, nnx.to_pure_dict(params)

    def time(self, batch: int, order: str, steps: int, cfg_w: float, runs: int, bucket: int
             ) -> tuple[float, float, float]:
        """(compile, median wall, median CPU) seconds of one `sample_images` call."""
        labels = jnp.arange(batch, dtype=jnp.int32) % self.cfg.num_classes

        def call(seed: int, compile_only: bool = False) -> jax.Array:
            return sample_images(self.graphdef, self.params, self.cfg, jax.random.key(seed),
                                 labels=labels, steps=steps, order=order, cfg_w=cfg_w,
                                 bucket=bucket, compile_only=compile_only)

        t0 = time.perf_counter()
        jax.block_until_ready(call(0, compile_only=True))
        return (time.perf_counter() - t0, *timed(call, runs))


def speed_rows(preset: str, batches: list[int], orders: list[str], runs: int,
               maskgit_steps: int, cfg_w: float, bucket: int) -> list[dict]:
    rows = []
    baseline: dict[tuple[int, str], tuple[float, float, float]] = {}
    m = min(maskgit_steps, STEPS)
    for pair in pairs(preset):
        pgm = Sampler(pair.pgm)
        maskgit = Sampler(pair.maskgit) if not baseline else None
        for batch in batches:
            for order in orders:
                if (batch, order) not in baseline:  # MaskGIT: once, shared by the variants
                    comp, wall, cpu = maskgit.time(batch, order, m, cfg_w, runs, 0)
                    baseline[batch, order] = (comp, wall * STEPS / m, cpu * STEPS / m)
                mg_compile, mg_s, mg_cpu = baseline[batch, order]
                pgm_compile, pgm_s, pgm_cpu = pgm.time(batch, order, STEPS, cfg_w, runs, bucket)
                row = {"pgm": pair.name, "order": order, "tokens": pair.pgm.length,
                       "steps": STEPS, "batch": batch, "cfg_w": cfg_w, "pgm_s": pgm_s,
                       "maskgit_s": mg_s, "pgm_img_s": batch / pgm_s,
                       "maskgit_img_s": batch / mg_s, "ratio": mg_s / pgm_s,
                       "pgm_cpu_s": pgm_cpu, "maskgit_cpu_s": mg_cpu,
                       "cpu_ratio": mg_cpu / pgm_cpu, "maskgit_timed_steps": m,
                       "dtype": pair.pgm.dtype, "hidden": pair.pgm.hidden_size,
                       "bucket": bucket or default_bucket(pair.pgm.length + 1),
                       "pgm_compile_s": pgm_compile, "maskgit_compile_s": mg_compile}
                rows.append(row)
                print(_format(row), flush=True)
    return rows


HEADER = (f"{'PGM':9s} {'order':10s} {'N':>5s} {'S':>3s} {'B':>3s} {'PGM s':>8s} "
          f"{'MaskGIT s':>9s} {'PGM img/s':>9s} {'MG img/s':>9s} {'ratio':>6s} "
          f"{'PGM cpu s':>9s} {'MG cpu s':>9s} {'cpu ratio':>9s}")


def _format(r: dict) -> str:
    m = r["maskgit_timed_steps"]
    note = "" if m == r["steps"] else f"  (MaskGIT timed over {m} steps, x{r['steps'] / m:g})"
    return (f"{r['pgm']:9s} {r['order']:10s} {r['tokens']:5d} {r['steps']:3d} {r['batch']:3d} "
            f"{r['pgm_s']:8.2f} {r['maskgit_s']:9.2f} {r['pgm_img_s']:9.3f} "
            f"{r['maskgit_img_s']:9.3f} {r['ratio']:6.2f} {r['pgm_cpu_s']:9.2f} "
            f"{r['maskgit_cpu_s']:9.2f} {r['cpu_ratio']:9.2f}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes (default: cpu 1 4, paper 1 32)")
    parser.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    parser.add_argument("--runs", type=int, default=3, help="timed calls per sampler (median)")
    parser.add_argument("--maskgit_steps", type=int, default=None,
                        help="MaskGIT steps actually timed, scaled to 32 (default: cpu 4, "
                             "paper 32)")
    parser.add_argument("--bucket", type=int, default=None,
                        help="PGM encoder bucket (0 = the sampler's default, 72 at N = 1024; "
                             "default: cpu 128, paper 0): fewer buckets, fewer compilations")
    parser.add_argument("--cfg_w", type=float, default=0.0,
                        help="guidance weight; != 0 doubles the batch as the reference does")
    args = parser.parse_args()
    batches = args.batches or ([1, 4] if args.preset == "cpu" else [1, 32])
    maskgit_steps = args.maskgit_steps or (4 if args.preset == "cpu" else STEPS)
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})"
    print(f"device: {device}; random weights; VQ decoding not included\n{HEADER}", flush=True)
    bucket = args.bucket if args.bucket is not None else (128 if args.preset == "cpu" else 0)
    rows = speed_rows(args.preset, batches, args.orders, args.runs, maskgit_steps, args.cfg_w,
                      bucket)
    print(json.dumps({"rows": rows, "device": device}))


if __name__ == "__main__":
    main()
