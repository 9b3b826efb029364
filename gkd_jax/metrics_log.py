"""Training metrics that survive a crash: WORKDIR/metrics.jsonl (one flushed JSON line per log
step) and TensorBoard scalars in WORKDIR/tensorboard.

A run that starts at step k (a resumed one; k = 0 for a fresh one) first drops what an earlier
run logged after k, so the curves continue without duplicated steps. The TensorBoard events are
written here directly (TFRecord framing + the few protobuf fields of a scalar Event), which needs
neither TensorFlow nor a protobuf library: ~50 lines instead of a dependency.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any


class MetricsLog:
    """Append rows to metrics.jsonl and scalars to a new TensorBoard event file. Each write
    opens, appends and closes: nothing is buffered, nothing needs closing. With
    `enabled=False` (all but process 0 of a multi-host run) it writes nothing."""

    def __init__(self, workdir: str, start_step: int, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        drop_rows_after(self.path, start_step)
        self._events = EventWriter(os.path.join(workdir, "tensorboard"))
        # TensorBoard hides every earlier event at steps >= this one (a restart marker).
        self._events.restart(start_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        """One training log row {"step": s, name: value, ...}: a JSON line and `train/` scalars."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        values = {f"train/{k}": v for k, v in row.items() if k != "step"}
        self.scalars(row["step"], values)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            self._events.scalars(step, values)


def drop_rows_after(path: str, step: int) -> None:
    """Keep only the metrics.jsonl rows with "step" <= `step` (atomically: temp file + rename)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    # A line cut short by a crash mid-write has no newline: it is dropped with the rest.
    kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
    if len(kept) == len(lines):
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- TensorBoard
def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, body: bytes) -> bytes:
    """An `Event` proto: wall_time (1, double), step (2, int64), then `body` (its other fields)."""
    return b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step) + body


class EventWriter:
    """A TensorBoard event file (events.out.tfevents.*) of scalar summaries."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        # Names sort in creation order: TensorBoard reads a run's files in name order.
        name = f"events.out.tfevents.{time.time_ns()}.{socket.gethostname()}"
        self.path = os.path.join(logdir, name)
        self._record(_event(0, _field(3, b"brain.Event:2")))  # file_version

    def _record(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        crcs = struct.pack("<I", masked_crc32c(header)), struct.pack("<I", masked_crc32c(data))
        with open(self.path, "ab") as f:
            f.write(header + crcs[0] + data + crcs[1])

    def restart(self, step: int) -> None:
        """SessionLog(status=START) at `step`: TensorBoard drops earlier files' events >= step."""
        self._record(_event(step, _field(7, b"\x08\x01")))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One Summary of simple_value scalars (float32, NaN and inf kept); non-numbers skipped."""
        summary = b"".join(
            _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(value)))
            for tag, value in values.items()
            if isinstance(value, int | float)
        )
        self._record(_event(step, _field(5, summary)))
