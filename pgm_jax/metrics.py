"""Run metrics: JSON lines and TensorBoard scalars in the workdir, and a periodic progress line
with throughput, ETA and where the wall time goes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

from absl import logging

from pgm_jax.tensorboard import EventWriter

TB_DIR = "tb"  # TensorBoard log directory inside the workdir (scalars and profiles)
WATCHED = ("loss", "grad_norm")  # train metrics whose NaN / Inf means the update was bad


class NonFiniteError(RuntimeError):
    """A NaN / Inf loss or gradient norm with `config.train.nonfinite='stop'`."""


def nonfinite(values: dict[str, float]) -> str:
    """Which watched metrics are NaN / Inf, as 'loss=nan, grad_norm=inf'; '' when all finite."""
    return ", ".join(f"{k}={values[k]}" for k in WATCHED if not math.isfinite(values[k]))


class MetricsWriter:
    """Process 0 appends one JSON object per call to `workdir/metrics.jsonl` and writes the
    same numbers as TensorBoard scalars `<kind>/<name>` under `workdir/tb/`."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._events = EventWriter(os.path.join(workdir, TB_DIR)) if enabled else None

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
        row.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._events.scalars(step, {f"{kind}/{k}": v for k, v in row.items()
                                    if k not in ("step", "kind", "time")
                                    and isinstance(v, float)})

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def _plain(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Throughput, ETA and the share of wall time per phase, since this process started training.

    Phases are timed with `phase(name)` (data, compile, eval, sample, checkpoint); the time no
    phase claims is "step": dispatching train steps and waiting for the device. Throughput
    counts only data + step time since the last report, so compilation, evaluation and
    checkpoints do not distort it; the ETA divides the remaining steps by the full rate.
    """

    OVERHEAD = ("compile", "eval", "sample", "checkpoint")

    def __init__(self, total_steps: int, tokens_per_step: int, step: int):
        self.total = total_steps
        self.tokens_per_step = tokens_per_step
        self.phase_seconds: dict[str, float] = {}
        self._t_start = time.perf_counter()
        self._s_start = step
        self._t_last, self._s_last, self._overhead_last = self._t_start, step, 0.0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] = (self.phase_seconds.get(name, 0.0)
                                        + time.perf_counter() - t0)

    def shares(self) -> dict[str, float]:
        """Fraction of the wall time since the start spent in each phase, "step" included."""
        wall = max(time.perf_counter() - self._t_start, 1e-9)
        out = {k: v / wall for k, v in self.phase_seconds.items()}
        out["step"] = max(1.0 - sum(out.values()), 0.0)
        return out

    def report(self, step: int, values: dict[str, float]) -> dict[str, float]:
        """Logs `step/total loss ... tok/s ETA time shares`; returns the numbers it shows."""
        now = time.perf_counter()
        overhead = sum(self.phase_seconds.get(k, 0.0) for k in self.OVERHEAD)
        busy = (now - self._t_last) - (overhead - self._overhead_last)
        steps = step - self._s_last
        rate = steps / busy if busy > 0 and steps > 0 else 0.0
        done = step - self._s_start
        wall = now - self._t_start - self.phase_seconds.get("compile", 0.0)
        eta = (self.total - step) * wall / done if done > 0 else float("nan")
        shares = self.shares()
        out = {"steps_per_s": rate, "tokens_per_s": rate * self.tokens_per_step, "eta_s": eta}
        out.update({f"time_{k}": v for k, v in shares.items()})
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        where = " ".join(f"{k} {100 * v:.0f}%" for k, v in
                         sorted(shares.items(), key=lambda kv: -kv[1]))
        logging.info(
            "step %d/%d (%.0f%%) %s | %.0f tok/s | ETA %s | time: %s",
            step, self.total, 100.0 * step / max(self.total, 1), shown, out["tokens_per_s"],
            format_duration(eta) if math.isfinite(eta) else "?", where,
        )
        self._t_last, self._s_last, self._overhead_last = now, step, overhead
        return out
