"""Observability: TensorBoard event files (read back frame by frame with tensorboardX's protos and
CRC, independent of how pgm_jax writes them), JSONL metrics, throughput / ETA / time shares, and
the profiler window of a real run."""

import glob
import json
import os
import struct

import numpy as np
import pytest
from tensorboardX.crc32c import crc32c
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c

from pgm_jax import metrics, tensorboard
from pgm_jax.train import loop
from tests.test_train import tiny


def read_events(path: str) -> list:
    """Parses a TFRecord file, checking both masked CRCs of every record."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        assert crc == masked_crc32c(header)
        payload = data[pos + 12:pos + 12 + length]
        (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert crc == masked_crc32c(payload)
        out.append(Event.FromString(payload))
        pos += 16 + length
    return out


def scalars(path: str) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in the event files under `path`."""
    out: dict[str, dict[int, float]] = {}
    for file in glob.glob(os.path.join(path, "events.out.tfevents.*")):
        for e in read_events(file):
            for v in e.summary.value:
                out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def test_crc32c_is_castagnoli():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value the reader relies on
    assert crc32c(b"") == 0


def test_event_file_has_a_version_header_and_decodable_scalars(tmp_path):
    writer = tensorboard.EventWriter(str(tmp_path))
    writer.scalars(7, {"train/loss": 2.5, "train/grad_norm": float("nan")})
    writer.scalars(300_000, {"eval/ppl": 1e6})
    writer.close()
    (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*.pgm_jax"))
    header, first, second = read_events(path)
    assert header.file_version == "brain.Event:2"
    assert first.step == 7 and [v.tag for v in first.summary.value] == ["train/loss",
                                                                          "train/grad_norm"]
    assert first.summary.value[0].simple_value == 2.5
    assert np.isnan(first.summary.value[1].simple_value)
    assert second.step == 300_000 and second.summary.value[0].simple_value == 1e6
    assert second.wall_time >= first.wall_time > 1e9


def test_metrics_writer_writes_jsonl_and_tensorboard(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path))
    writer.write(5, "train", {"loss": 1.5, "note": "text is JSON only"})
    writer.write(5, "eval", {"nll": 3.0})
    writer.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["kind"]) for r in rows] == [(5, "train"), (5, "eval")]
    assert rows[0]["note"] == "text is JSON only"
    assert scalars(str(tmp_path / metrics.TB_DIR)) == {"train/loss": {5: 1.5},
                                                       "eval/nll": {5: 3.0}}
    silent = metrics.MetricsWriter(str(tmp_path / "other"), enabled=False)
    silent.write(1, "train", {"loss": 1.0})
    assert not os.path.exists(tmp_path / "other")


def test_progress_reports_throughput_eta_and_time_shares(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock[0])
    progress = metrics.Progress(total_steps=110, tokens_per_step=1000, step=10)
    with progress.phase("compile"):
        clock[0] += 30.0
    for _ in range(10):  # 10 steps: 0.1 s of data and 0.9 s of step each
        with progress.phase("data"):
            clock[0] += 0.1
        clock[0] += 0.9
    with progress.phase("eval"):
        clock[0] += 5.0
    with progress.phase("checkpoint"):
        clock[0] += 5.0
    out = progress.report(20, {"loss": 1.0})
    assert out["steps_per_s"] == pytest.approx(1.0)  # compile, eval and checkpoint excluded
    assert out["tokens_per_s"] == pytest.approx(1000.0)
    assert out["eta_s"] == pytest.approx(90 * 20.0 / 10)  # 90 steps at 2 s of wall time each
    assert out["time_compile"] == pytest.approx(30 / 50)
    assert out["time_data"] == pytest.approx(1 / 50)
    assert out["time_step"] == pytest.approx(9 / 50)
    assert out["time_eval"] == out["time_checkpoint"] == pytest.approx(5 / 50)
    clock[0] += 2.0  # the next window: 2 steps in 2 s
    assert progress.report(22, {"loss": 1.0})["steps_per_s"] == pytest.approx(1.0)


def test_a_run_writes_tensorboard_time_shares_and_a_profile(tmp_path):
    workdir = str(tmp_path)
    loop.train(tiny(num_steps=4, profile_start=2, profile_steps=2), workdir)
    profiles = glob.glob(os.path.join(workdir, "tb", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(profiles) == 1 and os.path.getsize(profiles[0]) > 0
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert sorted(train) == [1, 2, 3, 4]
    for r in train.values():
        shares = {k: v for k, v in r.items() if k.startswith("time_")}
        assert {"time_step", "time_data", "time_compile", "time_eval"} <= shares.keys()
        assert sum(shares.values()) == pytest.approx(1.0)
        assert r["grad_norm"] > 0 and r["tokens_per_s"] >= 0 and "eta_s" in r
    tb = scalars(os.path.join(workdir, "tb"))
    assert tb["train/loss"] == pytest.approx({s: r["loss"] for s, r in train.items()})
    assert sorted(tb["eval/nll"]) == [0, 4]
