"""Baselines: the autoregressive transformer (reference `DDiTBlockCausal` DIT), complementary-
masking MDLM (spec §2.7), MDLM's time conditioning; dropout placement in every model kind."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import demo
from pgm_jax.interop.state_dict import param_paths, torch_param_name
from pgm_jax.models import build_model, layers
from pgm_jax.objectives import schedule
from pgm_jax.objectives.losses import LOSSES
from pgm_jax.objectives.text import ar_loss, complement_mdlm_loss, mdlm_loss
from pgm_jax.train import loop
from tests.helpers import randomized_model, tiny_config

B, L, V, MASK = 4, 32, 64, 63

# Compiled once per model / shape (eager op-by-op dispatch is slower on a small CPU).
forward = nnx.jit(lambda model, tokens, sigma: model(tokens, sigma=sigma))
forward_ar = nnx.jit(lambda model, tokens: model(tokens))
jit_loss = {name: nnx.jit(fn, static_argnums=3) for name, fn in
            (("ar", ar_loss), ("mdlm", mdlm_loss), ("complement_mdlm", complement_mdlm_loss))}


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, MASK, (B, L)).astype(np.int32)  # never the MASK id
    valid = np.ones((B, L), np.int32)
    valid[2, -5:] = 0  # padding is excluded from every loss
    return {"tokens": jnp.asarray(tokens), "valid": jnp.asarray(valid)}


@pytest.fixture(scope="module")
def ar():
    return randomized_model(tiny_config(kind="ar"), scale=0.2)


@pytest.fixture(scope="module")
def dit():
    return randomized_model(tiny_config(kind="mdlm_dit"))


def _np_target_logp(logits: np.ndarray, targets) -> np.ndarray:
    """log p(targets) [batch, n] of float64 logits [batch, n, V], MASK excluded."""
    logits = np.where(np.arange(V) == MASK, -np.inf, logits)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]


# ----------------------------------------------------------------------------- AR
def _reference_causal_dit(model, tokens: np.ndarray) -> np.ndarray:
    """The reference's causal DIT (no sigma_map, no adaLN) in float64 numpy."""
    cfg = model.cfg
    h_dim, n_heads = cfg.hidden_size, cfg.n_heads
    d = h_dim // n_heads
    w = lambda v: np.asarray(v[...], np.float64)
    b, n = tokens.shape
    angles = np.arange(n)[:, None] / 10000.0 ** (np.arange(0, d, 2) / d)[None]
    cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]

    def rope(x):  # NeoX rotate-half on [b, n, heads, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def norm(x, scale):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * scale

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    x = w(model.vocab_embed.embedding)[tokens]
    causal = np.tril(np.ones((n, n), bool))
    for blk in model.blocks:
        q, k, v = np.split(norm(x, w(blk.norm1.scale)) @ w(blk.attn_qkv.kernel), 3, -1)
        q, k, v = (a.reshape(b, n, n_heads, d) for a in (q, k, v))
        s = np.einsum("bqhd,bkhd->bhqk", rope(q), rope(k)) / math.sqrt(d)
        s = np.where(causal, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, n, h_dim)
        x = x + a @ w(blk.attn_out.kernel)
        h = norm(x, w(blk.norm2.scale)) @ w(blk.mlp.fc_in.kernel) + w(blk.mlp.fc_in.bias)
        x = x + gelu_tanh(h) @ w(blk.mlp.fc_out.kernel) + w(blk.mlp.fc_out.bias)
    out = model.output_layer
    return norm(x, w(out.norm_final.scale)) @ w(out.linear.kernel) + w(out.linear.bias)


def test_ar_equals_the_reference_causal_transformer(ar):
    tokens = np.asarray(_batch()["tokens"])
    np.testing.assert_allclose(np.asarray(forward_ar(ar, jnp.asarray(tokens))),
                               _reference_causal_dit(ar, tokens), atol=1e-4)


def test_ar_is_causal(ar):
    tokens = _batch()["tokens"]
    j = 11
    a = np.asarray(forward_ar(ar, tokens))
    b = np.asarray(forward_ar(ar, tokens.at[:, j].set((tokens[:, j] + 1) % MASK)))
    np.testing.assert_array_equal(a[:, :j], b[:, :j])
    assert np.abs(a[:, j:] - b[:, j:]).min(axis=-1).max() > 0  # position j onwards sees it


def test_ar_has_the_reference_state_dict_names(ar):
    per_block = ("norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight",
                 "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")
    expected = {"vocab_embed.embedding", "output_layer.norm_final.weight",
                "output_layer.linear.weight", "output_layer.linear.bias"}
    expected |= {f"blocks.{i}.{p}" for i in range(ar.cfg.n_blocks) for p in per_block}
    assert {torch_param_name(p) for p in param_paths(ar)} == expected  # no sigma_map, no adaLN
    assert tiny_config(kind="ar", time_conditioning=True).problems()


def test_ar_loss_is_the_exact_shifted_nll(ar):
    batch = _batch(1)
    total, count = jit_loss["ar"](ar, batch, jax.random.key(0), False)
    tokens, valid = np.asarray(batch["tokens"]), np.asarray(batch["valid"])
    nll = -_np_target_logp(_reference_causal_dit(ar, tokens[:, :-1]), tokens[:, 1:])
    assert float(count) == valid[:, 1:].sum()
    np.testing.assert_allclose(float(total), (nll * valid[:, 1:]).sum(), rtol=1e-5)


