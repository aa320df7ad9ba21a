"""Parity with the official PyTorch code on every fixture directory (fp32).

Runs over `shared/fixtures/*` and every directory in the colon-separated environment variable
PGM_EXTRA_FIXTURES, with the weights of both the `.npz` files and `checkpoint.ckpt`, in
process and through `python -m pgm_jax.convert check`; nothing here knows fixture names
(directories are selected by their hparams.json). Image and VQ fixtures are also checked in
process by tests/test_image_models.py and tests/test_vq.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgm_jax.interop.parity import OUTPUTS, WEIGHT_SOURCES, check_directories, check_fixture
from tests.conftest import shared_dir

REPO = Path(__file__).resolve().parents[1]


def all_dirs() -> list[Path]:
    roots = sorted(p.parent for p in (shared_dir() / "fixtures").glob("*/hparams.json"))
    extra = [Path(p) for p in os.environ.get("PGM_EXTRA_FIXTURES", "").split(":") if p]
    return roots + extra


def text_dirs() -> list[Path]:
    return [d for d in all_dirs()
            if json.loads((d / "hparams.json").read_text()).get("model_kind") in OUTPUTS]


@pytest.mark.parametrize("source", WEIGHT_SOURCES)
@pytest.mark.parametrize("fixture", text_dirs(), ids=lambda p: p.name)
def test_fixture_parity(fixture, source):
    rows = check_fixture(fixture, source)
    assert len(rows) >= 8, f"too few outputs compared in {fixture}: {[r.name for r in rows]}"
    assert any(r.name.endswith("_ema") for r in rows), "EMA weights were not checked"
    bad = [f"{r.name}: {r.error:.3g} > {r.tolerance:.1g} ({r.kind})" for r in rows if not r.ok]
    assert not bad, "\n".join(bad)


@pytest.mark.skipif(not text_dirs(), reason="no text fixtures")
def test_swapped_weights_fail(tmp_path):
    """A converter that mixed up raw and EMA weights would be caught: parity must fail."""
    src = text_dirs()[0]
    for name in ("hparams.json", "io.npz"):
        (tmp_path / name).symlink_to(src / name)
    (tmp_path / "state_dict.npz").symlink_to(src / "ema_state_dict.npz")
    (tmp_path / "ema_state_dict.npz").symlink_to(src / "state_dict.npz")
    rows = {r.name: r for r in check_fixture(tmp_path, "npz")}
    assert not rows["logprobs_raw"].ok and not rows["logprobs_ema"].ok
    assert rows["logprobs_raw"].error > 0.1


@pytest.mark.skipif(not text_dirs(), reason="no text fixtures")
def test_check_command_over_every_fixture_directory():
    """`python -m pgm_jax.convert check` on every fixture directory (text, image and VQ
    families, told apart by their hparams.json) prints an OK line per output and weight
    source and exits 0."""
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


@pytest.mark.skipif(not text_dirs(), reason="no text fixtures")
def test_check_reports_an_output_above_tolerance(tmp_path):
    src = text_dirs()[0]
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
