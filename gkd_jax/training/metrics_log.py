"""Training metrics behind one interface: `MetricsLog.write(step, scalars)`, with scalars named
by tag ("train/loss", "eval/accuracy"), goes to every writer the run has:

  metrics.jsonl  WORKDIR/metrics.jsonl, the `train/` scalars: one flushed JSON line per log step,
                 {"step": s, "loss": ..., ...} (what scripts and launch/collect.py read)
  TensorBoard    WORKDIR/tensorboard, every scalar by its tag
  W&B            Weights & Biases, every scalar by its tag, when the `wandb` package is installed
                 and config.log.wandb_project is set (`pip install wandb`, or `.[wandb]`)

All of them survive a crash and a resume. A run that starts at step k (a resumed one; k = 0 for a
fresh one) first drops the metrics.jsonl rows an earlier run wrote after k and marks a
TensorBoard restart at k + 1, so the curves continue without duplicated steps; W&B continues
the same run (its id is kept in WORKDIR/wandb_run_id). The TensorBoard events are written here
directly (TFRecord framing + the few protobuf fields of a scalar Event), which needs neither
TensorFlow nor a protobuf library: ~50 lines instead of a dependency.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import struct
import time
from typing import Any, Protocol

TRAIN = "train/"  # the tag prefix of the scalars metrics.jsonl keeps
WANDB_RUN_ID = "wandb_run_id"  # WORKDIR/wandb_run_id: the W&B run a resumed run continues


class Writer(Protocol):
    def write(self, step: int, scalars: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """Every writer of a run behind one `write(step, scalars)`. Each write reaches its files at
    once (nothing to flush); `close()` ends the W&B run. With `enabled=False` (all but process 0
    of a multi-host run) it writes nothing."""

    def __init__(
        self,
        workdir: str,
        start_step: int,
        *,
        enabled: bool = True,
        wandb_project: str = "",
        config: dict[str, Any] | None = None,
        log=print,
    ):
        self.writers: list[Writer] = []
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.writers = [
            JsonlWriter(os.path.join(workdir, "metrics.jsonl"), start_step),
            TensorBoardWriter(os.path.join(workdir, "tensorboard"), start_step),
        ]
        if wandb_project and importlib.util.find_spec("wandb") is None:
            log(
                f"[metrics] config.log.wandb_project={wandb_project!r} but the wandb package is "
                "not installed (pip install wandb): no W&B run"
            )
        elif wandb_project:
            self.writers.append(WandbWriter(workdir, wandb_project, config))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        """Scalars {tag: value} at `step`: "train/NAME" ones also make metrics.jsonl's row."""
        for writer in self.writers:
            writer.write(step, scalars)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- metrics.jsonl
class JsonlWriter:
    """One JSON line per step with `train/` scalars: {"step": s, NAME: value, ...}."""

    def __init__(self, path: str, start_step: int):
        self.path = path
        drop_rows_after(path, start_step)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        row = {k.removeprefix(TRAIN): v for k, v in scalars.items() if k.startswith(TRAIN)}
        if row:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def close(self) -> None:
        pass


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


# ---------------------------------------------------------------------------- W&B
class WandbWriter:
    """A Weights & Biases run of `project`, one per workdir: its id is kept in
    WORKDIR/wandb_run_id, so that a resumed run continues it (W&B files in WORKDIR/wandb; the
    WANDB_* variables apply, e.g. WANDB_MODE=offline). W&B cannot drop what an earlier run
    logged after the resume step: it keeps its first value of a step logged twice."""

    def __init__(self, workdir: str, project: str, config: dict[str, Any] | None = None):
        import wandb

        id_path = os.path.join(workdir, WANDB_RUN_ID)
        if os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:
            run_id = secrets.token_hex(4)  # a new W&B run id (8 lowercase characters)
            with open(id_path, "w") as f:
                f.write(run_id + "\n")
        name = os.path.basename(os.path.normpath(workdir))
        self.run = wandb.init(
            project=project, id=run_id, name=name, resume="allow", dir=workdir, config=config
        )

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


# ---------------------------------------------------------------------------- TensorBoard
class TensorBoardWriter:
    """A new event file per run in `logdir`; its first record marks the restart at
    start_step + 1 (TensorBoard then hides earlier files' events at steps >= it)."""

    def __init__(self, logdir: str, start_step: int):
        self._events = EventWriter(logdir)
        self._events.restart(start_step + 1)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        self._events.scalars(step, scalars)

    def close(self) -> None:
        pass


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
