"""Launch scripts: shellcheck-clean, --help, and --dry-run printing the commands (and running
none of gcloud / xpk / srun, which stand-ins on PATH would record)."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu.sh", "xpk.sh", "gpu_local.sh", "slurm.sbatch"]
TRAIN = ["--config=configs/owt.py:pgm_8_8", "--workdir=/mnt/runs/a b"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """PATH with stand-ins for the cluster tools that record any call."""
    stubs = tmp_path_factory.mktemp("stubs")
    calls = stubs / "calls.txt"
    for tool in ("gcloud", "xpk", "srun", "sbatch"):
        path = stubs / tool
        path.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 1\n')
        path.chmod(0o755)
    yield dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}"), calls
    assert not calls.exists(), f"a dry run called a real tool: {calls.read_text()}"


def launch(env, script, *args):
    return subprocess.run(["bash", str(LAUNCH / script), *args], env=env[0], cwd="/",
                          capture_output=True, text=True, timeout=60)


def commands(out: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def test_shellcheck_is_clean():
    shellcheck = REPO / ".venv" / "bin" / "shellcheck"
    exe = str(shellcheck) if shellcheck.exists() else "shellcheck"
    files = [str(LAUNCH / s) for s in SCRIPTS] + [str(LAUNCH / "common.sh")]
    r = subprocess.run([exe, "-x", "--shell=bash", *files], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(env, script):
    r = launch(env, script, "--help")
    assert r.returncode == 0 and r.stdout.startswith("Usage:"), r.stderr
    assert "--dry-run" in r.stdout


def test_tpu_dry_run(env):
    r = launch(env, "tpu.sh", "all", "--name", "pgm", "--zone", "us-central2-b", "--type",
               "v4-32", "--spot", "--dry-run", "--", *TRAIN)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert cmds[0][:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert "--spot" in cmds[0] and ["--accelerator-type", "v4-32"] == cmds[0][10:12]
    scp, install, train = cmds[3], cmds[4], cmds[5]
    assert scp[4] == "scp" and "--worker=all" in scp
    assert "requirements.txt" in install[-1] and "jax[tpu]==" in install[-1]
    assert "--worker=all" in train
    remote = shlex.split(train[-1].split(" 2>&1")[0])  # the command each worker runs
    assert remote[3:] == [".venv/bin/python", "-m", "pgm_jax.main", *TRAIN]
    assert "logs/worker-$(hostname).log" in train[-1]  # one log per worker
    assert cmds[-1][:5] == ["gcloud", "compute", "tpus", "queued-resources", "delete"]


def test_xpk_dry_run_adds_the_slices_to_the_mesh(env):
    r = launch(env, "xpk.sh", "create", "--cluster", "c", "--workload", "w", "--slices", "2",
               "--dry-run", "--", *TRAIN)
    assert r.returncode == 0, r.stderr
    (cmd,) = commands(r.stdout)
    assert cmd[:3] == ["xpk", "workload", "create"] and ["--num-slices", "2"] == cmd[9:11]
    inner = cmd[cmd.index("--command") + 1]
    assert shlex.split(inner.split("&& ")[1])[3:] == [*TRAIN, "--config.mesh.dcn_data=2"]


def test_slurm_dry_run(env):
    r = launch(env, "slurm.sbatch", "--dry-run", *TRAIN)
    assert r.returncode == 0, r.stderr
    srun = commands(r.stdout)[-1]
    assert srun[0] == "srun" and "--output=logs/slurm-%j-%t.log" in srun
    assert srun[-len(TRAIN) - 2:] == ["-m", "pgm_jax.main", *TRAIN]


def test_gpu_local_dry_run(env):
    r = launch(env, "gpu_local.sh", "--processes", "2", "--dry-run", "--", *TRAIN)
    assert r.returncode == 0, r.stderr
    procs = [c for c in commands(r.stdout) if c[0] == "env"]
    assert [c[1] for c in procs] == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
    for i, c in enumerate(procs):
        assert c[4:] == ["pgm_jax.main", "--coordinator_address=localhost:12355",
                         "--num_processes=2", f"--process_id={i}", *TRAIN]


@pytest.mark.parametrize("script,args,message", [
    ("tpu.sh", ["train", "--zone", "z", "--dry-run"], "--name is required"),
    ("tpu.sh", ["train", "--name", "n", "--zone", "z", "--dry-run"], "needs the training flags"),
    ("tpu.sh", ["bogus"], "unknown command bogus"),
    ("xpk.sh", ["create", "--cluster"], "--cluster needs a value"),
    ("gpu_local.sh", ["--processes", "0", "--", "--config=x"], "--processes must be"),
])
def test_bad_arguments_exit_2(env, script, args, message):
    r = launch(env, script, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
