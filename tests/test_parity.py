"""Parity with the official PyTorch code on every fixture directory (fp32).

Runs over `shared/fixtures/*` and every directory in the colon-separated environment variable
PGM_EXTRA_FIXTURES, with the weights of both the `.npz` files and `checkpoint.ckpt`, in
process and through `python -m pgm_jax.convert check`; nothing here knows fixture names
(directories are selected by their hparams.json). Image and VQ fixtures are also checked in
process by tests/test_image_models.py and tests/test_vq.py. Without the fixtures these tests
fail (they never skip), and every output of `io.npz` but the documented inputs is compared.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pgm_jax.interop import parity
from pgm_jax.interop.parity import OUTPUTS, WEIGHT_SOURCES, check_directories, check_fixture
from tests.conftest import require_fixtures, shared_dir

REPO = Path(__file__).resolve().parents[1]


def all_dirs() -> list[Path]:
    roots = sorted(p.parent for p in (shared_dir() / "fixtures").glob("*/hparams.json"))
    extra = [Path(p) for p in os.environ.get("PGM_EXTRA_FIXTURES", "").split(":") if p]
    return roots + extra


def text_dirs() -> list[Path]:
    return [d for d in all_dirs()
            if json.loads((d / "hparams.json").read_text()).get("model_kind") in OUTPUTS]


def first_text_dir() -> Path:
    """A text fixture directory; fails the test when there is none."""
    require_fixtures()
    dirs = text_dirs()
    if not dirs:
        pytest.fail(f"no text fixtures (hparams.json with model_kind in {sorted(OUTPUTS)}) in "
                    f"{shared_dir() / 'fixtures'}", pytrace=False)
    return dirs[0]


@pytest.mark.parametrize("source", WEIGHT_SOURCES)
@pytest.mark.parametrize("fixture", text_dirs() or [pytest.param(None, id="no-fixtures")],
                         ids=lambda p: p.name)
def test_fixture_parity(fixture, source):
    fixture = fixture or first_text_dir()  # fails when the fixtures are missing
    rows = check_fixture(fixture, source)
    cfg, io = parity.load_fixture(fixture)
    names = [r.name for r in rows]
    assert len(names) == len(set(names))
    # Every output the fixture documents, no fewer: everything in io.npz but the inputs.
    assert set(names) == set(io) - parity.INPUTS[cfg.kind]
    assert any(r.name.endswith("_ema") for r in rows), "EMA weights were not checked"
    bad = [f"{r.name}: {r.error:.3g} > {r.tolerance:.1g} ({r.kind})" for r in rows if not r.ok]
    assert not bad, "\n".join(bad)


def test_missing_fixtures_fail_instead_of_skipping(tmp_path):
    """Hardening d: with no ../shared/fixtures, the parity tests fail with a message naming the
    directory; none is skipped."""
    missing = tmp_path / "no_shared"
    repo = Path(parity.__file__).resolve().parents[2]  # the checkout whose code is under test
    env = dict(os.environ, PYTHONPATH=str(repo), PGM_SHARED_DIR=str(missing),
               PGM_EXTRA_FIXTURES="")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_parity.py", "-q", "-rs", "-p",
         "no:cacheprovider", "-k", "not missing_fixtures"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    summary = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 1, out.stdout[-3000:]
    assert f"reference fixtures not found at {missing / 'fixtures'}" in out.stdout
    assert "skipped" not in summary and "passed" not in summary, summary


def test_an_output_parity_does_not_compute_fails(tmp_path):
    """An io.npz output that no check recomputes is a failing row, not silently skipped."""
    src = first_text_dir()
    for name in ("hparams.json", "state_dict.npz", "ema_state_dict.npz"):
        (tmp_path / name).symlink_to(src / name)
    io = dict(np.load(src / "io.npz"))
    io["logits_from_a_new_head"] = io["logits_raw"]
    np.savez(tmp_path / "io.npz", **io)
    rows = {r.name: r for r in check_fixture(tmp_path, "npz")}
    assert not rows["logits_from_a_new_head"].ok
    assert all(r.ok for name, r in rows.items() if name != "logits_from_a_new_head")
    lines: list[str] = []
    checked, _, failed = check_directories([tmp_path], lines.append)
    assert (checked, failed) == (1, 1), lines


def _losses_table() -> dict:
    """The table of training losses the training loop uses, wherever it lives."""
    from pgm_jax.objectives.losses import LOSSES

    return LOSSES


def test_loss_outputs_come_from_the_training_loss(monkeypatch):
    """The fixture's loss scalars are recomputed by the training loss itself: a training loss
    off by 0.1 % fails the loss rows (and only them)."""
    fixture = first_text_dir()
    cfg, _ = parity.load_fixture(fixture)
    algo = {"pgm": "pgm", "mdlm_dit": "mdlm"}[cfg.kind]
    table = _losses_table()
    real = table[algo]

    def off(model, batch, key, train):
        total, count = real(model, batch, key, train)
        return total * 1.001, count

    monkeypatch.setitem(table, algo, off)
    jax.clear_caches()  # the jitted losses read the table when traced
    try:
        rows = check_fixture(fixture, "npz")
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    failed = {r.name for r in rows if not r.ok}
    assert failed == {"loss_train", "nelbo_val", "loss_train_ema", "nelbo_val_ema"}, failed


def test_swapped_weights_fail(tmp_path):
    """A converter that mixed up raw and EMA weights would be caught: parity must fail."""
    src = first_text_dir()
    for name in ("hparams.json", "io.npz"):
        (tmp_path / name).symlink_to(src / name)
    (tmp_path / "state_dict.npz").symlink_to(src / "ema_state_dict.npz")
    (tmp_path / "ema_state_dict.npz").symlink_to(src / "state_dict.npz")
    rows = {r.name: r for r in check_fixture(tmp_path, "npz")}
    assert not rows["logprobs_raw"].ok and not rows["logprobs_ema"].ok
    assert rows["logprobs_raw"].error > 0.1


def test_check_command_over_every_fixture_directory():
    """`python -m pgm_jax.convert check` on every fixture directory (text, image and VQ
    families, told apart by their hparams.json) prints an OK line per output and weight
    source and exits 0."""
    first_text_dir()
    dirs = all_dirs()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "pgm_jax.convert", "check", *map(str, dirs)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    for d in dirs:
        for source in WEIGHT_SOURCES:
            mine = [ln for ln in lines if ln.startswith(f"{d.name} ") and f" {source} " in ln]
            assert len(mine) >= 2 and all(ln.endswith("OK") for ln in mine), (d, source)
    assert not [ln for ln in lines if ln.startswith("SKIP")]
    assert lines[-1].startswith(f"{len(dirs)} fixture(s)")
    assert "all within tolerance" in lines[-1]


def test_check_reports_an_output_above_tolerance(tmp_path):
    src = first_text_dir()
    for name in ("hparams.json", "state_dict.npz"):
        (tmp_path / name).symlink_to(src / name)
    io = dict(np.load(src / "io.npz"))
    io["logits_raw"] = io["logits_raw"] + 1e-3  # just above the 1e-4 tolerance
    np.savez(tmp_path / "io.npz", **io)
    lines: list[str] = []
    checked, compared, failed = check_directories([tmp_path], lines.append)
    assert (checked, failed) == (1, 1) and compared >= 8
    assert [ln.split()[2] for ln in lines if ln.endswith("FAIL")] == ["logits_raw"], lines
    assert any("no ckpt weights: not checked" in ln for ln in lines)
