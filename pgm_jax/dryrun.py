"""Does a config fit? Compile its train step from abstract shapes and report the memory.

  python -m pgm_jax.main --config=configs/owt.py:pgm_8_8 --workdir=runs/x --dry_run
  python -m pgm_jax.main --config=configs/owt.py:pgm_8_8 --workdir=runs/x --dry_run \\
      --topology=v5e-16 --config.mesh.data=1 --config.mesh.fsdp=-1

Nothing is allocated and no data is read: the train state and the batch are
`jax.ShapeDtypeStruct`s carrying the run's shardings, the vocabulary comes from the config,
and `jit(train_step).lower(...).compile()` gives XLA's per-device memory analysis of the real
step (optimizer, EMA, remat, gradient accumulation and chunked logits included). With
`--topology` the step is compiled ahead of time for a TPU slice that is not attached (needs
the `libtpu` package; this CPU-only machine can check a pod configuration before renting it).
When the compiler itself refuses the program for lack of memory, the dry run prints one line,
"does not fit: <the compiler's figures>", and exits with status 1.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from pgm_jax import checkpoint, sharding
from pgm_jax import config as config_lib
from pgm_jax.models import attention, build_model
from pgm_jax.objectives.losses import LOSSES
from pgm_jax.train import setup
from pgm_jax.train.step import init_state, jit_train_step, make_train_step

GIB = 1 << 30
# High-bandwidth memory per device, by jax `device_kind` (for devices that are not attached).
HBM_BYTES = {"TPU v4": 32 * GIB, "TPU v5 lite": 16 * GIB, "TPU v5": 95 * GIB,
             "TPU v6 lite": 32 * GIB}
# TPU generations: devices per chip in the slice name (v4 / v5p count TensorCores, 2 per
# chip) and the chip grid of the usual slice shapes.
_GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
            256: "16x16"}
_GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
            256: "4x8x8", 512: "8x8x8"}
TPU_GENERATIONS = {"v4": (2, _GRID_3D), "v5p": (2, _GRID_3D), "v5e": (1, _GRID_2D),
                   "v6e": (1, _GRID_2D)}


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-device bytes of one compiled train step (XLA's memory analysis)."""

    devices: int
    device_kind: str
    arguments: int  # train state + batch shards
    outputs: int
    aliased: int  # outputs written into donated arguments (the new train state)
    temporaries: int  # activations, gradients, optimizer temporaries
    code: int
    capacity: int | None  # device memory, when known

    @property
    def peak(self) -> int:
        """Live bytes at the step's peak: arguments + new outputs + temporaries."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def topology_devices(name: str, num_slices: int = 1) -> list:
    """Compile-only devices of a TPU slice: 'v5e-16' style names or 'v5e:4x4' shapes."""
    from jax.experimental import topologies

    # No TPU here: do not let libtpu ask a metadata server for the (absent) slice.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # Compile-only: several processes (parallel tests, dry runs) may load libtpu at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(tpu_topology_name(name), "tpu",
                                            num_slices=num_slices)
    except RuntimeError as e:
        raise config_lib.ConfigError(
            f"--topology={name}: cannot build it ({str(e).splitlines()[0]}); compiling for TPU "
            "needs the libtpu package (pip install libtpu, the version jax[tpu] pins)") from None
    return list(desc.devices)


def tpu_topology_name(name: str) -> str:
    """'v5e-16' -> 'v5e:4x4', 'v4-32' -> 'v4:2x2x4'; 'gen:AxB[xC]' passes through."""
    if ":" in name:
        return name
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
    per_chip, grids = TPU_GENERATIONS.get(m.group(1), (0, {})) if m else (0, {})
    chips = int(m.group(2)) // per_chip if m else 0
    if chips not in grids:
        known = ", ".join(f"{g}-{n * p}" for g, (p, gr) in TPU_GENERATIONS.items()
                          for n in list(gr)[1:3])
        raise config_lib.ConfigError(
            f"--topology={name}: not a known slice (e.g. {known}, or gen:shape like v5e:4x4)")
    return f"{m.group(1)}:{grids[chips]}"


def dry_run(config: ConfigDict, devices: list | None = None) -> MemoryReport:
    """Compiles the config's train step for `devices` (default: the attached ones)."""
    config_lib.validate(config)
    devices = list(devices) if devices is not None else jax.devices()
    mesh = setup.build_mesh(config, devices)
    vocab, mask = config.model.vocab_size, config.model.mask_index
    if config_lib.is_image(config):  # from model.codebook_size
        model_cfg = config_lib.model_config(config)
    else:
        if vocab == -1:  # a sentencepiece tokenizer: data.vocab_size pieces + appended MASK
            vocab, mask = config.data.vocab_size + 1, config.data.vocab_size
        model_cfg = config_lib.model_config(config, vocab_size=vocab, mask_index=mask)
    model_cfg = attention.on_mesh(model_cfg, mesh)  # the target's kernel, not this host's
    graphdef, shardings, tx = setup.abstract_training(config, model_cfg, mesh)
    seed = config.seed
    state = checkpoint.abstract(
        jax.eval_shape(lambda: init_state(build_model(model_cfg, seed), tx, seed)), shardings)
    b, shapes = config.train.batch_size, {"tokens": (config.train.batch_size, model_cfg.length)}
    shapes.update({"label": (b,)} if config_lib.is_image(config) else {"valid": shapes["tokens"]})
    batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=sharding.batch_sharding(mesh, len(v)))
             for k, v in shapes.items()}
    step = make_train_step(graphdef, LOSSES[config.algo], tx, config.optim.ema_decay,
                           config.train.grad_accum, sharding.data_parallel_size(mesh))
    try:
        compiled = jit_train_step(step, shardings, mesh).lower(state, batch).compile()
    except jax.errors.JaxRuntimeError as e:
        figures = oom_figures(str(e))
        if figures is None:
            raise
        raise DoesNotFit(f"does not fit: {len(devices)} x {devices[0].device_kind}: "
                         f"{figures}") from None
    mem = compiled.memory_analysis()
    kind = devices[0].device_kind
    return MemoryReport(
        devices=len(devices), device_kind=kind,
        arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
        aliased=mem.alias_size_in_bytes, temporaries=mem.temp_size_in_bytes,
        code=mem.generated_code_size_in_bytes, capacity=_capacity(devices[0]))


