"""Image evaluation: FID / IS against float64 numpy-scipy references, streaming statistics,
the FID Inception on random weights in the real weight-file layout, PNG grids."""

from __future__ import annotations

import pickle

import jax
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from pgm_jax.eval import fid, inception
from pgm_jax.sampling import grid
from pgm_jax.sharding import make_mesh

SIZE = 75  # the smallest input every InceptionV3 stage accepts: keeps the CPU forward fast


# ----------------------------------------------------------------------------- FID
def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Independent float64 FID: tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _features(seed: int, n: int = 400, d: int = 32, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix + shift).astype(np.float32)


def test_fid_matches_float64_scipy_reference():
    a, b = _features(0), _features(1, n=300, shift=0.3)
    expected = _reference_fid(a, b)
    # pytorch-fid's formula verbatim, with scipy's sqrtm
    mu1, mu2 = a.astype(np.float64).mean(0), b.astype(np.float64).mean(0)
    s1, s2 = np.cov(a.astype(np.float64), rowvar=False), np.cov(b.astype(np.float64),
                                                                 rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    pytorch_fid = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean)
    got = fid.fid_from_features(a, b)
    assert got == pytest.approx(expected, rel=1e-8)
    assert got == pytest.approx(pytorch_fid, rel=1e-10)
    assert got > 1.0
    assert fid.fid_from_stats(*fid.feature_stats(a), *fid.feature_stats(b)) == got
    assert fid.fid_from_features(a, b, method="eigh") == pytest.approx(expected, rel=1e-10)


def test_fid_identical_sets_and_closed_form():
    a = _features(2)
    assert abs(fid.fid_from_features(a, a)) < 1e-6
    assert abs(fid.fid_from_features(a, a, method="eigh")) < 1e-6
    # diagonal Gaussians: FID = |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    assert fid.fid_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(5.0 + 2.0)
    with pytest.raises(ValueError, match="do not match"):
        fid.fid_from_stats(mu1, np.diag(v1), np.zeros(4), np.eye(4))


def test_fid_singular_covariance_is_finite():
    # fewer samples than dimensions: rank-deficient covariances, sqrtm needs the eps retry
    a, b = _features(3, n=10, d=32), _features(4, n=12, d=32)
    value = fid.fid_from_features(a, b)
    assert np.isfinite(value) and value > 0


def test_accumulator_equals_one_shot_and_merges():
    feats = _features(5, n=257, d=24) * 10 + 100  # offset: a naive sum-of-squares would cancel
    acc = fid.FeatureAccumulator()
    for lo, hi in [(0, 1), (1, 64), (64, 64), (64, 200), (200, 257)]:
        acc.update(feats[lo:hi])
    mu, sigma = acc.stats()
    assert acc.count == 257
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False),
                               rtol=1e-9, atol=1e-9)
    left, right = fid.FeatureAccumulator(), fid.FeatureAccumulator()
    left.update(feats[:100])
    right.update(feats[100:])
    left.merge(right)
    np.testing.assert_allclose(left.stats()[1], sigma, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="batch, 24"):
        acc.update(feats[:, :3])


def test_stats_files(tmp_path):
    mu, sigma = fid.feature_stats(_features(6, d=8))
    path = tmp_path / "ref.npz"
    fid.save_stats(path, mu, sigma)
    got_mu, got_sigma = fid.load_stats(path)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    with pytest.raises(fid.StatsFileError, match="missing.npz: FID reference statistics not"):
        fid.load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mu=mu)
    with pytest.raises(fid.StatsFileError, match="need keys mu and sigma"):
        fid.load_stats(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------- IS
def _reference_is(logits: np.ndarray, splits: int, seed: int) -> float:
    """torch-fidelity's loop, in float64 numpy, with the same permutation."""
    x = logits[np.random.default_rng(seed).permutation(len(logits))].astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, scores = len(x), []
    for i in range(splits):
        chunk = p[i * n // splits:(i + 1) * n // splits]
        q = chunk.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(chunk * (np.log(chunk) - np.log(q)), 1))))
    return float(np.mean(scores))


def test_inception_score_uniform_one_hot_and_reference():
    classes = 12
    assert fid.inception_score(np.zeros((50, classes)), splits=5)[0] == pytest.approx(1.0)
    one_hot = 50.0 * np.eye(classes)[np.arange(120) % classes]  # confident, all classes equally
    mean, std = fid.inception_score(one_hot, splits=1)
    assert mean == pytest.approx(classes, rel=1e-6) and std == 0.0
    logits = np.random.default_rng(0).normal(0, 3, (103, classes))
    assert fid.inception_score(logits, splits=10, seed=3)[0] == pytest.approx(
        _reference_is(logits, 10, 3), rel=1e-12)
    with pytest.raises(ValueError, match="cannot make 10 splits"):
        fid.inception_score(logits[:5])


