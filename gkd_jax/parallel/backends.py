"""libtpu on a host without a TPU chip: keep its start-up off the console.

With libtpu installed (jax[tpu], the planner's extra) and JAX_PLATFORMS unset, jax tries every
backend it knows on first use, the TPU one included, chip or not. libtpu then takes a host-wide
lock (/tmp/libtpu_lockfile) and, finding no TPU (jax sets TPU_SKIP_MDS_QUERY=1 at import when it
sees no chip, so libtpu skips the metadata server), prints before its logging starts (so neither
TPU_MIN_LOG_LEVEL nor TPU_STDERR_LOG_LEVEL hides it):

    Failed to find host bounds for accelerator type: WARNING: could not determine TPU ...
    E0000 ... INVALID_ARGUMENT: Error: unexpected worker hostname 'WARNING: could not ...
    === Source Location Trace: ===

It looks intermittent because only the process that gets the lock goes that far: while another
jax process on the host holds it, libtpu gives up at the lock (jax logs that at INFO); with
ALLOW_MULTIPLE_LIBTPU_LOAD=1 there is no lock and the lines come every time. The backend fails
either way, and jax goes on without it.

  skip_absent_tpu       the commands' guard: no chip, so jax's TPU backend is never started
  quiet_libtpu_start    the planner's: libtpu must start there (it compiles for a named TPU
                        topology), so its lines about this host are dropped from stderr
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import tempfile
from collections.abc import Iterator

GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI class prefixes of the Google devices every GCE VM has (gVNIC network, NVMe storage); a TPU
# chip is a vendor-specific class (0xff...), and any other Google device is taken for one.
NOT_A_TPU_CLASSES = ("0x01", "0x02")
TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")
NOISE = (
    re.compile(r"could not determine TPU"),
    re.compile(r"^WARNING: Logging before InitGoogle\(\) is written to STDERR"),
)
TRACE_HEADER = re.compile(r"^=== Source Location Trace: ===")
TRACE_LINE = re.compile(r"^\S+\.(cc|h):\d+\s*$")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def tpu_chip_may_be_present(pci_root: str = "/sys/bus/pci/devices", dev: str = "/dev") -> bool:
    """False only when this host surely has no TPU chip: its only Google PCI devices (if any)
    are network or storage ones, and it has no TPU device file. jax counts chips by a list of
    device ids, which a newer chip would be missing from: a wrong False here would leave a TPU
    unused, a wrong True only lets libtpu print its lines."""
    for vendor in glob.glob(os.path.join(pci_root, "*", "vendor")):
        if _read(vendor) != GOOGLE_PCI_VENDOR:
            continue
        device_class = _read(os.path.join(os.path.dirname(vendor), "class"))
        if not device_class.startswith(NOT_A_TPU_CLASSES):
            return True
    patterns = (os.path.join(dev, p.removeprefix("/dev/")) for p in TPU_DEVICE_FILES)
    return any(glob.glob(p) for p in patterns)


def _no_tpu_backend():
    raise RuntimeError("no TPU chip on this host: the TPU backend is not started")


def skip_absent_tpu() -> bool:
    """On a host with no TPU chip, replace jax's TPU backend by one that fails at once (jax
    skips a backend that fails, as it would have skipped libtpu's): libtpu is never started,
    prints nothing and takes no lock. Left alone: a chip that may be a TPU, JAX_PLATFORMS set
    (the user chose), JAX_FORCE_TPU_INIT. Call before anything touches a device. True if it
    replaced the backend."""
    if os.environ.get("JAX_PLATFORMS") or "JAX_FORCE_TPU_INIT" in os.environ:
        return False
    if tpu_chip_may_be_present():
        return False
    from jax.extend import backend

    try:  # the TPU backend's priority in jax (300); fail_quietly: skipped, logged at INFO
        backend.register_backend_factory("tpu", _no_tpu_backend, priority=300, fail_quietly=True)
    except RuntimeError:  # the backends are up already: too late, and nothing to do
        return False
    return True


def drop_noise(text: str) -> str:
    """`text` without libtpu's lines about a host with no TPU, and the source trace that
    follows them (another error's trace is kept)."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        if any(p.search(line) for p in NOISE):
            dropping = True
        elif not (dropping and (TRACE_HEADER.match(line) or TRACE_LINE.match(line))):
            dropping = False
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def quiet_libtpu_start() -> Iterator[None]:
    """Within the block, the process's stderr (file descriptor 2: libtpu writes there, below
    Python) goes to a file; at its end everything but libtpu's lines about this host is written
    back. For a block that starts libtpu on purpose (the planner's TPU topology)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            rest = drop_noise(captured.read().decode(errors="replace"))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()
