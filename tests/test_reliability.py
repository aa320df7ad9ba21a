"""Reliability: SIGTERM and SIGKILL in real runs, restore onto other meshes, damaged
checkpoints and retention, non-finite steps."""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from pgm_jax import checkpoint, sharding
from pgm_jax.config import flatten
from pgm_jax.metrics import NonFiniteError
from pgm_jax.objectives.text import pgm_loss
from pgm_jax.objectives.validation import evaluate, jit_eval_step, make_eval_step
from pgm_jax.restore import CHECKPOINT_DIR, restore_params
from pgm_jax.sampling import generate
from pgm_jax.train import loop, setup
from tests.helpers import tiny_config
from tests.test_train import REPO, tiny

N = 24  # steps of the uninterrupted reference run
ENV = dict(os.environ, PYTHONPATH=REPO)  # conftest's 8 CPU devices and compilation cache


def cli_args(config) -> list[str]:
    """`--config.key=value` for every key where `config` differs from configs/demo.py."""
    base, new = flatten(demo.get_config()), flatten(config)
    return [f"--config.{k}={v}" for k, v in new.items() if base[k] != v]


def start_main(workdir: str, config) -> subprocess.Popen:
    """`python -m pgm_jax.main` on `config`; stdout / stderr go to files in the workdir's parent."""
    logs = os.path.dirname(workdir)
    with (open(os.path.join(logs, "stdout.txt"), "w") as stdout,
          open(os.path.join(logs, "stderr.txt"), "w") as stderr):  # the child keeps its copies
        return subprocess.Popen(
            [sys.executable, "-m", "pgm_jax.main", "--config=configs/demo.py",
             f"--workdir={workdir}", *cli_args(config)],
            cwd=REPO, env=ENV, text=True, stdout=stdout, stderr=stderr,
        )


def output(workdir: str, name: str) -> str:
    with open(os.path.join(os.path.dirname(workdir), f"{name}.txt")) as f:
        return f.read()


def train_rows(workdir: str) -> list[tuple[int, float]]:
    """(step, loss) of every train row of metrics.jsonl, in file order (repeats included)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


def wait_until(proc: subprocess.Popen, workdir: str, condition, timeout: float = 600) -> None:
    """Polls `condition()` while the run is alive; fails if it ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"run ended early:\n{output(workdir, 'stderr')[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def logged_step(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    return max((s for s, _ in train_rows(workdir)), default=0) if os.path.exists(path) else 0


def new_workdir(tmp_path, reference: str) -> str:
    """An empty run directory holding only the reference run's tokenizer (saves training it)."""
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    shutil.copy(os.path.join(reference, "tokenizer.model"), workdir)
    return workdir


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted N-step run: (workdir, {step: loss})."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    loop.train(tiny(num_steps=N), workdir)
    return workdir, dict(train_rows(workdir))


def assert_same_losses(rows: list[tuple[int, float]], reference: dict[int, float]) -> None:
    """Every logged loss (repeated steps of a resumed run included) equals the reference."""
    assert {s for s, _ in rows} == set(range(1, N + 1))
    np.testing.assert_allclose([v for _, v in rows], [reference[s] for s, _ in rows], rtol=1e-6)


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_resumes_exactly(tmp_path, straight):
    reference_dir, reference = straight
    workdir = new_workdir(tmp_path, reference_dir)
    proc = start_main(workdir, tiny(num_steps=100_000))  # would run for hours
    wait_until(proc, workdir, lambda: logged_step(workdir) >= 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, output(workdir, "stderr")[-3000:]
    assert "preempted: checkpoint of step" in output(workdir, "stdout")
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), read_only=True)
    saved = ckpt.latest_step()
    assert saved is not None and 3 <= saved < N and ckpt.verified(saved)
    assert max(s for s, _ in train_rows(workdir)) == saved  # metrics flushed up to the save

    resumed = subprocess.run(
        [sys.executable, "-m", "pgm_jax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", *cli_args(tiny(num_steps=N))],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {saved}" in resumed.stderr
    assert_same_losses(train_rows(workdir), reference)


@pytest.mark.slow
def test_sigkill_then_restart_reproduces_the_uninterrupted_losses(tmp_path, straight):
    reference_dir, reference = straight
    workdir = new_workdir(tmp_path, reference_dir)
    # The killed run is long so that it cannot finish before the kill; the restart stops at N.
    # With the constant learning rate, num_steps changes nothing else.
    proc = start_main(workdir, tiny(num_steps=100_000, checkpoint_every=4))
    first = os.path.join(workdir, CHECKPOINT_DIR, "4")
    wait_until(proc, workdir, lambda: os.path.isdir(first) and logged_step(workdir) >= 5)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = logged_step(workdir)
    latest = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                     read_only=True).latest_step()
    assert latest is not None and latest < killed_at

    proc = start_main(workdir, tiny(num_steps=N, checkpoint_every=4))
    assert proc.wait(timeout=600) == 0, output(workdir, "stderr")[-3000:]
    assert f"at step {latest}" in output(workdir, "stderr")
    rows = train_rows(workdir)
    assert len(rows) == N + killed_at - latest  # steps after the checkpoint ran twice
    assert_same_losses(rows, reference)


