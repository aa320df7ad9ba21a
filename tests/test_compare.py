"""benchmarks/compare.py end to end at a tiny size: table, JSON, plot, cache, bad flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ARGS = ["--models=pgm,mdlm", "--steps=50", "--no_sweep", "--size=tiny", "--length=32",
        "--evals=1", "--sample_batch=8"]


def compare(out: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.compare", *ARGS, *extra,
                           f"--output={out}"], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compare"))
    proc = compare(out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc


def test_table_json_plot(result):
    out, proc = result
    with open(os.path.join(out, "compare.json")) as f:
        rows = json.load(f)["rows"]
    assert [r["model"] for r in rows] == ["pgm", "mdlm"]
    from configs import demo

    for r in rows:
        assert r["lr"] == demo.LEARNING_RATES[r["model"]]  # --no_sweep: the recorded rates
        assert 1.0 < r["val_ppl"] < 600.0  # below uniform over the 513-token vocabulary
        assert r["val_tokens"] > 0 and r["latency_s"] > 0 and r["tokens_per_s"] > 0
        assert abs(r["params_ratio"] - 1.0) <= 0.1
        steps = [p["step"] for p in r["curve"]]
        assert steps[0] == 0 and steps[-1] == 50 and r["curve"][-1]["ppl"] < r["curve"][0]["ppl"]
        assert r["train_tokens"] == 50 * 8 * 32
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(os.path.join(out, "compare.md")).read()
    assert md.startswith("| model | params | val ppl") and "| mdlm |" in md
    assert "params pgm" in proc.stdout and "ETA" in proc.stdout
    # The same tokenizer in every run: the same tokens.
    toks = {open(os.path.join(r["workdir"], "tokenizer.model"), "rb").read() for r in rows}
    assert len(toks) == 1


def test_rerun_is_cached(result):
    out, _ = result
    logs = [os.path.join(out, "runs", d, "compare.log") for d in os.listdir(
        os.path.join(out, "runs"))]
    before = [open(p).read() for p in logs]
    proc = compare(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [open(p).read() for p in logs] == before  # no subprocess ran again


def test_bad_models_flag(tmp_path):
    proc = compare(str(tmp_path), "--models=pgm,gpt")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --models=")
    assert "Traceback" not in proc.stderr
