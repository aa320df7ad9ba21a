"""Training speed of PGM vs MDLM: tokens/s and model FLOPs utilisation (MFU).

  python benchmarks/train_speed.py --preset cpu      # demo-sized models, any machine
  python benchmarks/train_speed.py --preset paper    # OWT PGM 8/8 vs MDLM, L=1024, bf16
  python benchmarks/train_speed.py --preset paper --attention dense   # the kernel to time

Times the full jitted train step (forward, backward, AdamW, EMA; donated state) on random
tokens over every device present (pure data parallelism unless --fsdp), after warm-up
steps, and reports the median. Prints a table and, last, one JSON line.

FLOPs (model FLOPs, per token; a multiply-add is 2 FLOPs; H hidden, L length, V vocabulary,
r MLP ratio = 4). Per block and token a dense layer of m x n weights costs 2mn:
  self-attention block (PGM encoder, MDLM):  qkv 6H^2 + out 2H^2 + MLP 4rH^2 = 24H^2,
      plus attention: scores Q K^T 2LH and values P V 2LH = 4LH (every token attends over
      all L positions: the partition masks scores, it does not skip them);
  cross-attention block (PGM decoder):  q 2H^2 + kv 4H^2 (of the encoder output) + out 2H^2
      + MLP 16H^2 = 24H^2, plus 4LH attention;
  GroupSwap (PGM, once):  query projection 2H^2 + kv 4H^2 + out 2H^2 = 8H^2, plus 4LH;
  output head:  2HV.
So the forward pass costs, per token,
  MDLM (n blocks):            F = n (24H^2 + 4LH) + 2HV
  PGM (e + d blocks):         F = (e + d)(24H^2 + 4LH) + 8H^2 + 4LH + 2HV
and training costs 3F (the backward pass is two matmuls per forward matmul). The adaLN
projections and the time embedding act once per sequence, not per token (< 0.1%), and are
left out, as are rematerialisation and chunked-logit recomputation (hardware, not model,
FLOPs). At H=768, L=1024, V=50258: PGM 8/8 3F = 1.086 GFLOP/token, MDLM 3F = 0.854.
MFU = 3F x tokens/s / (devices x peak FLOP/s of one device, dense bf16, `PEAK_FLOPS`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from flax import nnx

from configs import demo, owt
from pgm_jax import config as config_lib
from pgm_jax import sharding
from pgm_jax.models import ModelConfig, attention, build_model
from pgm_jax.models.config import ATTENTION_KERNELS
from pgm_jax.objectives.losses import LOSSES
from pgm_jax.train import optim
from pgm_jax.train.step import (
    init_state,
    jit_train_step,
    make_train_step,
    state_shardings,
)

# Dense bf16 peak FLOP/s per device, matched against jax's `device_kind` (first match wins).
PEAK_FLOPS = (("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("TPU v4", 275e12),
              ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12))


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token, 3F with F from the module docstring."""
    h, n, v = cfg.hidden_size, cfg.length, cfg.vocab_size
    block = 2 * (4 + 2 * cfg.mlp_ratio) * h * h + 4 * n * h  # 24H^2 + 4LH at r = 4
    if cfg.kind == "pgm":
        forward = (cfg.encoder_blocks + cfg.decoder_blocks) * block + 8 * h * h + 4 * n * h
    else:
        forward = cfg.n_blocks * block
    return 3.0 * (forward + 2 * h * v)


def peak_flops(device: jax.Device) -> float | None:
    return next((p for name, p in PEAK_FLOPS if name in device.device_kind), None)


def preset_configs(preset: str) -> dict[str, object]:
    """algo -> ConfigDict: the paper's OWT PGM 8/8 and MDLM, or the CPU demo's two models."""
    if preset == "paper":
        return {"pgm": owt.get_config("pgm_8_8"), "mdlm": owt.get_config("mdlm")}
    out = {}
    for algo in ("pgm", "mdlm"):
        c = demo.get_config()
        c.algo = algo
        c.model.vocab_size, c.model.mask_index = 4097, 4096  # the demo's tokenizer + MASK
        out[algo] = c
    return out