@pytest.mark.slow
def test_ar_trains_with_the_trainer(tmp_path):
    """`--config.algo=ar` through the training loop: from the uniform prediction of the
    zero-initialised head (log(V - 1) nats, MASK excluded) the validation NLL drops."""
    c = demo.get_config()
    c.algo = "ar"
    c.model.length, c.model.hidden_size, c.model.cond_dim, c.model.n_heads = 32, 32, 16, 2
    c.model.n_blocks = 2
    c.data.vocab_size = 512
    c.train.batch_size = c.train.eval_batch_size = 8
    c.train.num_steps, c.train.log_every, c.train.eval_batches = 30, 10, 2
    c.train.eval_every = c.train.checkpoint_every = 1000
    c.optim.lr, c.optim.warmup_steps = 3e-3, 2
    result = loop.train(c, str(tmp_path))
    uniform = math.log(c.data.vocab_size)  # sentencepiece pieces + MASK, MASK excluded
    assert result["eval"]["nll"] < uniform - 0.5, (result, uniform)


# ----------------------------------------------------------------------------- complement MDLM
def _target_logp(model, xt, sigma, tokens):
    return _np_target_logp(np.asarray(forward(model, xt, sigma), np.float64), tokens)


def test_complement_mdlm_is_mdlm_at_evaluation(dit):
    """The same computation (identical traced programs), as the reference evaluates with
    algo=mdlm."""
    assert LOSSES["complement_mdlm"] is complement_mdlm_loss
    graphdef, state = nnx.split(dit)
    batch, key = _batch(2), jax.random.key(3)

    def program(loss_fn):
        fn = lambda st, b, k: loss_fn(nnx.merge(graphdef, st), b, k, False)
        return str(jax.make_jaxpr(fn)(state, batch, key))

    assert program(complement_mdlm_loss) == program(mdlm_loss)


def test_complement_mdlm_training_objective(dit):
    """Each token is scored once: by the x_t pass (weight 1/t) where x_t masks it, else by the
    complement pass (weight 1/(1 - t)); halved; averaged over valid tokens."""
    batch, key = _batch(4), jax.random.key(5)
    total, count = jit_loss["complement_mdlm"](dit, batch, key, True)
    tokens, valid = batch["tokens"], np.asarray(batch["valid"])
    k_t, k_m, _ = jax.random.split(key, 3)
    t = schedule.antithetic_t(k_t, B)
    xt = schedule.mask_tokens(k_m, tokens, t, MASK)
    xtc = jnp.where(xt == tokens, MASK, tokens)
    assert bool(jnp.all((xt == MASK) != (xtc == MASK)))
    lp = _target_logp(dit, xt, jnp.zeros((B,)), tokens)
    lpc = _target_logp(dit, xtc, jnp.zeros((B,)), tokens)
    t = np.asarray(t, np.float64)[:, None]
    per_token = np.where(np.asarray(xt) == MASK, -lp / t, -lpc / (1 - t)) / 2
    assert float(count) == valid.sum()
    np.testing.assert_allclose(float(total), (per_token * valid).sum(), rtol=1e-5)


# ----------------------------------------------------------------------------- time conditioning
def test_mdlm_feeds_sigma_to_a_time_conditioned_dit():
    model = randomized_model(tiny_config(kind="mdlm_dit", time_conditioning=True))
    batch, key = _batch(6), jax.random.key(7)
    total, _ = jit_loss["mdlm"](model, batch, key, False)
    k_t, k_m, _ = jax.random.split(key, 3)
    t = schedule.antithetic_t(k_t, B)
    xt = schedule.mask_tokens(k_m, batch["tokens"], t, MASK)
    valid = np.asarray(batch["valid"])
    tt = np.asarray(t, np.float64)[:, None]
    masked = np.asarray(xt) == MASK

    def loss_with(sigma):
        lp = _target_logp(model, xt, sigma, batch["tokens"])
        return (np.where(masked, -lp / tt, 0.0) * valid).sum()

    np.testing.assert_allclose(float(total), loss_with(-jnp.log(1 - (1 - 1e-3) * t)), rtol=1e-5)
    assert abs(float(total) - loss_with(jnp.zeros((B,)))) > 1e-3 * abs(float(total))


# ----------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("kind", ["pgm", "mdlm_dit", "ar"])
def test_dropout_only_on_attention_output_and_mlp_branches(kind, monkeypatch):
    """As `bias_dropout_add_scale`: two sites per encoder / decoder / DiT block, on [batch, n,
    H] branch outputs; none on embeddings, attention probabilities or GroupSwap."""
    cfg = tiny_config(kind=kind, dropout=0.1)
    calls = []
    real = layers.dropout

    def recording(x, rate, key):
        if key is not None:
            calls.append((x.shape, rate))
        return real(x, rate, key)

    monkeypatch.setattr(layers, "dropout", recording)
    model = build_model(cfg)
    tokens = _batch()["tokens"]
    args = (tokens, jnp.asarray(np.arange(L) % 2)[None].repeat(B, 0)) if kind == "pgm" else (
        tokens,)
    jax.eval_shape(lambda: model(*args, key=jax.random.key(0)))
    blocks = cfg.encoder_blocks + cfg.decoder_blocks if kind == "pgm" else cfg.n_blocks
    assert calls == [((B, L, cfg.hidden_size), 0.1)] * (2 * blocks)
