"""Mesh from config, logical sharding rules, the replicated-fraction guard, and sharded /
accumulated train steps that equal the plain single-device step.

The equivalence tests start from randomised weights (`helpers.randomized_model`): from the
reference's zero initialisation every block is an identity whose attention and MLP weights get
exactly zero gradient, so an error inside a block would pass. Each asserts that every compared
leaf has a non-zero gradient.
"""

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomized_model, tiny_config

from configs import demo
from pgm_jax import config as config_lib
from pgm_jax import sharding
from pgm_jax.models import ModelConfig, build_model, layers
from pgm_jax.objectives import schedule
from pgm_jax.objectives.losses import LOSSES
from pgm_jax.train import optim, setup
from pgm_jax.train.step import (
    init_state,
    jit_train_step,
    make_train_step,
    microbatches,
    state_shardings,
)

B = 8
OPTIM = demo.get_config().optim


def make_run(cfg, mesh, loss_fn, grad_accum=1):
    """(jitted train step, initial state from randomised weights) for `cfg` on `mesh` (tiny,
    so no data pipeline)."""
    tx = optim.make_optimizer(OPTIM, 100)
    abstract = nnx.eval_shape(lambda: build_model(cfg, 0))
    shardings = state_shardings(abstract, tx, mesh)
    step = make_train_step(nnx.graphdef(abstract), loss_fn, tx, 0.9, grad_accum,
                           sharding.data_parallel_size(mesh))
    state = jax.device_put(init_state(randomized_model(cfg, 0), tx, 0), shardings)
    return jit_train_step(step, shardings, mesh), state


def assert_every_gradient_nonzero(model, loss_fn, tokens):
    """Every parameter leaf of `model` gets a non-zero gradient from `loss_fn` on `tokens`."""
    graphdef, params = nnx.split(model, nnx.Param)

    def total(p):
        s, n = loss_fn(nnx.merge(graphdef, p), {"tokens": tokens, "valid": jnp.ones_like(tokens)},
                       jax.random.key(3), True)
        return s / n

    grads = jax.jit(jax.grad(total))(params)
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if not np.any(np.asarray(g))]
    assert not dead, f"zero gradient (an error there would go unnoticed): {dead}"


def two_steps(cfg, mesh, loss_fn, grad_accum=1):
    step, state = make_run(cfg, mesh, loss_fn, grad_accum)
    rng = np.random.default_rng(0)
    for _ in range(2):
        tokens = rng.integers(0, cfg.vocab_size - 1, (B, cfg.length), dtype=np.int32)
        batch = sharding.global_batch(mesh, {"tokens": tokens, "valid": np.ones_like(tokens)})
        state, metrics = step(state, batch)
    return jax.device_get(metrics), jax.device_get(state.params)


def assert_same(a, b):
    (ma, pa), (mb, pb) = a, b
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=2e-5)
    np.testing.assert_allclose(ma["grad_norm"], mb["grad_norm"], rtol=1e-4)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_allclose(x, y, atol=2e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def one_device():
    return sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def single_pgm(one_device):
    return two_steps(tiny_config(dropout=0.1), one_device, LOSSES["pgm"])


def test_equivalence_tests_start_where_every_weight_learns():
    tokens = jax.random.randint(jax.random.key(1), (B, 32), 0, 63)
    assert_every_gradient_nonzero(randomized_model(tiny_config(dropout=0.1), 0), LOSSES["pgm"],
                                  tokens)
    assert_every_gradient_nonzero(randomized_model(tiny_config(), 0), fixed_partition_loss,
                                  tokens)


@pytest.mark.parametrize("remat", ["dots_no_batch", "dots"])
def test_fsdp_tensor_step_matches_single_device(single_pgm, remat):
    """(2, 4) fsdp x tensor with scan over layers, remat and chunked logits == one device."""
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    cfg = tiny_config(dropout=0.1, scan_layers=True, remat=remat, logits_chunk=8)
    step, state = make_run(cfg, mesh, LOSSES["pgm"])
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    assert any("fsdp" in s and "tensor" in s for s in specs)  # really sharded two ways
    assert_same(two_steps(cfg, mesh, LOSSES["pgm"]), single_pgm)


def fixed_partition_loss(model, batch, key, train):
    """A PGM objective without noise (fixed partition), so any batching must give the same."""
    del key
    tokens = batch["tokens"]
    groups = (jnp.arange(tokens.shape[1])[None] + tokens) % 2
    logp = model(tokens, groups, targets=tokens)
    return schedule.masked_mean(-logp, batch["valid"])


def test_grad_accumulation_matches_full_batch(one_device):
    cfg = tiny_config()
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2}, devices=jax.devices()[:4])
    assert_same(two_steps(cfg, mesh, fixed_partition_loss, grad_accum=2),
                two_steps(cfg, one_device, fixed_partition_loss))


