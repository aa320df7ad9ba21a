"""Train (or resume) a PGM / MDLM model.

  python -m pgm_jax.main --config=configs/demo.py --workdir=runs/demo [--config.x.y=...]

Starting on a workdir that holds a checkpoint resumes it exactly (params, optimizer, EMA,
step, RNG and data position). SIGTERM saves a checkpoint and exits with status 0; bad flags,
config values, data or checkpoints exit with status 2 and one line on stderr, leaving the
workdir as it was; a NaN / Inf with config.train.nonfinite='stop' exits with status 1.
With --config.distill.teacher=RUN (configs/distill.py) the run distils RUN with SDTT instead.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from pgm_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step from abstract shapes, "
                             "print its per-device memory analysis and exit (pgm_jax/dryrun.py).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "With --dry_run: compile for this TPU slice "
                                "instead of the attached devices, e.g. v5e-16 or v5p:4x4x4.")
_TOPOLOGY_SLICES = flags.DEFINE_integer("topology_slices", 1, "With --topology: slices "
                                        "(multislice over DCN; see config.mesh.dcn_*).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process runs: "
                                   "host:port of process 0 (SLURM and TPU VMs are detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address.")
_DIST_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300, "Seconds to wait for every "
                                     "process to join a multi-process run.")


def main(argv: list[str]) -> None:
    cli.no_positional_args(argv)
    config = cli.loaded_config(_CONFIG)
    cli.require(config is not None, "--config is required (e.g. configs/demo.py)")
    cli.writable_dir("workdir", _WORKDIR.value)
    if config.data.benchmark:  # the input pipeline only, no model
        from pgm_jax.data.benchmark import run_benchmark

        print(json.dumps(run_benchmark(config, _WORKDIR.value)))
        return
    cli.require(_TOPOLOGY.value is None or _DRY_RUN.value, "--topology needs --dry_run")
    from pgm_jax import distributed

    distributed.capture_logs()
    if _DRY_RUN.value:
        from pgm_jax import dryrun

        devices = (dryrun.topology_devices(_TOPOLOGY.value, _TOPOLOGY_SLICES.value)
                   if _TOPOLOGY.value else None)
        try:
            print(dryrun.format_report(dryrun.dry_run(config, devices)))
        except dryrun.DoesNotFit as e:  # the answer, not a crash: one line, no traceback
            print(e)
            raise SystemExit(1) from None
        return
    distributed.initialize(distributed.Cluster(_COORDINATOR.value, _NUM_PROCESSES.value,
                                               _PROCESS_ID.value, _DIST_TIMEOUT.value))
    if config.distill.teacher:  # SDTT: distil a trained run (pgm_jax/train/distill.py)
        from pgm_jax.train.distill import train
    else:
        from pgm_jax.train.loop import train

    result = train(config, _WORKDIR.value)
    if result.get("preempted"):
        print(f"preempted: checkpoint of step {result['step']} saved; run the same command "
              "to resume")
        return
    ev = result.get("eval", {})
    shown = (f"val ppl {ev['ppl']:.2f}" if "ppl" in ev else  # images: nats per token
             f"val nll {ev.get('nll', float('nan')):.4f}")
    print(f"done: step {result['step']}, {shown}")


if __name__ == "__main__":
    cli.run(main)
