"""TensorBoard output without TensorFlow: scalar event files and a profiler window.

Event files are written by tensorboardX's synchronous `EventsWriter` (TFRecord framing,
CRC32C and the `Event` / `Summary` protos are its job): one event per logged step, flushed at
once, so a run that dies loses no logged row.
"""

from __future__ import annotations

import os
import time

import jax
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2


class EventWriter:
    """Appends scalar summaries to a new `events.out.tfevents.*.pgm_jax` file in `log_dir`."""

    def __init__(self, log_dir: str):
        os.makedirs(log_dir, exist_ok=True)
        # Writes the file-version header event; the file stays open for the whole run.
        self._writer = EventsWriter(os.path.join(log_dir, "events"), ".pgm_jax")
        self._writer.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes one event with every (tag, value) pair and flushes it to disk."""
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items()])
        self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                 summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class ProfileWindow:
    """Traces steps [start, start + steps) on process 0 with the JAX profiler.

    `jax.profiler.start_trace(log_dir)` writes `log_dir/plugins/profile/<session>/*.xplane.pb`,
    the layout TensorBoard's profile plugin reads (`tensorboard --logdir WORKDIR/tb`).
    start = 0 disables it.
    """

    def __init__(self, log_dir: str, start: int, steps: int):
        self.log_dir = log_dir
        self.start, self.stop_after = start, start + steps - 1
        self.enabled = start > 0 and steps > 0 and jax.process_index() == 0
        self.active = False

    def before_step(self, step: int) -> None:
        """Call with the number of the step about to run (1-based)."""
        if self.enabled and step == self.start:
            jax.profiler.start_trace(self.log_dir)
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        """Call after dispatching `step`; stops the trace once the window's last step is done."""
        if self.active and step >= self.stop_after:
            jax.block_until_ready(outputs)  # the trace must contain the device work
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