def test_microbatches_take_a_slice_of_every_shard():
    rows = np.arange(16)
    micro = np.asarray(microbatches({"x": rows}, 2, 4)["x"])
    # 4 shards of 4 rows: micro-batch j holds rows 2j, 2j+1 of each shard.
    np.testing.assert_array_equal(micro[0], [0, 1, 4, 5, 8, 9, 12, 13])
    np.testing.assert_array_equal(micro[1], [2, 3, 6, 7, 10, 11, 14, 15])
    t = schedule.antithetic_t(jax.random.key(0), 16)
    parts = microbatches({"t": t}, 4, 2)["t"]
    # Sliced global strata: every micro-batch's times together cover each stratum once.
    strata = np.sort(np.floor(np.asarray(parts).ravel() * 16))
    np.testing.assert_array_equal(strata, np.arange(16))


# ----------------------------------------------------------------------------- layouts
@pytest.fixture(scope="module")
def layouts():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    model = nnx.eval_shape(lambda: build_model(tiny_config(), 0))
    return mesh, model, sharding.param_layouts(model, mesh)


def test_sharding_table_matches_rules(layouts):
    mesh, model, lay = layouts
    table = sharding.sharding_table(lay, mesh).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table[1:-1]}
    assert len(rows) == len(lay)
    # FSDP over the embedding dimension, tensor parallelism over heads / MLP / vocabulary.
    assert rows["vocab_embed.embedding"] == ["64x32", "vocab,embed", "tensor,fsdp", "16x16"]
    assert rows["encoder.blocks.0.attn_qkv.kernel"] == ["32x96", "embed,heads", "fsdp,tensor",
                                                        "16x24"]
    assert rows["decoder.layers.1.mlp.fc_out.kernel"] == ["128x32", "mlp,embed", "tensor,fsdp",
                                                          "32x16"]
    assert rows["encoder.blocks.0.norm1.scale"] == ["32", "norm", "-", "32"]
    assert "0.56% replicated" in table[-1]
    # The train state really uses the table's shardings (params, EMA and Adam moments).
    sh = state_shardings(model, optim.make_optimizer(OPTIM, 10), mesh)
    flat = {".".join(str(k.key) for k in path): s.spec
            for path, s in jax.tree_util.tree_flatten_with_path(sh.params)[0]}
    assert flat == {x.path: x.spec for x in lay.values()}
    moments = [s for s in jax.tree.leaves(sh.opt_state) if any(a for a in s.spec)]
    assert len(moments) == 2 * sum(not x.replicated for x in lay.values())  # Adam mu and nu


def test_replicated_guard(layouts):
    mesh, model, lay = layouts
    sharding.check_replicated(lay, mesh, 0.05)  # the default rules pass
    bad = dict(sharding.LOGICAL_RULES, embed=None, cond=None, vocab=None)
    bad_lay = sharding.param_layouts(model, mesh, bad)
    with pytest.raises(sharding.MeshError, match="mesh.max_replicated_fraction") as e:
        sharding.check_replicated(bad_lay, mesh, 0.05)
    assert "vocab_embed.embedding (64, 32)" in str(e.value)  # names the largest offenders
    sharding.check_replicated(bad_lay, sharding.make_mesh({"data": -1}), 0.05)  # pure DP: ok