def test_checkpoint_from_2x4_mesh_restores_on_8x1_1x1_and_one_device(tmp_path):
    config = tiny()
    config.mesh.data, config.mesh.fsdp = 2, 4
    workdir = str(tmp_path)
    run = setup.setup(config, workdir)
    assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(run.shardings.params))
    # Fresh weights with noise added: the zero-initialised output layers would hide errors.
    rng = np.random.default_rng(0)
    saved = setup.initial_state(run)
    live = jax.tree.map(
        lambda x, sh: jax.device_put(
            np.asarray(x) + 0.3 * rng.standard_normal(x.shape).astype(np.float32), sh),
        saved.params, run.shardings.params)
    saved = saved.replace(params=live, ema=live)
    writer = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR))
    writer.save(2, params=saved.params, ema=saved.ema,
                opt={"step": saved.step, "opt_state": saved.opt_state, "key": saved.key},
                data={"position": 7})
    writer.close()
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), read_only=True)
    expected = jax.device_get(saved)
    one_device = jax.devices()[:1]
    for sizes, devices in (((8, 1), None), ((1, 1), one_device)):
        mesh = sharding.make_mesh({"data": sizes[0], "fsdp": sizes[1], "tensor": 1}, devices)
        graphdef, shardings, tx = setup.abstract_training(config, run.model_cfg, mesh)
        other = setup.Run(config, run.model_cfg, run.data, mesh, graphdef, shardings, tx)
        state, data_state = setup.restore_state(other, ckpt, 2)
        assert data_state == {"position": 7}
        for leaf, sh in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
            assert leaf.sharding == sh
        for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(expected),
                        strict=True):
            np.testing.assert_array_equal(a, b)

    # Sampling and evaluation on one device, through the inference restore path.
    mesh1 = sharding.make_mesh({"data": 1}, one_device)
    graphdef, ema, step = restore_params(workdir, run.model_cfg, mesh1)
    assert step == 2
    assert {d for x in jax.tree.leaves(ema) for d in x.devices()} == set(one_device)
    eval1 = jit_eval_step(make_eval_step(graphdef, pgm_loss),
                          jax.tree.map(lambda x: x.sharding, ema), mesh1)
    eval8 = jit_eval_step(make_eval_step(run.graphdef, pgm_loss), run.shardings.ema, run.mesh)
    nll1 = evaluate(eval1, ema, run.data, mesh1, config, max_batches=2)["nll"]
    nll8 = evaluate(eval8, saved.ema, run.data, run.mesh, config, max_batches=2)["nll"]
    np.testing.assert_allclose(nll1, nll8, rtol=1e-5)
    tokens = np.asarray(generate(graphdef, ema, run.model_cfg, jax.random.key(0), num_samples=2,
                                 steps=8, bos_id=run.data.tokenizer.bos_id))
    assert tokens.shape == (2, 32) and (tokens[:, 0] == run.data.tokenizer.bos_id).all()
    assert (tokens != run.model_cfg.mask_index).all()


