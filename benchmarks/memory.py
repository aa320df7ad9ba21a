"""Per-chip peak memory of the paper presets' train steps on TPU slices, dense vs fused
attention, compiled ahead of time on this CPU machine (needs the libtpu package; nothing is
allocated: `pgm_jax/dryrun.py` compiles the real step from abstract shapes).

  python benchmarks/memory.py                       # every preset, v5p-32 and v5e-32
  python benchmarks/memory.py --presets=owt:pgm_8_8 --slices=v5p-32 --attention=splash
  python benchmarks/memory.py --fit                 # + the v5e setting that fits (fused)

Each row is the paper's global batch (text 512, ImageNet-VQ 256) on the slice; v5p keeps the
configs' mesh, v5e shards parameters and optimizer state over every chip (mesh.data=1,
mesh.fsdp=-1; 16 GiB of HBM per chip). `--fit` then tries, on each v5e slice with the fused
kernel, remat none -> dots_no_batch -> full, then twice the chips, and reports the first
setting that fits. Results are appended to `--out` as JSON lines (an interrupted run resumes);
the script prints a markdown table and one JSON line with every row. Big compiles take
minutes each on a small CPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

PRESETS = ("owt:pgm_8_8", "owt:pgm_6_6_dim1024", "owt:mdlm", "lm1b:pgm_6_6", "lm1b:mdlm",
           "imagenet_vq:pgm_14_10", "imagenet_vq:maskgit_l")
SLICES = ("v5p-32", "v5e-32")
REMAT_LADDER = ("none", "dots_no_batch", "full")
GIB = 1 << 30


def preset_config(name: str, slice_name: str, attention: str, remat: str = "none"):
    module, preset = name.split(":")
    c = importlib.import_module(f"configs.{module}").get_config(preset)
    c.model.attention, c.model.remat = attention, remat
    if slice_name.startswith("v5e"):  # 16 GiB chips: parameters and state over every chip
        c.mesh.data, c.mesh.fsdp = 1, -1
    return c


def measure(name: str, slice_name: str, attention: str, remat: str = "none") -> dict:
    from pgm_jax import dryrun

    devices = dryrun.topology_devices(slice_name)
    c = preset_config(name, slice_name, attention, remat)
    chips = len(devices)  # compile-only topologies list one device per chip
    row = dict(preset=name, slice=slice_name, attention=attention, remat=remat,
               global_batch=c.train.batch_size, per_chip=c.train.batch_size / chips)
    start = time.time()
    try:
        r = dryrun.dry_run(c, devices)
        row.update(peak_gib=r.peak / GIB, temp_gib=r.temporaries / GIB,
                   capacity_gib=r.capacity / GIB, fits=r.peak <= r.capacity)
    except dryrun.DoesNotFit as e:
        row.update(peak_gib=None, fits=False, oom=str(e))
    row["compile_s"] = round(time.time() - start, 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--slices", default=",".join(SLICES))
    p.add_argument("--attention", default="dense,splash")
    p.add_argument("--fit", action="store_true", help="search the v5e setting that fits")
    p.add_argument("--out", default="benchmarks/memory_rows.jsonl")
    a = p.parse_args()
    done = []
    if os.path.exists(a.out):
        done = [json.loads(line) for line in open(a.out) if line.strip()]
    key = lambda r: (r["preset"], r["slice"], r["attention"], r["remat"])
    have = {key(r) for r in done}

    def run(*args) -> dict:
        if args in have:  # (preset, slice, attention, remat)
            return next(r for r in done if key(r) == args)
        row = measure(*args)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)
        done.append(row)
        have.add(key(row))
        return row

    for name in a.presets.split(","):
        for s in a.slices.split(","):
            for attn in a.attention.split(","):
                run(name, s, attn, "none")
        if a.fit:
            for s in [s for s in a.slices.split(",") if s.startswith("v5e")]:
                n = int(s.split("-")[1])
                for slice_name in (s, f"v5e-{2 * n}"):
                    if any(run(name, slice_name, "splash", remat)["fits"]
                           for remat in REMAT_LADDER):
                        break
    print(table(done))
    print(json.dumps({"memory": done}))


def table(rows: list[dict]) -> str:
    lines = ["| preset | slice | batch / chip | attention | remat | peak GiB / chip | fits |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else \
            r.get("oom", "").split(": ", 2)[-1]
        lines.append(f"| {r['preset']} | {r['slice']} | {r['per_chip']:g} | {r['attention']} "
                     f"| {r['remat']} | {peak} | {'yes' if r['fits'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
