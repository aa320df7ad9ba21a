"""Training: sharded step == single-device step, exact resume, end-to-end demo + sampling."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import demo
from pgm_jax import config as config_lib
from pgm_jax import sharding
from pgm_jax.models import build_model
from pgm_jax.objectives.losses import LOSSES
from pgm_jax.restore import restore_params
from pgm_jax.train import loop, setup
from pgm_jax.train.step import jit_train_step, make_train_step, state_shardings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(algo="pgm", **train):
    c = demo.get_config()
    c.algo = algo
    c.model.length = 32
    c.model.hidden_size = 32
    c.model.cond_dim = 16
    c.model.n_heads = 2
    c.model.encoder_blocks = c.model.decoder_blocks = 1
    c.model.n_blocks = 2
    c.model.dropout = 0.1  # exercise the dropout RNG path in resume equality
    c.data.vocab_size = 512
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.eval_batches = 2
    c.train.log_every = 1
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 2
    c.optim.ema_decay = 0.9
    for k, v in train.items():
        c.train[k] = v
    return c


def train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.mark.parametrize("algo", ["pgm", "mdlm"])
def test_sharded_step_matches_single_device(tmp_path, algo):
    config = tiny(algo)
    config.mesh.data, config.mesh.fsdp = 4, 2
    run = setup.setup(config, str(tmp_path))
    abstract_model = nnx.eval_shape(lambda: build_model(run.model_cfg, config.seed))
    one = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    run1 = dataclasses.replace(run, mesh=one,
                               shardings=state_shardings(abstract_model, run.tx, one))
    # The (4, 2) run really shards parameters over fsdp.
    specs = jax.tree.leaves(run.shardings.params)
    assert any("fsdp" in str(s.spec) for s in specs)
    batch_np = next(iter(run.data.train_iterator(8, 0)))
    results = []
    for r in (run, run1):
        step = jit_train_step(make_train_step(r.graphdef, LOSSES[config.algo], r.tx, 0.9),
                              r.shardings, r.mesh)
        state, metrics = step(setup.initial_state(r), sharding.global_batch(r.mesh, batch_np))
        state, metrics = step(state, sharding.global_batch(r.mesh, batch_np))
        results.append((jax.device_get(metrics), jax.device_get(state.params)))
    (m8, p8), (m1, p1) = results
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)


def test_resume_equals_straight_run(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    loop.train(tiny(num_steps=7), straight)
    loop.train(tiny(num_steps=4), resumed)  # stops (and checkpoints) after 4 steps
    assert sorted(train_losses(resumed)) == [1, 2, 3, 4]
    result = loop.train(tiny(num_steps=7), resumed)  # resumes at step 4
    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(b) == list(range(1, 8))
    np.testing.assert_allclose([b[s] for s in range(1, 8)], [a[s] for s in range(1, 8)],
                               rtol=1e-6)
    assert result["step"] == 7
    # The EMA weights (what sampling and evaluation use) and the raw weights match too.
    model_cfg = config_lib.model_config(config_lib.load_run_config(straight))
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    for item in ("ema", "params"):
        (_, w_a, step_a), (_, w_b, step_b) = (
            restore_params(d, model_cfg, mesh, item=item) for d in (straight, resumed))
        assert step_a == step_b == 7
        for x, y in zip(jax.tree.leaves(w_a), jax.tree.leaves(w_b), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_demo_trains_and_samples(tmp_path):
    """The demo config end to end through the two entry points, a few steps only."""
    workdir = str(tmp_path / "demo")
    env = dict(os.environ, PYTHONPATH=REPO)
    train = subprocess.run(
        [sys.executable, "-m", "pgm_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
         "--config.train.num_steps=4", "--config.train.log_every=2",
         "--config.train.eval_batches=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "val ppl" in train.stdout
    for name in ("config.json", "tokenizer.model", "metrics.jsonl", "checkpoints"):
        assert os.path.exists(os.path.join(workdir, name)), name
    out = subprocess.run(
        [sys.executable, "-m", "pgm_jax.sample", f"--workdir={workdir}", "--num_samples=2",
         "--batch_size=2", "--steps=8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "samples.jsonl"))]
    assert len(rows) == 2
    for r in rows:
        assert len(r["tokens"]) == 128 and r["text"]
        assert r["tokens"][0] == 2  # BOS at position 0 (sentencepiece bos id)
        assert 4096 not in r["tokens"]  # never the MASK id
