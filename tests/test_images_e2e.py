"""The image path end to end: digits data, config checks, training image_pgm and maskgit through
`train.loop.train` (PNG samples), and the sample / evaluate entry points on the trained run."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import digits
from pgm_jax import config as config_lib
from pgm_jax.data import DataError
from pgm_jax.data.images import digits_pixels, digits_split, load_image_data
from pgm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO)


def tiny(algo: str = "image_pgm"):
    """configs/digits.py shrunk to seconds: 3 steps, one eval batch, one sample per class."""
    c = digits.get_config()
    c.algo = algo
    c.model.hidden_size, c.model.cond_dim, c.model.n_heads = 32, 32, 2
    c.model.encoder_blocks = c.model.decoder_blocks = 1
    c.model.n_blocks = 2
    c.train.batch_size = 16
    c.train.num_steps = 3
    c.train.log_every = 1
    c.train.eval_every = c.train.checkpoint_every = c.train.sample_every = 3
    c.train.eval_batch_size = 64
    c.train.eval_batches = 1
    c.optim.warmup_steps = 1
    c.sample.steps = 2  # few sampler shapes to compile
    c.sample.num_samples = 1
    c.sample.batch_size = 10
    return c


# ----------------------------------------------------------------------------- data
def test_digits_split_is_per_class_and_disjoint():
    from sklearn.datasets import load_digits

    train, val = digits_split(0.1)
    full = load_digits()
    assert len(train) + len(val) == len(full.target) == 1797
    counts = np.bincount(full.target)
    np.testing.assert_array_equal(np.bincount(val.labels), np.ceil(0.1 * counts).astype(int))
    # Held out: exactly the last ceil(10%) images of every class, in dataset order.
    for c in range(10):
        idx = np.flatnonzero(full.target == c)
        k = math.ceil(0.1 * len(idx))
        held = full.images[idx[-k:]].reshape(k, 64)
        np.testing.assert_array_equal(val.tokens[val.labels == c], held)
    train_rows = {r.tobytes() for r in train.tokens}
    assert not any(r.tobytes() in train_rows for r in val.tokens)  # no image in both splits
    row = train[0]
    assert row["tokens"].shape == (64,) and row["tokens"].dtype == np.int32
    assert row["label"].shape == () and row["label"].dtype == np.int32
    assert train.tokens.min() == 0 and train.tokens.max() == 16
    np.testing.assert_allclose(digits_pixels(np.array([[0] * 32 + [16] * 32])),
                               np.array([[0.0] * 32 + [1.0] * 32]).reshape(1, 8, 8))


def test_digits_batches_exact_eval_and_resumable_train():
    c = tiny()
    data = load_image_data(c.data, 64, 17, 10)
    it = data.train_iterator(16, seed=0)
    batch = next(it)
    assert batch["tokens"].shape == (16, 64) and batch["label"].shape == (16,)
    assert batch["tokens"].dtype == np.int32 and batch["label"].dtype == np.int32
    state = it.get_state()
    want = next(it)
    again = data.train_iterator(16, seed=0)
    again.set_state(state)
    got = next(again)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    # Two processes' eval batches together cover every validation image exactly once.
    parts = [list(data.eval_batches(64, p, 2)) for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == data.num_eval_batches(64) == 3
    rows = np.concatenate([np.concatenate([a["tokens"], b["tokens"]])
                           for a, b in zip(*parts, strict=True)])
    weight = np.concatenate([np.concatenate([a["weight"], b["weight"]])
                             for a, b in zip(*parts, strict=True)])
    assert weight.sum() == len(data.val) == 185
    np.testing.assert_array_equal(rows[weight > 0], data.val.tokens)
    last = parts[1][-1]
    assert last["weight"][-1] == 0 and last["tokens"][-1].sum() == 0 and "label" in last


def test_data_must_fit_the_model_keys():
    with pytest.raises(DataError, match=r"config.model.codebook_size=16 .*set "
                       r"--config.model.codebook_size=17"):
        load_image_data(tiny().data, 64, 16, 10)


def test_imagenet_vq_source_and_vq_pixels(fixtures_dir, tmp_path):
    """A prepared VQ folder (the vq_small fixture's model on random 32x32 images: 4x4 codes of
    512, 2 classes) serves int32 batches, and `vq_pixels` decodes codes to [0, 1] images."""
    from pgm_jax.data import imagenet_vq
    from pgm_jax.data.images import vq_pixels
    from pgm_jax.interop.vq_convert import vq_from_checkpoint

    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 3)):
        for name in ("cat", "dog"):
            folder = tmp_path / "imagenet" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    vq = vq_from_checkpoint(str(fixtures_dir / "vq_small" / "state_dict.npz"))
    out = str(tmp_path / "prepared")
    for split in ("train", "validation"):
        imagenet_vq.prepare_imagenet_vq(str(tmp_path / "imagenet"), vq, out, split,
                                        batch_size=4, image_size=32)
    c = tiny()
    c.data.source, c.data.path = "imagenet_vq", out
    data = load_image_data(c.data, 16, 512, 2)
    assert (len(data.train), len(data.val), data.side) == (10, 6, 4)
    batch = next(data.train_iterator(4, seed=0))
    assert batch["tokens"].shape == (4, 16) and batch["tokens"].dtype == np.int32
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= {0, 1}
    (ev,) = data.eval_batches(8)
    assert ev["weight"].sum() == 6 and data.pixels(ev["tokens"]) is None
    with pytest.raises(DataError, match=r"config.model.num_classes=10 .*has 2"):
        load_image_data(c.data, 16, 512, 10)
    images = vq_pixels(vq, ev["tokens"][:5], batch_size=4)
    assert images.shape == (5, 32, 32, 3) and 0.0 <= images.min() <= images.max() <= 1.0


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("key,value,match", [
    ("model.num_classes", 0, r"config.model.num_classes=0: must be > 0"),
    ("model.codebook_size", -1, r"config.model.codebook_size=-1: must be > 0"),
    ("sample.order", "raster", r"config.sample.order='raster': must be one of"),
    ("sample.cfg_w", -1.0, r"config.sample.cfg_w=-1.0: must be >= 0"),
    ("sample.steps", 65, r"config.sample.steps=65: must be <= model.length=64"),
    ("data.source", "pydoc", r"config.data.source='pydoc': algo=image_pgm trains on images"),
    ("model.vocab_size", 18, r"config.model.vocab_size=18: algo=image_pgm .* needs 19"),
    ("model.label_dropout", 1.0, r"config.model.label_dropout=1.0: must be in \[0, 1\)"),
    ("sample.temperature", 0.0, r"config.sample.temperature=0.0: must be > 0 for image runs"),
])
def test_bad_image_keys_name_the_key(key, value, match):
    c = tiny()
    section, leaf = key.split(".")
    c[section][leaf] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c)


def test_text_algo_refuses_image_source():
    c = tiny()
    c.algo = "pgm"
    with pytest.raises(config_lib.ConfigError, match=r"config.data.source='digits': holds "
                       r"images but algo=pgm"):
        config_lib.validate(c)


def test_image_vocabulary_comes_from_the_codebook():
    c = tiny()
    config_lib.validate(c)
    m = config_lib.model_config(c)
    assert (m.kind, m.vocab_size, m.mask_index) == ("image_pgm", 19, 17)
    c.algo = "maskgit"
    m = config_lib.model_config(c)
    assert (m.kind, m.vocab_size, m.mask_index) == ("maskgit", 18, 17)


# ----------------------------------------------------------------------------- training
def _train(algo: str, tmp_path_factory) -> tuple[str, str, dict]:
    """(algo, workdir, result) of a 3-step tiny digits run with samples at step 3."""
    workdir = str(tmp_path_factory.mktemp(algo))
    return algo, workdir, loop.train(tiny(algo), workdir)


@pytest.fixture(scope="module")
def pgm_run(tmp_path_factory):
    return _train("image_pgm", tmp_path_factory)


@pytest.fixture(scope="module")
def maskgit_run(tmp_path_factory):
    return _train("maskgit", tmp_path_factory)


@pytest.mark.parametrize("run_fixture", ["pgm_run", "maskgit_run"])
def test_training_writes_metrics_checkpoint_and_png(run_fixture, request):
    algo, workdir, result = request.getfixturevalue(run_fixture)
    assert result["step"] == 3
    assert np.isfinite(result["train"]["loss"])
    ev = result["eval"]
    assert set(ev) >= {"nll", "bits_per_token", "images"} and "ppl" not in ev
    assert ev["images"] == 64 and 0 < ev["nll"] < 2 * math.log(19)
    png = os.path.join(workdir, "samples", "step_000003.png")
    with Image.open(png) as im:  # 10 classes x 1 sample, 8x8 cells upscaled to 32x32
        assert im.size == (32 + 4, 10 * 34 + 2)
    with np.load(os.path.join(workdir, "samples", "step_000003.npz")) as z:
        assert z["codes"].shape == (10, 64) and 0 <= z["codes"].min() <= z["codes"].max() < 17
        np.testing.assert_array_equal(z["labels"], np.arange(10))
    stored = config_lib.load_run_config(workdir)
    assert stored.algo == algo and stored.model.vocab_size == (19 if algo == "image_pgm" else 18)


def test_sample_entry_point(pgm_run):
    _, workdir, _ = pgm_run
    prefix = os.path.join(workdir, "cli")
    # The training run's sampler shapes (batch 10, 2 steps, halton, guided): the persistent
    # compilation cache (conftest.py) serves them.
    out = subprocess.run(
        [sys.executable, "-m", "pgm_jax.sample", f"--workdir={workdir}", "--num_samples=2",
         "--classes=3,7", "--cfg_w=1.5", "--order=halton", "--steps=2", "--batch_size=10",
         f"--output={prefix}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(prefix + ".npz") as z:
        assert z["codes"].shape == (4, 64) and z["codes"].max() < 17
        np.testing.assert_array_equal(z["labels"], [3, 3, 7, 7])
        assert int(z["step"]) == 3 and json.loads(str(z["settings"]))["cfg_w"] == 1.5
    with Image.open(prefix + ".png") as im:
        assert im.size == (2 * 34 + 2, 2 * 34 + 2)
    bad = subprocess.run(
        [sys.executable, "-m", "pgm_jax.sample", f"--workdir={workdir}", "--top_p=0.9"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--top_p applies to text runs only" in bad.stderr
    # Temperature divides the logits for text and images alike; images have no greedy 0.
    bad = subprocess.run(
        [sys.executable, "-m", "pgm_jax.sample", f"--workdir={workdir}", "--temperature=0"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--temperature=0.0: must be > 0" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_evaluate_entry_point(pgm_run, tmp_path):
    _, workdir, result = pgm_run
    output = str(tmp_path / "eval.json")
    out = subprocess.run(
        [sys.executable, "-m", "pgm_jax.evaluate", f"--workdir={workdir}", "--max_batches=1",
         "--batch_size=64", "--inception=missing.pickle", "--fid_stats=missing.npz",
         f"--output={output}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FID skipped: data.source=digits" in out.stdout, out.stdout[-3000:]
    with open(output) as f:
        ev = json.load(f)
    assert ev["step"] == 3 and "fid" not in ev
    # The same estimator, key and batches as the run's own final evaluation.
    np.testing.assert_allclose(ev["val"]["nll"], result["eval"]["nll"], rtol=1e-4)
