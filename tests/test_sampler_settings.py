"""SamplerSettings: one settings type for the text and image samplers, built from a run's
config and the flags, validated up front; a bad value is one `error:` line and exit 2 from the
entry points (before any checkpoint is read)."""

import dataclasses
import inspect
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from pgm_jax.cli import UsageError
from pgm_jax.config import model_config, save_config
from pgm_jax.sampling import generate, generate_many
from pgm_jax.sampling.image import image_samples, sample_images
from pgm_jax.sampling.settings import IMAGE_ONLY, TEXT_ONLY, SamplerSettings
from tests import test_images_e2e, test_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO)  # conftest's 8 CPU devices


def text_config():
    return test_train.tiny("pgm")  # model.length 32, sample.steps 32


def image_config():
    c = test_images_e2e.tiny("image_pgm")  # 64 pixel tokens
    c.data.source = "digits"
    return c


def build(config, **overrides) -> SamplerSettings:
    return SamplerSettings.build(config, model_config(config), **overrides)


def test_defaults_come_from_the_config_and_flags_override_them():
    c = text_config()
    c.sample.top_p, c.sample.bucket = 0.8, 8
    s = build(c, steps=4, temperature=None)
    assert (s.steps, s.top_p, s.bucket, s.temperature) == (4, 0.8, 8, c.sample.temperature)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 8
    with pytest.raises(TypeError, match="unknown sampler settings"):
        build(c, stepz=4)


def test_one_type_serves_text_and_images():
    """Text and image runs get the same type; each sampler takes exactly its keyword set."""
    text, image = build(text_config(), temperature=0.5), build(image_config(), temperature=0.5)
    assert type(text) is type(image) is SamplerSettings
    assert text.temperature == image.temperature == 0.5
    generate_args = {*inspect.signature(generate_many).parameters,
                     *inspect.signature(generate).parameters}  # generate_many passes **kwargs on
    text_kwargs = text.text_kwargs()
    assert set(text_kwargs) <= generate_args and "num_samples" not in text_kwargs
    assert not set(text_kwargs) & set(IMAGE_ONLY)
    assert text.text_fields() == {"num_samples": text.num_samples, **text_kwargs}
    image_kwargs = image.image_kwargs()
    assert set(image_kwargs) <= set(inspect.signature(sample_images).parameters)
    assert "batch_size" in inspect.signature(image_samples).parameters
    assert set(IMAGE_ONLY) <= set(image_kwargs) and not set(image_kwargs) & set(TEXT_ONLY)


@pytest.mark.parametrize("overrides,message", [
    ({"num_samples": 0}, "--num_samples=0: must be positive"),
    ({"batch_size": -1}, "--batch_size=-1: must be positive"),
    ({"top_p": 1.5}, r"--top_p=1.5: must be in \(0, 1\]"),
    ({"temperature": -1.0}, "--temperature=-1.0: must be >= 0"),
    ({"mode": "greedy"}, "--mode=greedy: must be one of efficient-uniform"),
    ({"bucket": -2}, r"--bucket=-2: must be >= 0 \(0 = automatic\)"),
    ({"steps": 5}, "--steps=5: must divide model.length=32"),
])
def test_text_values_are_checked(overrides, message):
    with pytest.raises(UsageError, match=message):
        build(text_config(), **overrides)


def test_text_greedy_and_ar_steps_are_allowed():
    assert build(text_config(), temperature=0.0).temperature == 0.0
    assert build(test_train.tiny("ar"), steps=5).steps == 5  # AR decodes left to right


@pytest.mark.parametrize("overrides,message", [
    ({"steps": 0}, r"--steps=0: must be in \[1, 64\] \(the image tokens\)"),
    ({"steps": 65}, r"--steps=65: must be in \[1, 64\]"),
    ({"cfg_w": -0.5}, "--cfg_w=-0.5: must be >= 0"),
    ({"order": "raster"}, "--order=raster: must be one of halton, confidence"),
    ({"temperature": 0.0}, "--temperature=0.0: must be > 0 for image runs"),
    ({"num_samples": 0}, "--num_samples=0: must be positive"),
])
def test_image_values_are_checked(overrides, message):
    with pytest.raises(UsageError, match=message):
        build(image_config(), **overrides)


def test_messages_name_the_flag_that_sets_the_value():
    with pytest.raises(UsageError, match="--sample_batch_size=0: must be positive"):
        SamplerSettings.build(text_config(), model_config(text_config()), batch_size=0,
                              flag_names={"batch_size": "sample_batch_size"})


def _workdir(tmp_path, name, config) -> str:
    """A run directory holding only config.json: settings are checked before any checkpoint."""
    workdir = tmp_path / name
    workdir.mkdir()
    save_config(config, str(workdir))
    return str(workdir)


def test_bad_settings_through_the_cli_are_one_line_exit_2(tmp_path):
    text = _workdir(tmp_path, "text", text_config())
    image = _workdir(tmp_path, "image", image_config())
    vq_config = image_config()
    vq_config.data.source = "imagenet_vq"
    vq = _workdir(tmp_path, "vq", vq_config)
    cases = [
        (["pgm_jax.sample", f"--workdir={text}", "--top_p=1.5"], "--top_p=1.5: must be in"),
        (["pgm_jax.sample", f"--workdir={image}", "--cfg_w=-1"], "--cfg_w=-1.0: must be >= 0"),
        (["pgm_jax.evaluate", f"--workdir={text}", "--judge=judge", "--sample_batch_size=0"],
         "--sample_batch_size=0: must be positive"),
        (["pgm_jax.evaluate", f"--workdir={vq}", "--inception=i.pickle", "--fid_stats=s.npz",
          "--vq=vq", "--steps=99"], "--steps=99: must be in [1, 64]"),
    ]

    def run(argv):
        return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, [argv for argv, _ in cases]))
    for (argv, expected), proc in zip(cases, results, strict=True):
        detail = (argv, proc.returncode, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, detail
        assert len(errors) == 1 and expected in errors[0], detail


def test_inference_mesh_puts_every_device_on_the_data_axis():
    import jax

    from pgm_jax import sharding

    assert dict(sharding.inference_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    two = sharding.inference_mesh(jax.devices()[:2])
    assert dict(two.shape) == {"data": 2, "fsdp": 1, "tensor": 1}
    assert sharding.data_parallel_size(two) == 2