def truncate_largest(step_dir: str) -> str:
    """Halves the largest array file of a checkpoint step; returns its path."""
    files = glob.glob(os.path.join(step_dir, "params", "**", "d", "*"), recursive=True)
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    return victim


def test_truncated_checkpoint_falls_back_with_a_warning(tmp_path, straight, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    _, reference = straight
    workdir = str(tmp_path)
    loop.train(tiny(num_steps=6, checkpoint_every=2), workdir)
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    truncate_largest(os.path.join(ckpt_dir, "6"))
    result = loop.train(tiny(num_steps=8, checkpoint_every=2), workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("step 6" in w and "damaged" in w and "falling back" in w for w in warnings)
    assert any("resumed from" in r.getMessage() and "at step 4" in r.getMessage()
               for r in caplog.records)
    assert os.path.isdir(os.path.join(ckpt_dir, "6.damaged"))
    assert result["step"] == 8
    rows = train_rows(workdir)
    assert [s for s, _ in rows] == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    np.testing.assert_allclose([v for _, v in rows], [reference[s] for s, _ in rows], rtol=1e-6)


SMALL = {"w": jnp.arange(4096.0).reshape(64, 64), "b": jnp.ones((64,))}


def _save(directory: str, steps, keep: int) -> None:
    ckpt = checkpoint.Checkpointer(directory, keep=keep)
    for s in steps:
        ckpt.save(s, params=SMALL, ema=SMALL, data={"step": s})
    ckpt.close()


def _targets():
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    abstract = checkpoint.abstract(SMALL, jax.tree.map(lambda _: sharding.replicated(mesh), SMALL))
    return {"params": abstract, "data": None}


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_step_is_detected_and_skipped(tmp_path, damage):
    directory = str(tmp_path / "ckpt")
    _save(directory, [1, 2], keep=3)
    ckpt = checkpoint.Checkpointer(directory)
    assert all(ckpt.verified(s) for s in (1, 2))
    if damage == "truncate":
        victim = truncate_largest(ckpt.step_dir(2))
    else:
        victim = glob.glob(os.path.join(ckpt.step_dir(2), "params", "**", "d", "*"),
                           recursive=True)[0]
        os.remove(victim)
    name = os.path.relpath(victim, ckpt.step_dir(2))
    assert name in ckpt.problem(2)
    assert ckpt.latest_step() == 1
    with pytest.raises(checkpoint.CheckpointError, match=f"step 2 .* damaged: {name}"):
        ckpt.restore(2, _targets())
    step, restored = ckpt.restore_newest(lambda _: _targets())
    assert step == 1 and restored["data"] == {"step": 1}
    np.testing.assert_array_equal(restored["params"]["w"], SMALL["w"])
    assert ckpt.all_steps() == [1] and os.path.isdir(ckpt.step_dir(2) + ".damaged")
    ckpt.close()


def test_unverified_step_that_fails_to_restore_is_skipped(tmp_path):
    """Without files.json (e.g. killed right after the commit) the restore itself decides."""
    directory = str(tmp_path / "ckpt")
    _save(directory, [1, 2], keep=3)
    ckpt = checkpoint.Checkpointer(directory)
    os.remove(os.path.join(ckpt.step_dir(2), checkpoint.MANIFEST))
    truncate_largest(ckpt.step_dir(2))
    assert ckpt.problem(2) is None and not ckpt.verified(2)
    step, _ = ckpt.restore_newest(lambda _: _targets())
    assert step == 1
    ckpt.close()


def test_retention_never_deletes_the_newest_intact_checkpoint(tmp_path):
    directory = str(tmp_path / "ckpt")
    _save(directory, [1, 2, 3], keep=3)
    truncate_largest(os.path.join(directory, "2"))
    os.remove(os.path.join(directory, "3", checkpoint.MANIFEST))  # 3: unverified
    ckpt = checkpoint.Checkpointer(directory, keep=1)
    assert ckpt.prune() == []  # 1 is the newest verified step: nothing older to delete
    assert ckpt.all_steps() == [1, 2, 3]
    ckpt.save(4, params=SMALL, ema=SMALL)
    ckpt.close()  # 4 verified: everything older goes
    assert checkpoint.Checkpointer(directory, read_only=True).all_steps() == [4]


def test_retention_keeps_the_newest_verified_steps(tmp_path):
    directory = str(tmp_path / "ckpt")
    _save(directory, [1, 2, 3, 4, 5], keep=2)
    assert checkpoint.Checkpointer(directory, read_only=True).all_steps() == [4, 5]


def exploding(mode: str, num_steps: int = 4):
    """Step 1 moves every weight by ~1e30: from step 2 on, the gradient norm overflows."""
    config = tiny(num_steps=num_steps, nonfinite=mode, checkpoint_every=1, keep_checkpoints=4)
    config.optim.lr, config.optim.warmup_steps = 1e30, 0
    return config


def test_nonfinite_skip_logs_each_bad_step_and_keeps_the_state(tmp_path, caplog):
    workdir = str(tmp_path)
    result = loop.train(exploding("skip"), workdir)
    assert result["step"] == 4
    bad = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert bad == [f"step {s}: non-finite grad_norm=inf: update skipped" for s in (2, 3, 4)]
    run = setup.setup(exploding("skip"), workdir)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), read_only=True)
    after_1, _ = setup.restore_state(run, ckpt, 1)
    after_4, _ = setup.restore_state(run, ckpt, 4)
    assert int(after_4.step) == 4
    for name in ("params", "opt_state", "ema"):  # steps 2-4 changed nothing
        for a, b in zip(jax.tree.leaves(jax.device_get(getattr(after_4, name))),
                        jax.tree.leaves(jax.device_get(getattr(after_1, name))), strict=True):
            np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(after_4.params)))