class DoesNotFit(Exception):
    """The compiler refused the step for lack of device memory (message: one line)."""


def oom_figures(message: str) -> str | None:
    """The compiler's out-of-memory sentence from a compile error, or None if it is another
    error. XLA:TPU says e.g. "Ran out of memory in memory space hbm. Used 21.16G of 15.75G
    hbm. Exceeded hbm capacity by 5.41G." or "... temporaries (21.16G) exceeds available HBM
    (15.75G)"; the usage report that follows is dropped."""
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
        return None
    start = message.find("Ran out of memory")
    text = message[start:] if start >= 0 else message.split("RESOURCE_EXHAUSTED", 1)[1]
    text = text.split("Memory usage report", 1)[0]
    return " ".join(text.split()).strip(" :.") + "."


def _capacity(device) -> int | None:
    try:
        stats = device.memory_stats() or {}
    except (RuntimeError, NotImplementedError):
        stats = {}
    return stats.get("bytes_limit") or HBM_BYTES.get(device.device_kind)


def format_report(report: MemoryReport) -> str:
    """The memory analysis as a short table (GiB per device)."""
    rows = [("arguments (state + batch)", report.arguments), ("outputs", report.outputs),
            ("  of which aliased (donated)", report.aliased),
            ("temporaries", report.temporaries), ("generated code", report.code),
            ("peak estimate", report.peak)]
    lines = [f"train step on {report.devices} x {report.device_kind}, per device:"]
    lines += [f"  {name:<30} {value / GIB:9.3f} GiB" for name, value in rows]
    if report.capacity:
        verdict = "fits" if report.peak <= report.capacity else "DOES NOT FIT"
        lines.append(f"  {'device memory':<30} {report.capacity / GIB:9.3f} GiB -> {verdict}")
    return "\n".join(lines)
