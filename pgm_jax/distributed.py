"""Multi-host start-up: one `jax.distributed` initialisation, and a log file per process.

A run spans several processes on a TPU pod slice (one per TPU VM worker), a SLURM job (one
per GPU) or any set of hosts given an explicit coordinator. `initialize` must run before any
other JAX call; a single-process run (one machine, all its devices) needs none of it and
`initialize` does nothing there. Afterwards every process runs the same program: the mesh
spans all processes' devices, each process feeds its rows of the global batch, orbax writes
checkpoints collectively, and only process 0 writes the shared files (config, metrics,
samples). Each process logs to `WORKDIR/logs/process_<i>.log`.
"""

from __future__ import annotations

import dataclasses
import glob
import logging as py_logging
import os
from collections.abc import Mapping
from logging.handlers import MemoryHandler

import jax
from absl import logging

from pgm_jax.cli import UsageError

LOG_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Explicit multi-process settings (all None: detect from the environment).

    coordinator_address: 'host:port' of process 0; num_processes, process_id: the job's size
    and this process's rank; timeout_s: how long to wait for every process to join.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300


def detect(cluster: Cluster, env: Mapping[str, str] = os.environ,
           tpu_vm: bool | None = None) -> str | None:
    """Which multi-process runtime this process belongs to: 'explicit', 'slurm', 'tpu' or
    None (a single process: nothing to initialise).

    SLURM counts when the job step has more than one task (`srun`); a TPU VM (or a GKE TPU
    pod, as xpk creates) is recognised by its accelerator device files, and JAX then reads
    the slice's workers from the TPU metadata.
    """
    explicit = (cluster.coordinator_address, cluster.num_processes, cluster.process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise UsageError("--coordinator_address, --num_processes and --process_id go "
                             "together: give all three (or none, to detect SLURM / TPU)")
        if not 0 <= cluster.process_id < cluster.num_processes:
            raise UsageError(f"--process_id={cluster.process_id} must be in [0, "
                             f"--num_processes={cluster.num_processes})")
        return "explicit"
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if "SLURM_JOB_ID" in env and tasks and int(tasks) > 1:
        return "slurm"
    if tpu_vm is None:
        tpu_vm = bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
    return "tpu" if tpu_vm else None


def initialize(cluster: Cluster = Cluster()) -> str | None:
    """Joins the multi-process job `detect` finds (call first, before any JAX computation).

    Returns the runtime kind, or None for a single process. Processes that do not all join
    within `cluster.timeout_s` fail with JAX's error instead of hanging.
    """
    kind = detect(cluster)
    if kind is None:
        return None
    kwargs = {"initialization_timeout": int(cluster.timeout_s)}
    if kind == "explicit":
        kwargs.update(coordinator_address=cluster.coordinator_address,
                      num_processes=cluster.num_processes, process_id=cluster.process_id)
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed (%s): process %d of %d, %d local / %d global devices", kind,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return kind


def capture_logs() -> None:
    """Starts keeping this process's log lines in memory until `log_to_file` writes them, so
    the file holds the start-up too while a start that fails leaves the workdir untouched."""
    if not any(isinstance(h, _StartupBuffer) for h in py_logging.getLogger().handlers):
        py_logging.getLogger().addHandler(_StartupBuffer())


def log_to_file(workdir: str) -> str:
    """From now on copies this process's log lines (those shown on stderr, and those kept
    since `capture_logs`) to `workdir/logs/process_<i>.log`; returns the path."""
    path = os.path.join(workdir, LOG_DIR, f"process_{jax.process_index()}.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = _ProcessLog(path)
    handler.setFormatter(logging.PythonFormatter())
    for f in logging.get_absl_handler().filters:  # the same library-chatter filter as stderr
        handler.addFilter(f)
    root = py_logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, (_StartupBuffer, _ProcessLog))]:
        if isinstance(old, _StartupBuffer):
            old.setTarget(handler)
            old.flush()
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    return path


class _StartupBuffer(MemoryHandler):
    """Holds records until a target is set (never flushes on its own)."""

    def __init__(self):
        super().__init__(capacity=1 << 30, flushLevel=py_logging.CRITICAL + 1)


class _ProcessLog(py_logging.FileHandler):
    """The per-process log file (one at a time: a later run in the same process replaces it)."""
