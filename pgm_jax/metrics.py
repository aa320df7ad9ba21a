"""Run metrics: JSON lines in the workdir and a readable periodic progress line."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging


class MetricsWriter:
    """Appends one JSON object per call to `workdir/metrics.jsonl` (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
        row.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


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
    """Throughput and ETA over the steps since the last report (compile time excluded)."""

    def __init__(self, total_steps: int, tokens_per_step: int):
        self.total = total_steps
        self.tokens_per_step = tokens_per_step
        self._t0: float | None = None
        self._s0 = 0
        self.phase_seconds: dict[str, float] = {}

    def start(self, step: int) -> None:
        self._t0, self._s0 = time.perf_counter(), step

    def add(self, phase: str, seconds: float) -> None:
        self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + seconds

    def report(self, step: int, values: dict[str, float]) -> dict[str, float]:
        """Logs `step/total loss ... tok/s ETA` and returns the throughput numbers."""
        now = time.perf_counter()
        steps = step - self._s0
        dt = now - self._t0 if self._t0 is not None else 0.0
        rate = steps / dt if dt > 0 and steps > 0 else 0.0
        out = {"steps_per_s": rate, "tokens_per_s": rate * self.tokens_per_step}
        eta = (self.total - step) / rate if rate else float("nan")
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        logging.info(
            "step %d/%d (%.0f%%) %s | %.0f tok/s | ETA %s",
            step, self.total, 100.0 * step / max(self.total, 1), shown, out["tokens_per_s"],
            format_duration(eta) if rate else "?",
        )
        self._t0, self._s0 = now, step
        return out
