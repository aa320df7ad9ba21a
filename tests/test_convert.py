"""Checkpoint conversion: reading Lightning `.ckpt` / `.npz` reference weights (EMA named by
parameter order), key and shape checks, writing a run that sampling restores as is."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from pgm_jax import checkpoint as ckpt_lib
from pgm_jax import config as config_lib
from pgm_jax import sharding
from pgm_jax.interop import CheckpointFormatError
from pgm_jax.interop.convert import read_reference_checkpoint, read_reference_weights
from pgm_jax.interop.parity import load_fixture
from pgm_jax.interop.state_dict import BUFFERS, StateDictMismatch, state_dict_to_params
from pgm_jax.interop.workdir import convert_to_workdir
from pgm_jax.models import build_model
from pgm_jax.restore import restore_params
from tests.test_parity import first_text_dir, text_dirs
from tests.test_torch_ckpt import _FakeObject, _FakeTensor, _storage, _write_zip_ckpt

REPO = Path(__file__).resolve().parents[1]
needs_fixtures = pytest.mark.usefixtures("fixtures_dir")  # fails (not skips) without them


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _pgm_fixture() -> Path:
    first_text_dir()  # fails the test when there are no fixtures
    return next(d for d in text_dirs() if load_fixture(d)[0].kind == "pgm")


@pytest.mark.parametrize("fixture", text_dirs() or [pytest.param(None, id="no-fixtures")],
                         ids=lambda p: p.name)
def test_ckpt_raw_and_ema_equal_the_npz_twins(fixture):
    fixture = fixture or first_text_dir()
    ref = read_reference_weights(fixture / "checkpoint.ckpt")
    names = json.loads((fixture / "param_names.json").read_text())
    assert list(ref.raw) == names["state_dict_keys"]
    assert [k for k in ref.raw if k not in BUFFERS] == names["ema_shadow_params_order"]
    assert ref.lightning and ref.step > 0
    for got, twin in ((ref.raw, "state_dict.npz"), (ref.ema, "ema_state_dict.npz")):
        want = _npz(fixture / twin)
        assert set(got) == set(want)
        for k, v in want.items():
            assert got[k].tobytes() == v.tobytes(), (twin, k)


def test_npz_state_dicts_with_or_without_prefix(tmp_path):
    arrays = {"a.weight": np.ones((2, 3), np.float32), "rotary_emb.inv_freq": np.ones(2)}
    np.savez(tmp_path / "sd.npz", **{"backbone." + k: v for k, v in arrays.items()})
    ref = read_reference_weights(tmp_path / "sd.npz")
    assert list(ref.raw) == list(arrays) and ref.ema is None and not ref.lightning
    with pytest.raises(CheckpointFormatError, match="holds no EMA weights"):
        read_reference_checkpoint(tmp_path / "sd.npz", "ema")


def _lightning(tmp_path, shadow_shapes):
    """A Lightning-layout checkpoint with a pickled (unknown) OmegaConf config."""
    tensors = {"backbone.a.weight": (2, 3), "backbone.rotary_emb.inv_freq": (2,),
               "backbone.b.bias": (4,)}
    state = {k: _FakeTensor(_storage(k, np.full(s, i, np.float32), "FloatStorage"), 0, s,
                            tuple(int(np.prod(s[j + 1:])) for j in range(len(s))))
             for i, (k, s) in enumerate(tensors.items())}
    shadow = [_FakeTensor(_storage(f"e{i}", np.full(s, 10 + i, np.float32), "FloatStorage"), 0,
                          s, tuple(int(np.prod(s[j + 1:])) for j in range(len(s))))
              for i, s in enumerate(shadow_shapes)]
    obj = {"state_dict": state, "ema": {"decay": 0.9999, "shadow_params": shadow},
           "global_step": 7,
           "hyper_parameters": {"config": _FakeObject("omegaconf", "DictConfig", (), {})}}
    return _write_zip_ckpt(tmp_path / "x.ckpt", obj)


def test_ema_list_is_named_by_parameter_order(tmp_path):
    ref = read_reference_weights(_lightning(tmp_path, [(2, 3), (4,)]))
    assert ref.step == 7 and list(ref.raw) == ["a.weight", "rotary_emb.inv_freq", "b.bias"]
    assert ref.ema["a.weight"][0, 0] == 10 and ref.ema["b.bias"][0] == 11
    assert ref.ema["rotary_emb.inv_freq"][0] == 1  # the buffer is copied from the raw weights


@pytest.mark.parametrize("shapes,message", [
    ([(4,), (2, 3)], r"shadow_params\[0\] is \(4,\) but parameter a.weight is \(2, 3\)"),
    ([(2, 3)], "has 1 tensors but state_dict has 2 parameters"),
])
def test_ema_list_that_does_not_fit_is_refused(tmp_path, shapes, message):
    with pytest.raises(CheckpointFormatError, match=message):
        read_reference_weights(_lightning(tmp_path, shapes))


@needs_fixtures
@pytest.mark.parametrize("change,message", [
    (dict(encoder_blocks=3), r"missing 10: encoder\.blocks\.2\.adaLN_modulation"),
    (dict(encoder_blocks=1), r"unexpected 10: encoder\.blocks\.1\.norm1\.weight"),
    (dict(vocab_size=600), r"wrong shape 3: vocab_embed\.embedding: got \(\d+, 128\), model has "
                           r"\(600, 128\)"),
    (dict(swap_query_process_mode="mlp4"), r"missing 4: decoder\.group_swap\.query_processor\.0"),
])
def test_every_missing_extra_or_misshaped_key_is_named(change, message):
    fixture = _pgm_fixture()
    cfg, _ = load_fixture(fixture)
    model = nnx.eval_shape(lambda: build_model(dataclasses.replace(cfg, **change)))
    raw = read_reference_checkpoint(fixture / "checkpoint.ckpt")
    with pytest.raises(StateDictMismatch, match=message) as e:
        state_dict_to_params(model, raw)
    assert isinstance(e.value, CheckpointFormatError) and "\n" not in str(e.value)


@needs_fixtures
def test_converted_fixture_restores_raw_and_ema(tmp_path):
    fixture = _pgm_fixture()
    workdir = str(tmp_path / "run")
    config, step = convert_to_workdir(str(fixture / "checkpoint.ckpt"), workdir)
    hp = json.loads((fixture / "hparams.json").read_text())
    stored = config_lib.load_run_config(workdir)
    assert stored.data.bos_id == hp["bos_token_id"] and stored.algo == "pgm"
    mcfg = config_lib.model_config(stored)
    assert mcfg == load_fixture(fixture)[0]
    mesh = sharding.inference_mesh()
    abstract = nnx.eval_shape(lambda: build_model(mcfg))
    for item, npz in (("ema", "ema_state_dict.npz"), ("params", "state_dict.npz")):
        _, params, restored_step = restore_params(workdir, mcfg, mesh, None, item=item)
        want = state_dict_to_params(abstract, _npz(fixture / npz))
        assert restored_step == step
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), want)
    with pytest.raises(ckpt_lib.CheckpointError, match="already holds checkpoints"):
        convert_to_workdir(str(fixture / "checkpoint.ckpt"), workdir)
    # --weights=raw (and a single-set .npz) store the raw weights as `ema` too.
    raw = state_dict_to_params(abstract, _npz(fixture / "state_dict.npz"))
    for i, (source, weights) in enumerate((("checkpoint.ckpt", "raw"), ("state_dict.npz", "ema"))):
        other = str(tmp_path / f"other{i}")
        _, other_step = convert_to_workdir(str(fixture / source), other, weights=weights)
        _, params, _ = restore_params(other, mcfg, mesh, None, item="ema")
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), raw)
        assert other_step == (step if source.endswith(".ckpt") else 0)


@needs_fixtures
@pytest.mark.slow
def test_convert_and_sample_through_the_entry_points(tmp_path):
    """`pgm_jax.convert` on a fixture checkpoint, then `pgm_jax.sample` with no extra step;
    a preset that does not fit the checkpoint is a one-line error (exit status 2)."""
    fixture = _pgm_fixture()
    cfg, io = load_fixture(fixture)
    bos = int(io["x"][0, 0])
    workdir = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                                       capture_output=True, text=True, timeout=600)
    bad = run("pgm_jax.convert", f"--checkpoint={fixture / 'checkpoint.ckpt'}",
              "--config=configs/owt.py:pgm_8_8", f"--workdir={tmp_path / 'bad'}")
    assert bad.returncode == 2, bad.stderr[-2000:]
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: state dict does not fit the model") and "missing" in last
    assert not (tmp_path / "bad").exists()

    out = run("pgm_jax.convert", f"--checkpoint={fixture / 'checkpoint.ckpt'}",
              f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-3000:]
    out = run("pgm_jax.sample", f"--workdir={workdir}", "--num_samples=2", "--batch_size=2",
              "--steps=8")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "samples.jsonl"))]
    assert len(rows) == 2
    for r in rows:
        assert len(r["tokens"]) == cfg.length and r["tokens"][0] == bos
        assert cfg.mask_index not in r["tokens"]
