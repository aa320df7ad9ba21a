"""TensorBoard output without TensorFlow: scalar event files and a profiler window.

An event file is a TFRecord stream (length, masked CRC32C of the length, payload, masked CRC32C
of the payload) of `tensorflow.Event` protos. Scalars need only four message fields, so they
are encoded here by hand:
  Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; }
"""

from __future__ import annotations

import os
import socket
import struct
import time

import jax


def _crc_table(poly: int = 0x82F63B78) -> list[int]:
    """Byte-wise lookup table of the reflected CRC-32C (Castagnoli) polynomial."""
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ poly if n & 1 else n >> 1
        table.append(n)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord: uint64 length, masked CRC of it, the payload, masked CRC of the payload."""
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", masked_crc32c(length)) + payload
            + struct.pack("<I", masked_crc32c(payload)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and embedded messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, wall_time: float, *, scalars: dict[str, float] | None = None,
          file_version: str | None = None) -> bytes:
    """A serialized `Event` holding `scalars` (tag -> value) or a file-version header."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5)
                         + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _bytes_field(5, values)
    return out


class EventWriter:
    """Appends scalar summaries to a new `events.out.tfevents.*` file in `log_dir`."""

    def __init__(self, log_dir: str):
        os.makedirs(log_dir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.pgm_jax"
        self.path = os.path.join(log_dir, name)
        self._file = open(self.path, "ab")  # kept open for the whole run
        self._file.write(tfrecord(event(0, time.time(), file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes one event with every (tag, value) pair and flushes it to disk."""
        record = event(step, time.time(), scalars={k: float(v) for k, v in values.items()})
        self._file.write(tfrecord(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


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