# ----------------------------------------------------------------------------- meshes
def test_mesh_from_config_refuses_what_does_not_fit():
    assert dict(sharding.make_mesh({"data": -1, "fsdp": 2}).shape) == {
        "data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(sharding.MeshError, match=r"mesh.data x mesh.fsdp x mesh.tensor = 6"):
        sharding.make_mesh({"data": 3, "fsdp": 2})
    with pytest.raises(sharding.MeshError, match="mesh.data and mesh.tensor are all -1"):
        sharding.make_mesh({"data": -1, "tensor": -1})
    with pytest.raises(sharding.MeshError, match="mesh.dcn_data .* 1 slices/processes"):
        sharding.make_mesh({"data": -1, "dcn_data": 2})
    c = demo.get_config()
    c.mesh.data, c.mesh.fsdp = 2, 4
    c.train.batch_size, c.train.grad_accum = 16, 4
    with pytest.raises(config_lib.ConfigError,
                       match=r"config.train.batch_size=16: .* = 8 times train.grad_accum=4"):
        setup.build_mesh(c)


def test_hybrid_mesh_keeps_each_slice_contiguous():
    devices = jax.devices()
    granules = [devices[:4], devices[4:]]
    arr = sharding.hybrid_device_array((1, 2, 2), (2, 1, 1), granules)
    assert arr.shape == (2, 2, 2)
    for i in range(2):  # data index i (the DCN axis) is slice i, whole
        assert {d.id for d in arr[i].ravel()} == {d.id for d in granules[i]}
    with pytest.raises(sharding.MeshError, match="needs 4 slices/processes"):
        sharding.hybrid_device_array((1, 2, 1), (4, 1, 1), granules)


def test_activation_constraint_only_under_a_mesh():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    x = jnp.ones((8, 4, 2))
    f = lambda a: sharding.constrain(a * 2, layers.RESIDUAL)
    assert "sharding" not in jax.jit(f).lower(x).as_text()
    text = jax.jit(sharding.traced_under(mesh, f)).lower(x).as_text()
    assert "mhlo.sharding" in text or "sdy.sharding" in text
    np.testing.assert_array_equal(jax.jit(sharding.traced_under(mesh, f))(x), 2 * x)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_memory_options_do_not_change_the_model(remat):
    """remat / scan_layers / logits_chunk give the same loss and gradients as the plain model
    (MDLM DiT, randomised weights; the PGM equivalent is the sharded test above)."""
    base = tiny_config(kind="mdlm_dit", dropout=0.1)
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 63)

    def loss_and_grads(cfg):
        model = randomized_model(cfg, 0)
        graphdef, params = nnx.split(model)

        def f(p):
            return nnx.merge(graphdef, p)(tokens, key=jax.random.key(2), targets=tokens).sum()

        return jax.jit(jax.value_and_grad(f))(params)

    ref_v, ref_g = loss_and_grads(base)
    v, g = loss_and_grads(dataclasses.replace(base, scan_layers=True, remat=remat,
                                              logits_chunk=5))
    dead = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(ref_g)
            if not np.any(np.asarray(x))]
    assert not dead, f"zero gradient: {dead}"
    np.testing.assert_allclose(v, ref_v, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- activation axes
ACTIVATION_TUPLES = {"RESIDUAL": layers.RESIDUAL, "HEADS": layers.HEADS,
                     "MLP_HIDDEN": layers.MLP_HIDDEN, "LOGITS": layers.LOGITS}
KINDS = ("pgm", "mdlm_dit", "ar", "image_pgm", "maskgit")


def kind_config(kind: str) -> ModelConfig:
    """A tiny config of `kind` whose heads (4), MLP (128) and vocabulary (64 text, 16 image
    PGM) divide a tensor axis of 4, so a data=2 x tensor=4 mesh really splits them."""
    if kind in ("image_pgm", "maskgit"):
        codes = 14
        return tiny_config(kind=kind, codebook_size=codes, num_classes=5, length=16,
                           vocab_size=codes + (2 if kind == "image_pgm" else 1),
                           mask_index=codes, cond_dim=32)
    return tiny_config(kind=kind)


def kind_forward(kind: str):
    """(model, args) -> logits for `kind`, and its inputs (batch 4)."""
    rng = np.random.default_rng(0)
    b = 4
    if kind in ("pgm", "mdlm_dit", "ar"):
        tokens = jnp.asarray(rng.integers(0, 63, (b, 32)), jnp.int32)
        if kind == "pgm":
            groups = jnp.asarray(rng.random((b, 32)) < 0.5)
            return (lambda m, t, g: m(t, g)), (tokens, groups)
        return (lambda m, t: m(t)), (tokens,)
    labels = jnp.asarray(rng.integers(0, 5, b), jnp.int32)
    drop = jnp.asarray([False, True, False, False])
    codes = rng.integers(0, 14, (b, 16))
    if kind == "maskgit":
        return (lambda m, *a: m(*a)), (jnp.asarray(codes, jnp.int32), labels, drop)
    x = jnp.asarray(np.concatenate([np.full((b, 1), 15), codes], 1), jnp.int32)
    g = (rng.random((b, 17)) < 0.5).astype(np.int32)
    g[:, 0] = 0
    return (lambda m, *a: m(*a)), (x, jnp.asarray(g), labels, drop)


def abstract_model(cfg: ModelConfig):
    """(graphdef, abstract params) of `cfg`'s model, built without running any op (each
    op-by-op compile costs seconds on a busy machine)."""
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(cfg, 0)), nnx.Param)
    return graphdef, params


def test_activation_rules_are_data():
    """Weights and activations have names of their own; LOGICAL_RULES is their union, and
    every name of the models' activation tuples is an activation rule."""
    assert not set(sharding.WEIGHT_RULES) & set(sharding.ACTIVATION_RULES)
    assert sharding.LOGICAL_RULES == {**sharding.WEIGHT_RULES, **sharding.ACTIVATION_RULES}
    rules = sharding.ACTIVATION_RULES
    assert rules["activation_batch"] == sharding.BATCH_AXES
    assert all(rules[f"activation_{n}"] == ("tensor",) for n in ("heads", "mlp", "vocab"))
    assert all(rules[f"activation_{n}"] is None for n in ("length", "embed", "kv"))
    for name, axes in ACTIVATION_TUPLES.items():
        assert set(axes) <= set(rules), name


