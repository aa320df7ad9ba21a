"""SDTT distillation (spec §8): schedule, time grids, teacher targets, loss, training mode."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomized_model, tiny_config

from configs import demo
from configs import distill as distill_presets
from pgm_jax import checkpoint, sharding
from pgm_jax.config import ConfigError, load_run_config, model_config, validate
from pgm_jax.models import build_model
from pgm_jax.objectives import sdtt
from pgm_jax.restore import restore_params
from pgm_jax.sampling import text_run
from pgm_jax.sampling.settings import SamplerSettings
from pgm_jax.train import distill, loop, setup
from pgm_jax.train.step import state_shardings


# ----------------------------------------------------------------------------- math
def test_round_schedule_50k():
    """The reference runs: rounds 0-4, teacher dt 1..16 / 1024 (x (1 - 1e-5)), no early stop."""
    s = sdtt.Schedule(10_000, 1024, 8, 2)
    rounds = s.rounds(50_000)
    assert [(first, r) for first, r, _ in rounds] == [(0, 0), (10_000, 1), (20_000, 2),
                                                     (30_000, 3), (40_000, 4)]
    np.testing.assert_allclose([dt for *_, dt in rounds],
                               [(1 - 1e-5) * 2**r / 1024 for r in range(5)], rtol=1e-12)
    assert [s.effective_steps(r) for r in range(5)] == [1024, 512, 256, 128, 64]
    assert s.last_step(50_000) == 50_000
    assert round(1 / (2 * s.dt(4))) == 32  # the student ends at ~32-step sampling
    # Traced dt (inside the jitted step) equals the host value.
    np.testing.assert_allclose(float(s.dt(s.round_of(jnp.int32(45_000)))), s.dt(4), rtol=1e-6)
    # 100k steps: rounds up to 7 (8 teacher steps); round 8 (4 steps) stops at step 80k.
    assert s.last_step(100_000) == 80_000
    assert s.rounds(100_000)[-1][:2] == (70_000, 7)


def test_teacher_time_grids():
    t = jnp.array([0.5, 0.9, 2e-5])
    dt = 0.1
    np.testing.assert_allclose(sdtt.teacher_times(t, dt, 2),
                               [[0.5, 0.9, 2e-5], [0.4, 0.8, 1e-5]], rtol=1e-6)
    # The reference: t + (1 - t)(t - 2dt), then (1 - t)(t - 2dt); clamped at 1e-5.
    np.testing.assert_allclose(sdtt.teacher_times(t, dt, 2, reference_grid=True),
                               [[0.5 + 0.5 * 0.3, 0.9 + 0.1 * 0.7, 1e-5],
                                [0.5 * 0.3, 0.1 * 0.7, 1e-5]], rtol=1e-5)


def test_sample_times_antithetic():
    t = np.asarray(sdtt.sample_times(jax.random.key(3), 8))
    assert t.min() >= 1e-5 and t.max() < 1.0
    frac = np.sort((t - 1e-5) / (1 - 1e-5))
    np.testing.assert_allclose(np.diff(frac), 1 / 8, atol=1e-6)  # one U, offsets i/n


def test_reverse_kl_hand_computed():
    rng = np.random.default_rng(0)
    ls = jax.nn.log_softmax(jnp.asarray(rng.standard_normal((2, 3, 5)), jnp.float32))
    lt = jax.nn.log_softmax(jnp.asarray(rng.standard_normal((2, 3, 5)), jnp.float32))
    w = jnp.array([[1, 0, 1], [0, 0, 1]])
    total, count = sdtt.reverse_kl(ls, lt, w)
    ps, pt = np.exp(np.asarray(ls, np.float64)), np.exp(np.asarray(lt, np.float64))
    kl = (ps * np.log(ps / pt)).sum(-1)
    assert count == 3
    np.testing.assert_allclose(total, (kl * np.asarray(w)).sum(), rtol=1e-5)
    # MASK excluded with the finite NEG: zero probability, finite loss and gradient.
    logits = jnp.asarray(rng.standard_normal((1, 2, 5)), jnp.float32)
    g = jax.grad(lambda z: sdtt.reverse_kl(sdtt.masked_logprobs(z, 4), lt[:1, :2],
                                           jnp.ones((1, 2)))[0])(logits)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g[..., 4]).max()) == 0.0


@pytest.mark.parametrize("reference_grid", [False, True])
def test_teacher_targets_follow_the_reveals(reference_grid):
    """Targets = the log p of the step that revealed a token; still masked: the last step's.
    The reveal rates are the ancestral ones on the chosen grid."""
    mask, b, n, v = 7, 4, 4096, 8
    calls = []

    def forward(x, t):  # log p depends on the step (number of masks left): steps are told apart
        m = jnp.sum(x == mask, axis=1, keepdims=True).astype(jnp.float32)
        logits = jnp.sin(m[..., None] * 1e-3 * jnp.arange(1, v + 1) + t[:, None, None])
        lp = sdtt.masked_logprobs(jnp.broadcast_to(logits, (*x.shape, v)), mask)
        calls.append((np.asarray(x), np.asarray(lp)))
        return lp

    xt = jnp.where(jax.random.uniform(jax.random.key(0), (b, n)) < 0.6, mask, 1)
    t = jnp.full((b,), 0.5)
    targets = np.asarray(sdtt.teacher_targets(forward, xt, t, 0.1, jax.random.key(1), mask,
                                              2, reference_grid))
    (x0, lp0), (x1, lp1) = calls
    was = x0 == mask
    first, second = was & (x1 != mask), (x1 == mask)
    np.testing.assert_array_equal(targets[first], lp0[first])
    np.testing.assert_array_equal(targets[second], lp1[second])  # revealed at 2 or still masked
    assert not np.any(x1[~was] == mask)  # visible tokens are never touched
    p1 = first.sum() / was.sum()
    # correct grid [0.5, 0.4]: dt / t = 0.2; reference grid [0.65, 0.15]: 0.1 / 0.65
    np.testing.assert_allclose(p1, 0.1 / 0.65 if reference_grid else 0.2, atol=0.01)


@pytest.fixture(scope="module")
def tiny_models():
    pgm = randomized_model(tiny_config(), seed=0)
    dit = randomized_model(tiny_config(kind="mdlm_dit"), seed=1)
    return {"pgm": pgm, "mdlm": dit}


@pytest.mark.parametrize("algo", ["pgm", "mdlm"])
def test_zero_loss_when_student_is_teacher(tiny_models, algo):
    """Round 0, teacher == student, teacher taking one step of the student's dt: zero loss.
    Two teacher steps: a positive loss (the test can fail)."""
    model = tiny_models[algo]
    fwd = sdtt.forward_fn(model, algo)
    x0 = jax.random.randint(jax.random.key(2), (8, 32), 0, 63)
    valid = jnp.ones_like(x0)
    dt = sdtt.Schedule(10, 32, 8, 1).dt(0)
    loss = jax.jit(lambda k, n: sdtt.distill_loss(fwd, fwd, x0, valid, k, dt, 63, n),
                   static_argnums=1)
    total, count = loss(jax.random.key(4), 1)
    assert count > 0 and abs(float(total)) < 1e-5 * float(count)
    total2, count2 = loss(jax.random.key(4), 2)
    assert float(total2) / float(count2) > 1e-3


# ----------------------------------------------------------------------------- training mode
def tiny_run(**train):
    c = demo.get_config()
    c.model.length = 32
    c.model.hidden_size = 32
    c.model.cond_dim = 16
    c.model.n_heads = 2
    c.model.encoder_blocks = c.model.decoder_blocks = 1
    c.data.vocab_size = 512
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.eval_batches = 1
    c.train.log_every = 1
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 2
    c.optim.ema_decay = 0.9
    c.sample.steps = 4
    for k, v in train.items():
        c.train[k] = v
    return c


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("teacher"))
    loop.train(tiny_run(num_steps=3), d)
    return d


def distill_config(teacher, **train):
    c = tiny_run(**train)
    c.model.dropout = 0.1  # the student's dropout key path takes part in resume equality
    c.distill.teacher = teacher
    c.distill.grow_dt_every = 2
    c.distill.orig_num_sampling_steps = 16
    c.distill.min_num_sampling_steps = 4
    return c


def rows(workdir, kind="train"):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r["kind"] == kind}


def test_distill_resume_and_rounds(tmp_path, teacher_dir):
    """Straight 5 steps == 3 steps (mid-round 1) then resumed to 5; the teacher is the student
    of each boundary; the run stops below min_num_sampling_steps; samples at 4 steps."""
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    result = distill.train(distill_config(teacher_dir, num_steps=9), straight)
    # rounds: teacher 16, 8, 4 steps; round 3 (2 steps < 4) would start at step 6: stop there
    assert result["step"] == 6 and result["round"] == 2
    distill.train(distill_config(teacher_dir, num_steps=3), resumed)
    distill.train(distill_config(teacher_dir, num_steps=9), resumed)
    a, b = rows(straight), rows(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[s]["loss"] for s in a], [a[s]["loss"] for s in a], rtol=1e-6)
    # Round 0 starts with teacher == student (raw teacher-run weights): a small loss.
    assert 0 < a[1]["loss"] < a[3]["loss"]
    ckpt = checkpoint.Checkpointer(os.path.join(straight, "checkpoints"), read_only=True)
    assert ckpt.all_steps() == [2, 4, 6]  # every round boundary + the end
    ckpt.close()
    config = load_run_config(straight)
    mesh = sharding.make_mesh({"data": -1})
    for step in (2, 4):
        _, p, _ = restore_params(straight, model_config(config), mesh, step, item="params")
        _, t, _ = restore_params(straight, model_config(config), mesh, step, item="teacher")
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(t), strict=True):
            np.testing.assert_array_equal(a, b)
    # The distilled run samples at a reduced step count.
    s = SamplerSettings.build(config, model_config(config), num_samples=2, batch_size=2,
                              steps=4, float64=True)
    tokens, step = text_run.sample_run(straight, config, s, None, 0,
                                       text_run.run_tokenizer(config, straight))
    assert step == 6 and tokens.shape == (2, 32)


def test_distill_step_sharded_matches_single_device(tmp_path, teacher_dir):
    config = distill_config(teacher_dir, num_steps=2)
    config.mesh.data, config.mesh.fsdp = 4, 2
    run = setup.setup(config, str(tmp_path))
    abstract_model = nnx.eval_shape(lambda: build_model(run.model_cfg, config.seed))
    one = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    run1 = dataclasses.replace(run, mesh=one,
                               shardings=state_shardings(abstract_model, run.tx, one))
    batch = next(iter(run.data.train_iterator(8, 0)))
    out = []
    for r in (run, run1):
        state, teacher = distill._start(r, teacher_dir)
        # A teacher away from the student, so that the KL (and its rounding) is not ~0.
        perturb = lambda p: jax.tree.map(
            lambda x: x + 0.3 * jnp.sin(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)), p)
        teacher = jax.jit(perturb, out_shardings=r.shardings.params)(teacher)
        step = distill.jit_distill_step(distill.make_distill_step(r.graphdef, config, r.tx, 0.9),
                                        r.shardings, r.mesh)
        gb = sharding.global_batch(r.mesh, batch)
        state, m = step(state, teacher, gb)
        state, m = step(state, teacher, gb)
        out.append((jax.device_get(m), jax.device_get(state.params)))
    (m8, p8), (m1, p1) = out
    assert m8["loss"] > 1e-3
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", distill_presets.PRESETS)
def test_presets_validate(preset):
    c = distill_presets.get_config(preset)
    validate(c)
    if preset != "demo":
        assert (c.train.batch_size, c.train.num_steps, c.optim.lr, c.optim.warmup_steps,
                c.optim.ema_decay) == (128, 50_000, 3e-4, 2_500, 0.9999)
        assert c.algo == ("mdlm" if preset == "mdlm" else "pgm")
        s = distill.schedule(c)
        assert s.last_step(c.train.num_steps) == 50_000 and len(s.rounds(50_000)) == 5


def test_bad_teacher_is_a_config_error(tmp_path, teacher_dir):
    c = distill_config(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="config.distill.teacher"):
        distill.check_config(c)
    c = distill_config(teacher_dir)
    c.model.hidden_size = 64
    with pytest.raises(ConfigError, match="config.model.hidden_size"):
        distill.check_config(c)