def test_is_accumulator_equals_one_shot():
    logits = np.random.default_rng(1).normal(0, 3, (103, 17)).astype(np.float32)
    acc = fid.ISAccumulator(103, splits=10, seed=7)
    for lo, hi in [(0, 40), (40, 41), (41, 103)]:
        acc.update(logits[lo:hi])
    mean, std = acc.score()
    ref_mean, ref_std = fid.inception_score(logits, splits=10, seed=7)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, rel=1e-8, abs=1e-12)
    with pytest.raises(ValueError, match="got 104 samples"):
        acc.update(logits[:1])


# ----------------------------------------------------------------------------- Inception
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weights written as jax-fid's plain pickle: the real layout, keys and shapes."""
    tree = inception.random_inception_weights(seed=0)
    path = tmp_path_factory.mktemp("inception") / inception.WEIGHTS_FILE
    inception.save_inception_weights(path, tree)
    return tree, path


@pytest.fixture(scope="module")
def model(weights):
    return inception.load_inception(weights[1])


def test_layout_matches_fid_inception(weights):
    layout = inception.weights_layout()
    assert len(layout) == 94 * 5 + 2  # 94 conv+BN layers (kernel, scale, bias, mean, var) + fc
    assert layout[("Conv2d_1a_3x3", "conv", "kernel")] == (3, 3, 3, 32)
    assert layout[("Mixed_7c", "branch_pool", "bn", "var")] == (192,)
    assert layout[("fc", "kernel")] == (2048, 1008)
    assert sum(np.prod(s) for s in layout.values()) == 23_885_392
    assert weights[1].name == "inception_v3_weights_fid.pickle"


def test_forward_shapes_sharded_equals_unsharded(model, weights):
    images = np.random.default_rng(0).uniform(-1, 1, (3, 40, 40, 3)).astype(np.float32)
    mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
    sharded = inception.InceptionExtractor(model, mesh=mesh, batch_size=2, size=SIZE)
    feats, logits = sharded(images)  # two batches of 2, the second padded
    assert feats.shape == (3, 2048) and logits.shape == (3, 1008)
    assert feats.dtype == logits.dtype == np.float32
    assert np.isfinite(feats).all() and np.isfinite(logits).all() and feats.std() > 0
    assert (feats >= 0).all()  # mean of ReLU outputs
    fc = weights[0]["fc"]["kernel"].astype(np.float64)
    np.testing.assert_allclose(logits, feats.astype(np.float64) @ fc, rtol=2e-4, atol=2e-4)
    plain = inception.InceptionExtractor(model, batch_size=2, size=SIZE)
    plain_feats, plain_logits = plain(images)
    np.testing.assert_allclose(plain_feats, feats, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plain_logits, logits, rtol=1e-5, atol=1e-4)


def test_pgm_preprocessing():
    flat = np.full((1, 8, 8, 3), 0.0, np.float32)
    out = inception.pgm_host_preprocess(flat, size=8)
    assert out.dtype == np.uint8 and (out == 127).all()  # 127.5 truncated, as .to(torch.uint8)
    ramp = np.linspace(0, 255, 16 * 16 * 3).reshape(1, 16, 16, 3).astype(np.uint8)
    np.testing.assert_array_equal(inception.pgm_host_preprocess(ramp, size=16), ramp)
    resized = inception.pgm_host_preprocess(np.full((2, 10, 12, 3), 200, np.uint8), size=SIZE)
    assert resized.shape == (2, SIZE, SIZE, 3) and (resized == 200).all()
    x = np.asarray(inception._normalize(np.array([[[[0, 128, 255]]]], np.uint8), "pgm", 1))
    np.testing.assert_allclose(x.ravel(), [-1.0, 0.0, 127 / 128])
    y = np.asarray(inception._normalize(np.zeros((1, 4, 6, 3), np.uint8), "fidjax", 9))
    assert y.shape == (1, 9, 9, 3)
    np.testing.assert_allclose(y, -1.0, atol=1e-6)


def test_weight_file_errors(tmp_path, weights):
    missing = tmp_path / "inception_v3_weights_fid.pickle"
    with pytest.raises(inception.InceptionWeightsError, match="not found.*pt_inception"):
        inception.load_inception(missing)
    tree = {k: dict(v) for k, v in weights[0].items()}
    tree["fc"] = {"kernel": np.zeros((2048, 1000), np.float32), "bias": np.zeros(1000)}
    del tree["Mixed_5b"]
    bad = tmp_path / "bad.pickle"
    inception.save_inception_weights(bad, tree)
    with pytest.raises(inception.InceptionWeightsError,
                       match=r"bad.pickle: not the FID Inception layout: 35 missing .*"
                             r"fc/kernel \(2048, 1000\) \(expected \(2048, 1008\)\)"):
        inception.load_inception(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps({"fc": Evil()}))
    with pytest.raises(inception.InceptionWeightsError, match="refusing global 'builtins.print'"):
        inception.load_inception(evil)
    with pytest.raises(ValueError, match="at least 75x75"):
        inception.InceptionExtractor(None, size=32)


