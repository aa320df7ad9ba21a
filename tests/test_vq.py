"""The LlamaGen VQ tokenizer: fixture parity, conversion, and ImageNet -> VQ-code preparation."""

import dataclasses
import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from pgm_jax.data import imagenet_vq
from pgm_jax.data.errors import DataError
from pgm_jax.interop import vq_convert, vq_parity
from pgm_jax.interop.parity import check_fixture
from pgm_jax.interop.state_dict import StateDictMismatch
from pgm_jax.models.vq import VQConfig, abstract_vq, build_vq, jit_method


@pytest.fixture(scope="module")
def vq_dir(fixtures_dir):
    d = fixtures_dir / "vq_small"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


@pytest.fixture(scope="module")
def vq_model(vq_dir):
    return vq_convert.vq_from_checkpoint(vq_dir / "state_dict.npz")


def _params(model) -> dict:
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("source", ["npz", "ckpt"])
def test_parity_through_generic_check(vq_dir, source):
    rows = check_fixture(vq_dir, source)  # dispatched to vq_parity by hparams content
    names = {r.name for r in rows}
    assert {"codes", "enc_latent", "quant", "recon", "decoded"} <= names
    bad = [(r.name, r.error, r.tolerance) for r in rows if not r.ok]
    assert not bad, bad


def test_detect_by_content(vq_dir, fixtures_dir):
    assert vq_parity.detect(json.loads((vq_dir / "hparams.json").read_text()))
    others = [p for p in fixtures_dir.glob("*/hparams.json") if p.parent != vq_dir]
    assert others and not any(vq_parity.detect(json.loads(p.read_text())) for p in others)


def test_real_model_config_and_size():
    cfg = VQConfig.from_hparams({"ch": 128, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 2,
                                 "z_channels": 256, "codebook_size": 16384,
                                 "codebook_embed_dim": 8})
    assert cfg == VQConfig() and cfg.num_res_blocks_decoder == 3 and cfg.latent_side == 32
    n = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(
        nnx.state(abstract_vq(cfg), nnx.Param)))
    assert round(n / 1e6, 2) == 70.11  # spec §1.3 (state dict minus the usage buffer)
    with pytest.raises(ValueError, match="groupnorm_groups"):
        VQConfig(ch=48).validate()


def test_build_vq_ranges():
    model = build_vq(VQConfig(ch=32, ch_mult=(1, 2), num_res_blocks_encoder=1,
                              num_res_blocks_decoder=1, z_channels=32, codebook_size=64), seed=3)
    kernel = np.asarray(model.encoder.conv_blocks[1].res[0].conv1.kernel[...])  # fan_in 288
    assert kernel.shape == (3, 3, 32, 64) and 0 < np.abs(kernel).max() <= 1 / np.sqrt(288)
    assert np.all(np.asarray(model.decoder.norm_out.scale[...]) == 1)
    assert np.abs(np.asarray(model.quantize.embedding[...])).max() <= 1 / 64


def test_encode_decode_shapes(vq_model):
    images = np.random.default_rng(0).uniform(-1, 1, (1, 48, 32, 3)).astype(np.float32)
    codes, quant = vq_model.encode(images)
    assert codes.shape == (1, 6, 4) and codes.dtype == np.int32
    assert quant.shape == (1, 6, 4, 8)
    np.testing.assert_allclose(np.linalg.norm(quant, axis=-1), 1.0, atol=1e-5)
    assert int(codes.min()) >= 0 and int(codes.max()) < vq_model.cfg.codebook_size
    assert vq_model.decode(quant).shape == (1, 48, 32, 3)
    np.testing.assert_allclose(vq_model.decode_codes(codes), vq_model.decode(quant), atol=1e-5)


