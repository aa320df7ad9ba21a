"""Multi-process start-up: runtime detection, per-process logs, and two local processes
(jax.distributed on localhost, 4 CPU devices each) that train, checkpoint and resume."""

import json
import logging as py_logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from absl import logging

from pgm_jax import distributed
from pgm_jax.cli import UsageError

REPO = Path(__file__).resolve().parents[1]


def test_detect():
    none = distributed.Cluster()
    assert distributed.detect(none, env={}, tpu_vm=False) is None
    assert distributed.detect(none, env={}, tpu_vm=True) == "tpu"
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}
    assert distributed.detect(none, env=slurm, tpu_vm=False) == "slurm"
    assert distributed.detect(none, env={**slurm, "SLURM_STEP_NUM_TASKS": "1"},
                              tpu_vm=False) is None  # a one-task step needs no coordinator
    explicit = distributed.Cluster("localhost:1234", 2, 1)
    assert distributed.detect(explicit, env=slurm, tpu_vm=True) == "explicit"
    with pytest.raises(UsageError, match="go together"):
        distributed.detect(distributed.Cluster("localhost:1234"), env={}, tpu_vm=False)
    with pytest.raises(UsageError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
        distributed.detect(distributed.Cluster("h:1", 2, 2), env={}, tpu_vm=False)


def test_log_file_holds_the_startup_and_moves_with_the_run(tmp_path):
    root = py_logging.getLogger()
    before, verbosity = list(root.handlers), logging.get_verbosity()
    logging.set_verbosity(logging.INFO)  # as cli.run sets it
    try:
        distributed.capture_logs()
        logging.info("before the workdir exists")
        assert not (tmp_path / "a").exists()
        first = distributed.log_to_file(str(tmp_path / "a"))
        logging.info("during run a")
        second = distributed.log_to_file(str(tmp_path / "b"))
        logging.info("during run b")
    finally:
        logging.set_verbosity(verbosity)
        for h in root.handlers:
            if h not in before:
                root.removeHandler(h)
                h.close()
    assert first.endswith("a/logs/process_0.log")
    text_a, text_b = Path(first).read_text(), Path(second).read_text()
    assert "before the workdir exists" in text_a and "during run a" in text_a
    assert "during run b" not in text_a and "during run b" in text_b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(workdir: Path, num_steps: int) -> list[subprocess.CompletedProcess]:
    port = free_port()
    flags = [
        "--config=configs/demo.py", f"--workdir={workdir}", "--config.model.length=32",
        "--config.model.hidden_size=32", "--config.model.cond_dim=16",
        "--config.model.n_heads=2", "--config.model.encoder_blocks=1",
        "--config.model.decoder_blocks=1", "--config.data.vocab_size=512",
        "--config.train.batch_size=8", "--config.train.eval_batch_size=8",
        "--config.train.eval_batches=1", "--config.train.log_every=1",
        f"--config.train.num_steps={num_steps}", "--config.train.checkpoint_every=2",
        # 2 processes x 4 devices: data parallel across the processes (a hybrid mesh),
        # parameters sharded over each process's 4 devices.
        "--config.mesh.dcn_data=-1", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
        f"--coordinator_address=localhost:{port}", "--num_processes=2",
    ]
    # No shared compilation cache: a process that finds the other's programs there runs
    # ahead, and CPU (gloo) collectives give a late partner only 30 s to join.
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_ENABLE_COMPILATION_CACHE="false")
    procs = [subprocess.Popen([sys.executable, "-m", "pgm_jax.main", *flags, f"--process_id={i}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    return results


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path):
    workdir = tmp_path / "run"
    run_two_processes(workdir, 2)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    resumed = run_two_processes(workdir, 4)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # written once (process 0), resumed after step 2
    assert "resumed from" in resumed[1].stderr
    for i in range(2):
        log = (workdir / "logs" / f"process_{i}.log").read_text()
        assert f"process {i} of 2, 4 local / 8 global devices" in log
    assert "'data': 2, 'fsdp': 4" in (workdir / "logs" / "process_0.log").read_text()