def test_torch_state_dict_conversion(weights):
    tree = weights[0]
    state = {"AuxLogits.fc.weight": np.zeros((1, 1)), "fc.weight": tree["fc"]["kernel"].T,
             "fc.bias": tree["fc"]["bias"]}
    for block in ("Conv2d_1a_3x3", "Mixed_7c.branch3x3_2a"):
        node = tree
        for key in block.split("."):
            node = node[key]
        state[f"{block}.conv.weight"] = node["conv"]["kernel"].transpose(3, 2, 0, 1)  # OIHW
        for torch_name, name in [("weight", "scale"), ("bias", "bias"),
                                 ("running_mean", "mean"), ("running_var", "var")]:
            state[f"{block}.bn.{torch_name}"] = node["bn"][name]
        state[f"{block}.bn.num_batches_tracked"] = np.array(0)
    got = inception.tree_from_torch_state_dict(state)
    np.testing.assert_array_equal(got["Conv2d_1a_3x3"]["conv"]["kernel"],
                                  tree["Conv2d_1a_3x3"]["conv"]["kernel"])
    np.testing.assert_array_equal(got["Mixed_7c"]["branch3x3_2a"]["bn"]["var"],
                                  tree["Mixed_7c"]["branch3x3_2a"]["bn"]["var"])
    np.testing.assert_array_equal(got["fc"]["kernel"], tree["fc"]["kernel"])
    assert "AuxLogits" not in got
    with pytest.raises(inception.InceptionWeightsError, match="unexpected key 'Mixed_5b.foo'"):
        inception.tree_from_torch_state_dict({"Mixed_5b.foo": np.zeros(1)})


def test_weight_file_kinds_read_alike(tmp_path, weights):
    """torch.save zip (pytorch-fid .pth), npz and pickle all give the pickle layout."""
    from tests.test_torch_ckpt import _FakeTensor, _storage, _write_zip_ckpt

    node = weights[0]["Mixed_6a"]["branch3x3"]
    oihw = np.ascontiguousarray(node["conv"]["kernel"].transpose(3, 2, 0, 1))
    state = {"Mixed_6a.branch3x3.conv.weight": oihw,
             "Mixed_6a.branch3x3.bn.running_var": node["bn"]["var"]}
    tensors = {k: _FakeTensor(_storage(str(i), v.ravel(), "FloatStorage"), 0, v.shape,
                              tuple(s // 4 for s in v.strides))
               for i, (k, v) in enumerate(state.items())}
    pth = _write_zip_ckpt(tmp_path / "pt_inception-2015-12-05-6726825d.pth", tensors)
    npz = tmp_path / "weights.npz"
    inception.save_inception_weights(npz, {"Mixed_6a": {"branch3x3": node}})
    for path in (pth, npz):
        got = inception._read_tree(str(path))["Mixed_6a"]["branch3x3"]
        np.testing.assert_array_equal(got["conv"]["kernel"], node["conv"]["kernel"])
        np.testing.assert_array_equal(got["bn"]["var"], node["bn"]["var"])


# ----------------------------------------------------------------------------- grids
def test_grid_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "grid.png"
    out = grid.save_grid(images, path, nrow=3, pad=2, upscale=2)
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back, out)
    assert back.shape == (2 * (8 + 2) + 2, 3 * (12 + 2) + 2, 3)
    # image 4 sits in row 1, column 1, each pixel repeated 2x2; padding is black
    tile = back[2 + 10:2 + 10 + 8, 2 + 14:2 + 14 + 12]
    np.testing.assert_array_equal(tile, images[4].repeat(2, 0).repeat(2, 1))
    assert (back[:2] == 0).all() and (back[12:, 30:] == 0).all()  # frame, empty last cell

    floats = np.stack([-np.ones((2, 2, 3)), np.ones((2, 2, 3))]).astype(np.float32)
    g = grid.make_grid(floats, nrow=2, pad=0)
    assert (g[:, :2] == 0).all() and (g[:, 2:] == 255).all()
    g01 = grid.make_grid(floats.clip(0, 1) * 0.5, nrow=2, pad=0, value_range=(0.0, 1.0))
    assert (g01[:, 2:] == 128).all()
    gray = grid.save_grid(np.zeros((2, 3, 3), np.uint8), tmp_path / "gray.png", pad=1)
    assert np.asarray(Image.open(tmp_path / "gray.png")).shape == gray.shape[:2]


def test_class_grid_rows_are_classes(tmp_path):
    a = np.zeros((3, 2, 2, 3), np.uint8)
    b = np.full((2, 2, 2, 3), 255, np.uint8)
    out = grid.class_grid({7: a, 3: b}, tmp_path / "classes.png", pad=1, pad_value=9)
    back = np.asarray(Image.open(tmp_path / "classes.png"))
    np.testing.assert_array_equal(back, out)
    assert back.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert (back[1:3, 1:9] != 255).all() and (back[4:6, 1:3] == 255).all()
    assert (back[4:6, 7:9] == 9).all()  # class 3 has only two samples
    with pytest.raises(ValueError, match="different image shapes"):
        grid.class_grid([a, np.zeros((1, 3, 3, 3), np.uint8)])