def measure(config, args: argparse.Namespace) -> dict:
    """Times `args.steps` train steps after `args.warmup`; returns the row of the table."""
    for key in ("remat", "logits_chunk", "scan_layers", "dtype", "attention"):
        if getattr(args, key) is not None:
            config.model[key] = getattr(args, key)
    devices = jax.devices()
    mesh = sharding.make_mesh({"data": -1, "fsdp": args.fsdp})
    model_cfg = config_lib.model_config(config)
    tx = optim.make_optimizer(config.optim, 1000)
    abstract = nnx.eval_shape(lambda: build_model(model_cfg, 0))
    shardings = state_shardings(abstract, tx, mesh)
    step = jit_train_step(
        make_train_step(nnx.graphdef(abstract), LOSSES[config.algo], tx, 0.9999,
                        args.grad_accum, sharding.data_parallel_size(mesh)), shardings, mesh)
    state = jax.jit(lambda: init_state(build_model(model_cfg, 0), tx, 0),
                    out_shardings=shardings)()
    batch_size = args.batch_per_device * len(devices)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model_cfg.mask_index, (batch_size, model_cfg.length), np.int32)
    batch = sharding.global_batch(mesh, {"tokens": tokens, "valid": np.ones_like(tokens)})
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    tokens_per_s = batch_size * model_cfg.length / seconds
    per_token = flops_per_token(model_cfg)
    peak = peak_flops(devices[0])
    achieved = per_token * tokens_per_s / len(devices)
    return {
        "algo": config.algo, "params": sum(x.size for x in jax.tree.leaves(state.params)),
        "batch": batch_size, "length": model_cfg.length, "dtype": model_cfg.dtype,
        "attention": attention.resolve(model_cfg.attention, devices[0].platform),
        "step_ms": 1e3 * seconds, "tokens_per_s": tokens_per_s,
        "gflop_per_token": per_token / 1e9, "tflops_per_device": achieved / 1e12,
        "mfu": achieved / peak if peak and model_cfg.dtype == "bfloat16" else None,
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    p.add_argument("--algos", default="pgm,mdlm", help="comma-separated: pgm, mdlm")
    p.add_argument("--batch_per_device", type=int, default=None,
                   help="sequences per device (default: paper 32 as the reference, cpu 8)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (paper 20, cpu 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compile included)")
    p.add_argument("--fsdp", type=int, default=1, help="mesh.fsdp (data = the rest)")
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--remat", default=None, help="config.model.remat override")
    p.add_argument("--logits_chunk", type=int, default=None)
    p.add_argument("--scan_layers", type=lambda s: s.lower() == "true", default=None)
    p.add_argument("--dtype", default=None, help="config.model.dtype override")
    p.add_argument("--attention", default=None, choices=ATTENTION_KERNELS,
                   help="config.model.attention override (default: the preset's, auto)")
    args = p.parse_args()
    paper = args.preset == "paper"
    args.batch_per_device = args.batch_per_device or (32 if paper else 8)
    args.steps = args.steps or (20 if paper else 5)
    configs = preset_configs(args.preset)
    rows = [measure(configs[a], args) for a in args.algos.split(",")]
    device = jax.devices()[0]
    print(f"{len(jax.devices())} x {device.device_kind} ({device.platform}), preset "
          f"{args.preset}, jax {jax.__version__}")
    header = ("algo", "params", "batch x L", "dtype", "attention", "step ms", "tokens/s",
              "GFLOP/tok", "TFLOP/s/dev", "MFU")
    print(" | ".join(header))
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(" | ".join((r["algo"], f"{r['params'] / 1e6:.1f}M", f"{r['batch']} x {r['length']}",
                          r["dtype"], r["attention"], f"{r['step_ms']:.1f}",
                          f"{r['tokens_per_s']:,.0f}", f"{r['gflop_per_token']:.3f}",
                          f"{r['tflops_per_device']:.2f}", mfu)))
    print(json.dumps({"benchmark": "train_speed", "preset": args.preset,
                      "device": device.device_kind, "devices": len(jax.devices()),
                      "rows": rows}))


if __name__ == "__main__":
    main()