def test_convert_round_trip_and_errors(vq_dir, vq_model, tmp_path):
    out = tmp_path / "vq"
    vq_convert.convert_vq_main(str(vq_dir / "checkpoint.pt"), str(out))
    loaded = vq_convert.load_vq(out)
    assert loaded.cfg == vq_model.cfg
    ours, ref = _params(loaded), _params(vq_model)
    assert ours.keys() == ref.keys()
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)
    assert vq_convert.vq_from_checkpoint(out).cfg == vq_model.cfg

    state = vq_convert.read_vq_state_dict(vq_dir / "state_dict.npz")
    del state["decoder.conv_out.bias"]
    with pytest.raises(StateDictMismatch, match=r"missing 1: decoder\.conv_out\.bias"):
        vq_convert.vq_from_state_dict(state, vq_model.cfg)
    wrong = VQConfig.from_hparams({**vq_model.cfg.to_dict(), "z_channels": 64})
    with pytest.raises(StateDictMismatch, match="wrong shape"):
        vq_convert.vq_from_state_dict(state | {"decoder.conv_out.bias": np.zeros(3)}, wrong)
    with pytest.raises(vq_convert.CheckpointFormatError, match="--output"):
        vq_convert.convert_vq_main(str(vq_dir / "checkpoint.pt"), None)
    with pytest.raises(vq_convert.CheckpointFormatError, match="convert the VQ weights"):
        vq_convert.load_vq(tmp_path)
    fast = vq_convert.vq_from_checkpoint(out, dataclasses.replace(vq_model.cfg, precision="high"))
    assert fast.cfg.precision == "high" and fast.encoder.conv_in.precision == "high"
    with pytest.raises(vq_convert.CheckpointFormatError, match="architecture"):
        vq_convert.vq_from_checkpoint(out, wrong)


def test_preprocess_matches_torchvision_rules():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
    x = imagenet_vq.preprocess(Image.fromarray(pixels), 32)  # already S x S: no resize
    np.testing.assert_array_equal(x, (pixels.astype(np.float32) / 255 - 0.5) / 0.5)
    wide = Image.fromarray(rng.integers(0, 256, (36, 41, 3), np.uint8))  # h 36, w 41
    # Resize(32): short side 36 -> 32, long int(32 * 41 / 36) = 36; crop left round(2.0) = 2.
    manual = wide.resize((36, 32), Image.BILINEAR).crop((2, 0, 34, 32))
    np.testing.assert_array_equal(imagenet_vq.preprocess(wide, 32),
                                  np.asarray(manual, np.float32) / 255 * 2 - 1)
    assert imagenet_vq.preprocess(Image.fromarray(pixels[..., 0]), 16).shape == (16, 16, 3)


def _image_tree(root, rng) -> dict[str, list[tuple[str, int]]]:
    """root/{train,val}/{cat,dog}/*.png of assorted sizes and modes; (path, label) per split."""
    sizes = {"train": [(40, 36), (32, 48), (33, 33)], "val": [(32, 32)]}
    files: dict[str, list[tuple[str, int]]] = {}
    for split, shapes in sizes.items():
        for label, name in enumerate(["cat", "dog"]):  # sorted folder names -> 0, 1
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate(shapes[: 2 + label]):
                path = folder / f"{i}.png"
                mode_gray = i == 1 and label == 1
                shape = (h, w) if mode_gray else (h, w, 3)
                Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(path)
                files.setdefault(split, []).append((str(path), label))
    return files


