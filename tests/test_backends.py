"""No libtpu start-up lines on a host without a TPU chip (parallel/backends.py).

The subprocesses run as a user's command does (JAX_PLATFORMS unset, unlike the suite's) with
ALLOW_MULTIPLE_LIBTPU_LOAD=1: otherwise libtpu stops silently at its host-wide lock whenever
another jax process holds it, and the lines come and go with what else runs on the machine."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from gkd_jax.parallel import backends

REPO = pathlib.Path(__file__).resolve().parent.parent
NOISE = ("INVALID_ARGUMENT", "could not determine TPU")
OBSERVED = (  # libtpu 0.0.42.1's lines, verbatim (its trace header ends in a space)
    "Failed to find host bounds for accelerator type: WARNING: could not determine TPU accelerator"
    " type, please set env var `TPU_ACCELERATOR_TYPE` manually, otherwise libtpu.so may not"
    " properly initialize.\n"
    "WARNING: Logging before InitGoogle() is written to STDERR\n"
    "E0000 00:00:1796686122.756075   20572 common_lib.cc:554] INVALID_ARGUMENT: Error: unexpected"
    " worker hostname 'WARNING: could not determine TPU worker hostnames or IP addresses' from env"
    " var TPU_WORKER_HOSTNAMES. Expecting a valid hostname or IP address without port number, or"
    " hostname:port:address triple.\n"
    "=== Source Location Trace: === \n"
    "learning/45eac/tfrc/runtime/libtpu_init_utils.cc:327\n"
)


def python(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def libtpu_is_loud():
    """Skip unless plain jax, here, prints the lines: else there is nothing to keep quiet."""
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (pip install -e .[tpu-plan])")
    if backends.tpu_chip_may_be_present():
        pytest.skip("this host may have a TPU chip")
    plain = python("-c", "import jax; jax.devices()")
    if not all(n in plain.stderr for n in NOISE):
        pytest.skip(f"plain jax is quiet here: {plain.stderr[-500:]!r}")


def test_a_command_starts_its_backends_without_libtpus_lines(libtpu_is_loud):
    # the planner needs more CPU devices than there are: it fails, after jax.devices("cpu")
    # started every backend
    proc = python("-m", "gkd_jax.plan", "--config=configs/arith.py", "--topology=cpu:64")
    assert "this process has 1 CPU devices" in proc.stderr, proc.stderr
    assert not any(n in proc.stderr for n in NOISE), proc.stderr


def test_the_planners_tpu_topology_without_libtpus_lines(libtpu_is_loud):
    """The planner starts libtpu on purpose (to compile for a named topology): its lines about
    this host are dropped, what else it says is kept."""
    code = "from gkd_jax.planning import target; print(len(target.topology('v5e-4').devices))"
    proc = python("-c", code)
    assert proc.returncode == 0 and proc.stdout.split() == ["4"], proc.stderr
    assert not any(n in proc.stderr for n in NOISE), proc.stderr


def test_drop_noise_keeps_everything_else():
    text = "before\n" + OBSERVED + "after\n=== Source Location Trace: ===\nother/file.cc:12\n"
    assert backends.drop_noise(text) == (
        "before\nafter\n=== Source Location Trace: ===\nother/file.cc:12\n"
    )


def pci(root: pathlib.Path, slot: str, vendor: str, device: str, device_class: str) -> None:
    d = root / slot
    d.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device), ("class", device_class)):
        (d / name).write_text(value + "\n")


def test_a_tpu_chip_is_assumed_unless_surely_absent(tmp_path):
    root, dev = tmp_path / "pci", tmp_path / "dev"
    dev.mkdir()
    pci(root, "0000:00:03.0", "0x1af4", "0x1041", "0x020000")  # virtio network
    pci(root, "0000:00:06.0", "0x1ae0", "0x0042", "0x020000")  # Google gVNIC (every GCE VM)
    assert not backends.tpu_chip_may_be_present(str(root), str(dev))
    (dev / "accel0").touch()  # a TPU v4's device file
    assert backends.tpu_chip_may_be_present(str(root), str(dev))
    (dev / "accel0").unlink()
    pci(root, "0000:00:05.0", "0x1ae0", "0x0099", "0xff0000")  # a Google chip of no known id
    assert backends.tpu_chip_may_be_present(str(root), str(dev))