def test_nonfinite_stop_names_the_step_and_quantity(tmp_path):
    with pytest.raises(NonFiniteError, match=r"^step 2: non-finite grad_norm=inf; the run stops"):
        loop.train(exploding("stop"), str(tmp_path))


def test_cli_reports_a_stopped_run_in_one_line_with_status_1():
    code = ("from pgm_jax import cli\nfrom pgm_jax.metrics import NonFiniteError\n"
            "def main(argv):\n    raise NonFiniteError('step 7: non-finite loss=nan')\n"
            "cli.run(main)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "error: step 7: non-finite loss=nan"
    assert "Traceback" not in out.stderr



def _failing_restore(ckpt: checkpoint.Checkpointer, failing_step: int, error: Exception):
    """Makes orbax's restore of `failing_step` raise `error` (other steps restore normally)."""
    real = ckpt._mgr.restore

    def restore(step, *args, **kwargs):
        if step == failing_step:
            raise error
        return real(step, *args, **kwargs)

    ckpt._mgr.restore = restore


def _tree_listing(directory: str) -> list[tuple[str, int]]:
    return sorted((os.path.relpath(os.path.join(root, f), directory),
                   os.path.getsize(os.path.join(root, f)))
                  for root, _, files in os.walk(directory) for f in files)


@pytest.mark.parametrize("error", [
    OSError(5, "Input/output error"),
    RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB"),
    ValueError("UNAVAILABLE: Error reading local file: connection reset"),
], ids=["io-error", "oom", "unavailable"])
def test_transient_restore_error_stops_without_rolling_back(tmp_path, error):
    """Hardening a: only integrity failures fall back; anything else raises CheckpointError
    (not CheckpointDamaged) naming the step, and every file stays where it was."""
    directory = str(tmp_path / "ckpt")
    _save(directory, [1, 2], keep=3)
    before = _tree_listing(directory)
    ckpt = checkpoint.Checkpointer(directory)
    _failing_restore(ckpt, 2, error)
    with pytest.raises(checkpoint.CheckpointError, match="cannot restore step 2") as raised:
        ckpt.restore_newest(lambda _: _targets())
    assert not isinstance(raised.value, checkpoint.CheckpointDamaged)
    assert "\n" not in str(raised.value)
    ckpt.close()
    assert _tree_listing(directory) == before  # nothing moved aside, nothing deleted
    assert checkpoint.Checkpointer(directory, read_only=True).all_steps() == [1, 2]


def test_target_that_does_not_fit_is_not_damage(tmp_path):
    """A restore target of the wrong shape (another model or mesh) stops the run; the step
    is intact and stays."""
    directory = str(tmp_path / "ckpt")
    _save(directory, [1, 2], keep=3)
    before = _tree_listing(directory)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    wrong = {"w": jax.ShapeDtypeStruct((32, 64), jnp.float32), "b": SMALL["b"]}
    targets = {"params": checkpoint.abstract(
        wrong, jax.tree.map(lambda _: sharding.replicated(mesh), wrong))}
    ckpt = checkpoint.Checkpointer(directory)
    with pytest.raises(checkpoint.CheckpointError, match="cannot restore step 2") as raised:
        ckpt.restore_newest(lambda _: targets)
    ckpt.close()
    assert not isinstance(raised.value, checkpoint.CheckpointDamaged)
    assert _tree_listing(directory) == before


def test_unreadable_data_counts_as_damage(tmp_path):
    """Without files.json, tensorstore's OUT_OF_RANGE (truncated) / NOT_FOUND (deleted) and an
    undecodable data item are damage: CheckpointDamaged, and restore_newest falls back."""
    directory = str(tmp_path / "ckpt")
    _save(directory, [1, 2, 3], keep=3)
    ckpt = checkpoint.Checkpointer(directory)
    for s in (2, 3):
        os.remove(os.path.join(ckpt.step_dir(s), checkpoint.MANIFEST))
    truncate_largest(ckpt.step_dir(2))
    (data_file,) = glob.glob(os.path.join(ckpt.step_dir(3), "data", "process_*.json"))
    with open(data_file, "w") as f:
        f.write("{not json")
    for s in (2, 3):
        with pytest.raises(checkpoint.CheckpointDamaged, match=f"step {s} .* damaged"):
            ckpt.restore(s, _targets())
    step, _ = ckpt.restore_newest(lambda _: _targets())
    assert step == 1 and ckpt.all_steps() == [1]
    ckpt.close()


def test_transient_restore_error_exits_2_in_one_line(tmp_path):
    """Through the entry-point wrapper: `error: cannot restore step 2 ...`, exit status 2, no
    traceback, checkpoint directory unchanged."""
    directory = str(tmp_path / "ckpt")
    _save(directory, [1, 2], keep=3)
    before = _tree_listing(directory)
    code = f"""
import jax, jax.numpy as jnp
from pgm_jax import checkpoint, cli, sharding

def main(argv):
    ckpt = checkpoint.Checkpointer({directory!r})
    real = ckpt._mgr.restore
    def restore(step, *args, **kwargs):
        if step == 2:
            raise OSError(5, "Input/output error")
        return real(step, *args, **kwargs)
    ckpt._mgr.restore = restore
    tree = {{"w": jnp.zeros((64, 64)), "b": jnp.zeros((64,))}}
    mesh = sharding.make_mesh({{"data": 1}}, jax.devices()[:1])
    target = checkpoint.abstract(tree, jax.tree.map(lambda _: sharding.replicated(mesh), tree))
    try:
        ckpt.restore_newest(lambda _: {{"params": target, "data": None}})
    finally:
        ckpt.close()

cli.run(main)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot restore step 2 from ") and "Input/output" in last
    assert "Traceback" not in out.stderr
    assert _tree_listing(directory) == before


def test_checkpointer_is_closed_when_its_restore_fails(tmp_path, monkeypatch):
    """Hardening f: restore_params closes its checkpointer when the restore raises."""
    directory = str(tmp_path / CHECKPOINT_DIR)
    _save(directory, [1], keep=3)
    closed = []
    real_close = checkpoint.Checkpointer.close
    monkeypatch.setattr(checkpoint.Checkpointer, "close",
                        lambda self: closed.append(self.directory) or real_close(self))
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    with pytest.raises(checkpoint.CheckpointError):  # the saved tree is not this model
        restore_params(str(tmp_path), tiny_config(), mesh, step=1)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint for step 7"):
        restore_params(str(tmp_path), tiny_config(), mesh, step=7)
    assert closed == [directory, directory]