def last_argument(text: str, start: int) -> str:
    """The last top-level argument of the call whose '(' is at text[start]."""
    depth, comma = 0, start
    for i in range(start, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return text[comma + 1:i].strip()
        elif text[i] == "," and depth == 1:
            comma = i
    raise AssertionError("unbalanced call")


def test_model_constrain_calls_use_the_named_tuples():
    """Every `sharding.constrain` call in pgm_jax/models passes one of the tuples named in
    layers.py (or an Mlp's `hidden_axes`, set from them), never literal names."""
    models = Path(sharding.__file__).parent / "models"
    allowed = {f"layers.{n}" for n in ACTIVATION_TUPLES} | set(ACTIVATION_TUPLES) | {
        "self.hidden_axes"}
    calls = []
    for path in sorted(models.glob("*.py")):
        text = path.read_text()
        calls += [(path.name, last_argument(text, m.end() - 1))
                  for m in re.finditer(r"sharding\.constrain\(", text)]
    assert len(calls) >= 8 and all(arg in allowed for _, arg in calls), calls


def test_unknown_activation_name_raises():
    x = jnp.ones((8, 4, 2))
    for bad in (("batch", None, None), ("activation_batch", "length", None)):
        with pytest.raises(KeyError, match="unknown activation logical axes"):
            sharding.constrain(x, bad)  # also without a mesh: a typo fails on one device
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    with pytest.raises(KeyError):
        jax.jit(sharding.traced_under(mesh, lambda a: sharding.constrain(a, ("embed",) * 3)))(x)


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_forward_constrains_its_activations(kind, monkeypatch):
    """Each model's forward constrains the residual stream, the heads, the MLP hidden layer
    and the logits (counted through a patched `sharding.constrain`)."""
    seen: list[tuple] = []
    real = sharding.constrain

    def counting(x, logical):
        seen.append(tuple(logical))
        return real(x, logical)

    monkeypatch.setattr(sharding, "constrain", counting)
    cfg = kind_config(kind)
    fwd, args = kind_forward(kind)
    graphdef, params = abstract_model(cfg)
    jax.eval_shape(lambda p, *a: fwd(nnx.merge(graphdef, p), *a), params, *args)
    assert {n for names in seen for n in names if n} <= set(sharding.ACTIVATION_RULES)
    for name, axes in ACTIVATION_TUPLES.items():
        assert axes in seen, f"{kind} never constrains {name}"
    blocks = cfg.encoder_blocks + cfg.decoder_blocks if "pgm" in kind else cfg.n_blocks
    assert seen.count(layers.RESIDUAL) >= blocks  # at least once per block


@pytest.fixture(scope="module")
def data_tensor_mesh():
    return sharding.make_mesh({"data": 2, "tensor": 4})


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_forward_matches_one_device(kind, data_tensor_mesh):
    """A data=2 x tensor=4 forward (weights laid out by WEIGHT_RULES, activations
    constrained by ACTIVATION_RULES) gives the one-device logits up to float32 summation
    order. Measured max |diff| (randomised weights, logits up to 7-17): PGM 2.2e-4 (1.9e-5
    of its largest logit; four blocks and GroupSwap), MDLM 1.1e-5, AR 1.0e-5, image PGM
    3.7e-5, MaskGIT 5.0e-6; the same figures as before activations had names of their own."""
    mesh = data_tensor_mesh
    cfg = kind_config(kind)
    fwd, args = kind_forward(kind)
    model = randomized_model(cfg, 0)
    graphdef = nnx.graphdef(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    run = lambda p, *a: fwd(nnx.merge(graphdef, p), *a)
    want = jax.jit(run)(params, *args)
    shardings = sharding.named(mesh, sharding.param_specs(model, mesh))
    assert any("tensor" in str(s.spec) for s in jax.tree.leaves(shardings))
    batch = [sharding.batch_sharding(mesh, a.ndim) for a in args]
    inputs = [jax.device_put(a, s) for a, s in zip(args, batch, strict=True)]
    got = jax.jit(sharding.traced_under(mesh, run), in_shardings=(shardings, *batch))(
        jax.device_put(params, shardings), *inputs)
    assert got.sharding.spec[0] in ("data", ("data",))  # the LOGITS constraint held the batch
    diff = float(jnp.max(jnp.abs(got - want)))
    print(f"{kind}: max |sharded - one device| = {diff:.3g}")
    assert diff < 1e-4 * float(jnp.max(jnp.abs(want))), diff
