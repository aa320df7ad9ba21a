"""Parity with the official PyTorch code on every text fixture directory (fp32).

Runs over `shared/fixtures/*` (text model kinds) and every directory in the colon-separated
environment variable PGM_EXTRA_FIXTURES; nothing here knows fixture names.
"""

import json
import os
from pathlib import Path

import pytest

from pgm_jax.interop.parity import check_fixture
from tests.conftest import shared_dir

TEXT_KINDS = ("pgm", "mdlm_dit")


def fixture_dirs() -> list[Path]:
    roots = sorted((shared_dir() / "fixtures").glob("*/hparams.json"))
    extra = [Path(p) / "hparams.json" for p in os.environ.get("PGM_EXTRA_FIXTURES", "").split(":")
             if p]
    return [p.parent for p in roots + extra
            if json.loads(p.read_text()).get("model_kind") in TEXT_KINDS]


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_fixture_parity(fixture):
    rows = check_fixture(fixture)
    assert len(rows) >= 8, f"too few outputs compared in {fixture}: {[r.name for r in rows]}"
    bad = [f"{r.name}: {r.error:.3g} > {r.tolerance:.1g} ({r.kind})" for r in rows if not r.ok]
    assert not bad, "\n".join(bad)
