"""Image models: fixture parity, parameter counts of the paper presets, partition invariance,
inference == training path, the release quirk, losses and gradients, the checkpoint converter."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import imagenet_vq
from pgm_jax import config as config_lib
from pgm_jax.interop import image_parity
from pgm_jax.interop.image_convert import (
    image_params_from_checkpoint,
    load_image_weights,
    read_image_state_dict,
)
from pgm_jax.interop.parity import check_fixture
from pgm_jax.interop.state_dict import StateDictMismatch
from pgm_jax.models import ModelConfig, build_model
from pgm_jax.models.heads import target_logprob
from pgm_jax.objectives import image as image_objectives
from pgm_jax.objectives.losses import LOSSES
from tests.helpers import randomized_model

B, SIDE, CODES, CLASSES = 3, 4, 11, 5
N = SIDE * SIDE
BOS = CODES + 1


def image_config(kind: str = "image_pgm", **overrides) -> ModelConfig:
    extra = 2 if kind == "image_pgm" else 1
    base = dict(kind=kind, vocab_size=CODES + extra, mask_index=CODES, codebook_size=CODES,
                num_classes=CLASSES, length=N, hidden_size=32, cond_dim=32, n_heads=4,
                encoder_blocks=2, decoder_blocks=2, n_blocks=2, dropout=0.0)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def pgm():
    return randomized_model(image_config(), scale=0.2)


@nnx.jit
def train_fwd(model, *args):
    return model(*args)


@nnx.jit
def infer(model, *args, quirk=False):
    return model.infer(*args, release_quirk=quirk)


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.full((B, 1), BOS), rng.integers(0, CODES, (B, N))], 1)
    g = (rng.random((B, N + 1)) < 0.5).astype(np.int32)
    g[:, 0] = 0
    labels = rng.integers(0, CLASSES, B).astype(np.int32)
    drop = np.array([False, True, False][:B])
    return x.astype(np.int32), g, labels, drop


# ----------------------------------------------------------------------------- parity
def _image_fixtures(fixtures_dir):
    dirs = [d for d in sorted(fixtures_dir.iterdir()) if (d / "hparams.json").exists()
            and image_parity.detect(json.loads((d / "hparams.json").read_text()))]
    if not dirs:
        pytest.fail(f"no image PGM / MaskGIT fixtures in {fixtures_dir}", pytrace=False)
    return dirs


@pytest.mark.parametrize("source", ["npz", "ckpt"])
def test_fixture_parity(fixtures_dir, source):
    """Every output of every image fixture (training, inference fixed + released, MaskGIT)."""
    kinds = set()
    for d in _image_fixtures(fixtures_dir):
        rows = check_fixture(d, source)
        assert rows, d
        bad = [(r.name, r.error, r.kind) for r in rows if not r.ok]
        assert not bad, (d.name, source, bad)
        names = {r.name for r in rows}
        kind = image_parity.kind_of(json.loads((d / "hparams.json").read_text()))
        kinds.add(kind)
        if kind == "image_pgm":
            assert {"train_logits", "train_loss", "inf_logits_fixed", "inf_logits_released",
                    "inf_step0_logits_released", "inf_conf_logits_fixed"} <= names
        else:
            assert {"logits", "loss"} <= names
    assert kinds == {"image_pgm", "maskgit"}


def test_an_image_output_parity_does_not_compute_fails(fixtures_dir, tmp_path):
    """Every io.npz array but the documented inputs is compared: an unknown one fails."""
    src = next(d for d in _image_fixtures(fixtures_dir)
               if image_parity.kind_of(json.loads((d / "hparams.json").read_text())) == "maskgit")
    for name in ("hparams.json", "state_dict.npz"):
        (tmp_path / name).symlink_to(src / name)
    with np.load(src / "io.npz") as z:
        io = {k: z[k] for k in z.files}
    io["logits_of_a_new_head"] = io["logits"]
    np.savez(tmp_path / "io.npz", **io)
    rows = {r.name: r for r in check_fixture(tmp_path, "npz")}
    assert not rows["logits_of_a_new_head"].ok
    assert {n for n, r in rows.items() if r.ok} == {"logits", "loss"}


def test_detect_uses_hparams_content(fixtures_dir):
    assert image_parity.kind_of({"model": "PartitionDIT (PGM image model)"}) == "image_pgm"
    assert image_parity.kind_of({"model": "Transformer (MaskGIT baseline)"}) == "maskgit"
    assert not image_parity.detect({"model": "VQModel (LlamaGen-style VQ)"})
    assert not image_parity.detect({"model_kind": "pgm"})


def test_fixture_param_counts_and_converter(fixtures_dir):
    for d in _image_fixtures(fixtures_dir):
        hp = json.loads((d / "hparams.json").read_text())
        cfg = image_parity.config_from_hparams(hp)
        params = image_params_from_checkpoint(d / "checkpoint.pth", cfg)
        assert sum(np.size(p) for p in jax.tree.leaves(params)) == hp["num_parameters"]
        model = build_model(cfg)
        load_image_weights(model, d / "state_dict.npz")
        loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        jax.tree.map(np.testing.assert_array_equal, loaded, params)
        # A state dict of the other kind names its keys.
        other = "maskgit" if cfg.kind == "image_pgm" else "image_pgm"
        with pytest.raises(StateDictMismatch, match="missing"):
            image_params_from_checkpoint(d / "state_dict.npz",
                                         image_config(other, hidden_size=cfg.hidden_size))
        pth, npz = (read_image_state_dict(d / f) for f in ("checkpoint.pth", "state_dict.npz"))
        assert pth.keys() == npz.keys()
        for k, v in npz.items():
            np.testing.assert_array_equal(pth[k], v, err_msg=k)


# ----------------------------------------------------------------------------- sizes
def _count(cfg: ModelConfig) -> int:
    model = nnx.eval_shape(lambda: build_model(cfg))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_paper_parameter_counts():
    """Spec pgm_image.md §2: both PGM variants 494.2M, MaskGIT-L 480.4M (abstract shapes)."""
    counts = {p: _count(config_lib.model_config(imagenet_vq.get_config(p)))
              for p in ("pgm_12_12", "pgm_14_10", "maskgit_l")}
    print(counts)
    assert counts == {"pgm_12_12": 494_220_290, "pgm_14_10": 494_218_242,
                      "maskgit_l": 480_443_393}
    assert round(counts["pgm_12_12"] / 1e6, 1) == round(counts["pgm_14_10"] / 1e6, 1) == 494.2
    assert round(counts["maskgit_l"] / 1e6, 1) == 480.4


def test_presets_validate():
    for preset in imagenet_vq.PRESETS:
        c = imagenet_vq.get_config(preset)
        config_lib.validate(c)
        assert c.data.source == "imagenet_vq" and c.sample.steps == 32
        assert c.sample.order == "halton" and not c.sample.release_quirk
    with pytest.raises(ValueError, match="unknown preset"):
        imagenet_vq.get_config("pgm_8_8")
    bad = image_config(vocab_size=CODES + 1)
    assert ("vocab_size", "must be codebook_size + 2 = 13 for kind=image_pgm") in bad.problems()
    assert any(f == "num_classes" for f, _ in image_config(num_classes=0).problems())


# ----------------------------------------------------------------------------- invariances
def test_predictions_read_only_the_other_group(pgm):
    x, g, labels, drop = _inputs()
    x2 = np.where((g == 1) & (np.arange(N + 1) > 0), (x + 5) % CODES, x).astype(np.int32)
    a, b, c = (np.asarray(train_fwd(pgm, *map(jnp.asarray, args))) for args in (
        (x, g, labels, drop), (x2, g, labels, drop), (x, g, (labels + 1) % CLASSES, drop)))
    assert a.shape == (B, N + 1, CODES + 2) and a.dtype == np.float32
    sel = g == 1
    np.testing.assert_allclose(a[sel], b[sel], atol=1e-5)
    assert np.abs(a[~sel] - b[~sel]).max() > 1e-3
    # The label matters, except where it is dropped (null class).
    np.testing.assert_allclose(a[drop], c[drop], atol=1e-6)
    assert np.abs(a[~drop] - c[~drop]).max() > 1e-3


def _packed(x, g, rng, pad: int):
    """Clean set {BOS} + group 0 in a random reveal order, `pad` junk keys; group-1 queries."""
    n_c = int((g == 0).sum(1).max()) + pad
    n_q = int((g == 1).sum(1).min())
    cx, cp = np.full((B, n_c), 3, np.int32), np.zeros((B, n_c), np.int32)
    valid, qp = np.zeros((B, n_c), bool), np.zeros((B, n_q), np.int32)
    for b in range(B):
        clean = np.concatenate([[0], rng.permutation(np.flatnonzero(g[b] == 0)[1:])])
        cx[b, :len(clean)], cp[b, :len(clean)], valid[b, :len(clean)] = x[b, clean], clean, True
        cp[b, len(clean):] = N  # padding: any position, hidden by clean_valid
        qp[b] = rng.permutation(np.flatnonzero(g[b] == 1))[:n_q]
    return cx, cp, valid, qp


def test_infer_equals_training_path_and_release_quirk_differs(pgm):
    x, g, labels, drop = _inputs(1)
    train = np.asarray(train_fwd(pgm, *map(jnp.asarray, (x, g, labels, drop))))
    cx, cp, valid, qp = _packed(x, g, np.random.default_rng(2), pad=3)
    call = lambda valid, quirk: np.asarray(infer(
        pgm, *map(jnp.asarray, (cx, cp, valid, qp, labels, drop)), quirk=jnp.asarray(quirk)))
    fixed = call(valid, False)
    assert fixed.shape == (B, qp.shape[1], CODES + 2)
    np.testing.assert_allclose(fixed, np.take_along_axis(train, qp[:, :, None], 1), atol=1e-4)
    quirk = call(valid, True)
    assert np.abs(quirk - fixed).max(axis=(1, 2)).min() > 1e-3  # every row changes
    # The quirk hides the last *valid* (not the last padded) key from every query.
    last = valid.sum(1) - 1
    hidden = valid.copy()
    hidden[np.arange(B), last] = False
    np.testing.assert_allclose(quirk, call(hidden, False), atol=1e-5)


def test_chunked_target_logprob_matches_full_logits():
    model = randomized_model(image_config(logits_chunk=5), scale=0.2)
    x, g, labels, drop = map(jnp.asarray, _inputs(3))
    both = nnx.jit(lambda m: (m(x, g, labels, drop), m(x, g, labels, drop, targets=x)))
    logits, lp = both(model)
    np.testing.assert_allclose(lp, target_logprob(logits, x, CODES), atol=1e-5)


# ----------------------------------------------------------------------------- losses
def test_arccos_schedule():
    p = image_objectives.arccos_ratio(jax.random.key(0), 20_000)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert abs(float(p.mean()) - 2 / np.pi) < 0.01
    groups = image_objectives.pgm_partition(jax.random.key(1), (64, N + 1))
    assert (groups[:, 0] == 0).all() and set(np.unique(groups)) <= {0, 1}
    codes = jnp.zeros((64, N), jnp.int32)
    masked, mask = image_objectives.mask_codes(jax.random.key(2), codes, CODES)
    assert ((masked == CODES) == mask).all()
    drop = image_objectives.drop_labels(jax.random.key(3), 10_000, 0.1)
    assert abs(float(drop.mean()) - 0.1) < 0.015


@pytest.mark.parametrize("kind", ["image_pgm", "maskgit"])
def test_loss_finite_and_gradients_flow(kind):
    cfg = image_config(kind, dropout=0.1, encoder_blocks=1, decoder_blocks=1, n_blocks=1)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(0, CODES, (B, N)), jnp.int32),
             "label": jnp.asarray(rng.integers(0, CLASSES, B), jnp.int32)}
    graphdef, params = nnx.split(model, nnx.Param)

    def total(p, train):
        return LOSSES[kind](nnx.merge(graphdef, p), batch, jax.random.key(1), train)

    @jax.jit  # one compiled program for the training gradient and the evaluation loss
    def run(p):
        return jax.value_and_grad(total, has_aux=True)(p, True), total(p, False)[0]

    ((nll, count), grads), eval_nll = run(params)
    assert float(count) == B * N
    if kind == "image_pgm":  # zero-initialised head: uniform over the V - 1 non-mask ids
        np.testing.assert_allclose(float(nll) / float(count), np.log(cfg.vocab_size - 1),
                                   rtol=1e-4)
    norms = np.array([float(jnp.linalg.norm(a)) for a in jax.tree.leaves(grads)])
    assert np.isfinite(norms).all() and norms.max() > 0
    assert np.isfinite(float(eval_nll)) and float(eval_nll) > 0


def test_maskgit_output_and_dropout():
    model = randomized_model(image_config("maskgit", dropout=0.1), scale=0.2)
    rng = np.random.default_rng(0)
    codes = jnp.asarray(rng.integers(0, CODES + 1, (B, N)), jnp.int32)
    labels, drop = jnp.zeros((B,), jnp.int32), jnp.zeros((B,), bool)
    a, dropped = nnx.jit(lambda m: (m(codes, labels, drop),
                                    m(codes, labels, drop, key=jax.random.key(0))))(model)
    assert a.shape == (B, N, CODES + 1) and a.dtype == jnp.float32
    assert float(jnp.abs(dropped - a).max()) > 1e-4
