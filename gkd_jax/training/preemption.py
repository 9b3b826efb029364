"""Preemption: SIGTERM (what TPU VMs, Kubernetes and Slurm send before they stop a job) only
raises a flag; the training loop finishes its step, saves a checkpoint and raises `Preempted`,
which the entry point turns into a one-line message and exit status 0."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class Preempted(Exception):
    """Training stopped early at `step` with its state saved; rerunning resumes it."""

    def __init__(self, step: int, reason: str = "preempted"):
        self.step = step
        super().__init__(
            f"{reason} at step {step}: checkpoint saved, rerun the same command to resume"
        )


@contextlib.contextmanager
def sigterm_flag() -> Iterator[Callable[[], bool]]:
    """Within the block, SIGTERM sets a flag (read by calling the yielded function) instead of
    killing the process. Outside the main thread signals cannot be caught: the flag stays off."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)
