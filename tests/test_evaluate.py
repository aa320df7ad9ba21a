"""pgm_jax.evaluate: exact validation NELBO over the whole split; the entry point end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomized_model
from test_gpt2 import ENDOFTEXT, EOS, _byte_to_char, random_gpt2, write_safetensors

from configs import demo
from pgm_jax import checkpoint, sharding
from pgm_jax.config import load_run_config, model_config, on_current_schema, save_config
from pgm_jax.data import load_text_data
from pgm_jax.eval.evaluation import validation
from pgm_jax.objectives import schedule
from pgm_jax.objectives.validation import EVAL_SEED_OFFSET
from pgm_jax.restore import CHECKPOINT_DIR, restore_params
from pgm_jax.train.setup import setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny PGM run on the bundled pydoc text, as training leaves it: config.json, tokenizer,
    a checkpoint at step 1 whose EMA weights (random, non-zero) differ from its raw ones."""
    c = demo.get_config()
    c.model.length = L
    c.model.hidden_size, c.model.cond_dim, c.model.n_heads = 32, 16, 2
    c.model.encoder_blocks = c.model.decoder_blocks = 1
    c.data.vocab_size = 512
    c.data.val_fraction = 0.02
    c.train.batch_size = c.train.eval_batch_size = 8
    workdir = str(tmp_path_factory.mktemp("run"))
    run = setup(c, workdir)  # trains the tokenizer into the workdir
    c.model.vocab_size, c.model.mask_index = run.model_cfg.vocab_size, run.model_cfg.mask_index
    save_config(c, workdir)
    raw, ema = (nnx.to_pure_dict(nnx.state(randomized_model(run.model_cfg, seed), nnx.Param))
                for seed in (0, 1))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR))
    ckpt.save(1, params=raw, ema=ema)
    ckpt.close()
    return workdir


@pytest.fixture(scope="module")
def split_and_batch(run_dir):
    """(validation blocks int32 [M, L], a batch size (multiple of 8 devices) not dividing M)."""
    config = load_run_config(run_dir)
    data = load_text_data(config.data, L, run_dir)
    blocks = np.stack([data.val[i]["tokens"] for i in range(len(data.val))])
    batch = next(b for b in range(16, 200, 8) if len(blocks) % b)
    return blocks, batch


def hand_nelbo(run_dir: str, blocks: np.ndarray, batch: int) -> float:
    """PGM validation NELBO summed by hand: per padded batch i the eval key fold_in(base, i)
    gives t and the partition; group-1 tokens cost -log p / t; real rows only."""
    config = load_run_config(run_dir)
    mcfg = model_config(config)
    mesh = sharding.inference_mesh()
    graphdef, params, _ = restore_params(run_dir, mcfg, mesh, item="ema")
    forward = jax.jit(lambda tokens, groups: nnx.merge(graphdef, params)(tokens, groups))
    base = jax.random.key(config.seed + EVAL_SEED_OFFSET)
    m = len(blocks)
    rows = np.zeros((-(-m // batch) * batch, L), np.int32)
    rows[:m] = blocks
    total = 0.0
    for i, start in enumerate(range(0, len(rows), batch)):
        tokens = rows[start:start + batch]
        k_t, k_g, _ = jax.random.split(jax.random.fold_in(base, i), 3)
        t = schedule.antithetic_t(k_t, batch)
        groups = schedule.sample_partition(k_g, t, tokens.shape)
        logits = np.asarray(forward(jnp.asarray(tokens), groups), np.float64)
        logits[..., mcfg.mask_index] = -np.inf
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, tokens[..., None], -1)[..., 0] / np.asarray(t)[:, None]
        real = (start + np.arange(batch) < m)[:, None]
        total += float(np.sum(np.where((np.asarray(groups) == 1) & real, nll, 0.0)))
    return total / (m * L)


def test_validation_is_the_hand_summed_nelbo_over_every_example(run_dir, split_and_batch):
    blocks, batch = split_and_batch
    config = on_current_schema(load_run_config(run_dir))
    config.train.eval_batch_size = batch
    run = setup(config, run_dir)
    metrics, step = validation(run_dir, config, run.data, run.mesh, run.model_cfg, None, 0)
    assert step == 1 and metrics["examples"] == len(blocks)
    assert metrics["tokens"] == len(blocks) * L  # the padded rows count for nothing
    assert metrics["nll"] == pytest.approx(hand_nelbo(run_dir, blocks, batch), rel=1e-5)
    assert metrics["ppl"] == pytest.approx(np.exp(metrics["nll"]), rel=1e-9)


@pytest.mark.slow
def test_evaluate_entry_point(run_dir, split_and_batch, tmp_path):
    """`python -m pgm_jax.evaluate` with a (tiny, random) GPT-2 judge: JSON in the workdir."""
    blocks, batch = split_and_batch
    judge = tmp_path / "gpt2"
    judge.mkdir()
    write_safetensors(judge / "model.safetensors", random_gpt2(np.random.default_rng(0)))
    (judge / "config.json").write_text(json.dumps({
        "vocab_size": 257, "n_positions": 24, "n_embd": 32, "n_layer": 2, "n_head": 4}))
    vocab = {c: b for b, c in _byte_to_char().items()} | {ENDOFTEXT: EOS}
    (judge / "vocab.json").write_text(json.dumps(vocab))
    (judge / "merges.txt").write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "pgm_jax.evaluate", f"--workdir={run_dir}",
         f"--batch_size={batch}", f"--judge={judge}", "--num_samples=3",
         "--sample_batch_size=3", "--steps=8"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(os.path.join(run_dir, "eval_step_1.json")) as f:
        result = json.load(f)
    assert result["val"]["nll"] == pytest.approx(hand_nelbo(run_dir, blocks, batch), rel=1e-5)
    gen = result["gen"]
    assert gen["num_samples"] == 3 and gen["judge"].startswith("gpt2:")
    assert 1.0 < gen["gen_ppl_first_chunk_retok"] < 1e6 and 0.0 < gen["entropy"] < np.log(L)
    assert "gen_ppl_all_no_retok" not in gen  # a byte-level judge does not share the vocabulary
    bad = subprocess.run(
        [sys.executable, "-m", "pgm_jax.evaluate", f"--workdir={run_dir}", "--noval",
         f"--judge={tmp_path}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --judge=")