def test_prepare_imagenet_vq_round_trip(vq_model, tmp_path):
    files = _image_tree(tmp_path / "imagenet", np.random.default_rng(2))
    out = str(tmp_path / "prepared")
    kwargs = dict(batch_size=4, image_size=32, shard_size=3)
    manifest = imagenet_vq.prepare_imagenet_vq(str(tmp_path / "imagenet"), vq_model, out,
                                               "train", **kwargs)
    assert (manifest["side"], manifest["num_tokens"], manifest["codebook_size"]) == (4, 16, 512)
    assert manifest["num_classes"] == 2 and manifest["class_names"] == ["cat", "dog"]
    assert manifest["splits"]["train"]["examples"] == 5
    assert len(manifest["splits"]["train"]["files"]) == 2  # 5 images, 3 per shard

    shard = os.path.join(out, manifest["splits"]["train"]["files"][0])
    mtime = os.path.getmtime(shard)
    imagenet_vq.prepare_imagenet_vq(str(tmp_path / "imagenet"), vq_model, out, "validation",
                                    **kwargs)
    again = imagenet_vq.prepare_imagenet_vq(str(tmp_path / "imagenet"), vq_model, out, "train",
                                            **kwargs)  # resumes: nothing left to encode
    assert os.path.getmtime(shard) == mtime and set(again["splits"]) == {"train", "validation"}

    encode = jit_method(vq_model, "encode")
    for split, folder in (("train", "train"), ("validation", "val")):
        source, _ = imagenet_vq.open_split(out, split)
        expected = files[folder]
        assert len(source) == len(expected)
        images = np.zeros((8, 32, 32, 3), np.float32)
        images[:len(expected)] = [imagenet_vq.preprocess(Image.open(p), 32) for p, _ in expected]
        # Batches of 4, the prepared batch size: the same compiled program.
        codes = np.concatenate([encode(images[:4])[0], encode(images[4:])[0]]).reshape(8, -1)
        for i, (_, label) in enumerate(expected):
            item = source[i]
            assert item["tokens"].dtype == np.int32 and item["label"].dtype == np.int32
            np.testing.assert_array_equal(item["tokens"], codes[i])
            assert int(item["label"]) == label
    with pytest.raises(DataError, match="another --output"):  # a split of another grid
        imagenet_vq.prepare_imagenet_vq(str(tmp_path / "imagenet"), vq_model, out, "validation",
                                        batch_size=4, image_size=16)


def _tfds_imagenet(data_dir, files: list[tuple[str, int]]) -> None:
    """A TFDS `imagenet2012` (ArrayRecord, built without TensorFlow) of `files` as train."""
    import tensorflow_datasets as tfds

    class Imagenet2012(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("5.1.0")
        name = "imagenet2012"

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="png"),
                "label": tfds.features.ClassLabel(names=["n0", "n1"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for path, label in files:
                yield path, {"image": path, "label": label}

    Imagenet2012(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_prepare_from_tfds_data_dir(vq_model, tmp_path):
    files = _image_tree(tmp_path / "imagenet", np.random.default_rng(3))["train"][:4]
    _tfds_imagenet(tmp_path / "tfds", files)
    out = str(tmp_path / "prepared")
    manifest = imagenet_vq.prepare_imagenet_vq(str(tmp_path / "tfds"), vq_model, out, "train",
                                               batch_size=4, image_size=32)
    assert manifest["class_names"] == ["n0", "n1"] and manifest["splits"]["train"]["examples"] == 4
    tfds_images = imagenet_vq.find_images(str(tmp_path / "tfds"), "train")  # TFDS's own order
    images = np.stack([tfds_images.load(i, 32)[0] for i in range(4)])
    codes = np.asarray(jit_method(vq_model, "encode")(images)[0]).reshape(4, -1)
    source, _ = imagenet_vq.open_split(out, "train")
    for i in range(4):
        np.testing.assert_array_equal(source[i]["tokens"], codes[i])
        assert int(source[i]["label"]) == tfds_images.load(i, 32)[1]
    assert sorted(int(source[i]["label"]) for i in range(4)) == sorted(y for _, y in files)


def test_missing_or_bad_data_is_a_clear_error(vq_model, tmp_path):
    with pytest.raises(DataError, match="prepare imagenet_vq"):
        imagenet_vq.open_split(str(tmp_path / "nothing"), "train")
    with pytest.raises(DataError, match="does not exist"):
        imagenet_vq.prepare_imagenet_vq(str(tmp_path / "nothing"), vq_model, str(tmp_path / "o"))
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(loose / "a.png")
    with pytest.raises(DataError, match="class folders"):
        imagenet_vq.find_images(str(loose), "train")
    (tmp_path / "splits" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no validation or val/ folder"):
        imagenet_vq.find_images(str(tmp_path / "splits"), "validation")
    with pytest.raises(DataError, match="image size 30"):
        imagenet_vq.prepare_imagenet_vq(str(loose), vq_model, str(tmp_path / "o"),
                                        image_size=30)
