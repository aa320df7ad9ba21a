"""Preemption: a SIGTERM asks the training loop to save a checkpoint and exit cleanly.

One process: our SIGTERM handler only sets a flag, which the loop reads once per step (no
device sync). Several processes must stop at the same step, so they use JAX's preemption sync
point instead (through orbax): `jax.distributed` registers its own SIGTERM notifier on every
host, and all processes agree on the first step at which every one of them has seen it.
"""

from __future__ import annotations

import signal
import threading

import jax

from pgm_jax.checkpoint import Checkpointer


class PreemptionWatch:
    """Context manager: `reached(step)` is True once the run should checkpoint and stop."""

    def __init__(self, ckpt: Checkpointer):
        self._ckpt = ckpt
        self._multi_process = jax.process_count() > 1
        self._signalled = False
        self._previous = None

    def __enter__(self) -> PreemptionWatch:
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self._signalled = True  # only a flag: the handler may run in the middle of anything

    def reached(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step` (call once per step on every process)."""
        if self._multi_process:
            return self._ckpt.reached_preemption(step)
        return self._signalled
