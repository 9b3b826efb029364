"""Eight fake CPU devices for every test, so sharded code paths run here as on a TPU host.

The tests' programs are compiled with LLVM's optimizations off (--xla_backend_optimization_level
=0): the same HLO, the same arithmetic, but the suite is mostly compilation of tiny programs
that then run for milliseconds (measured: tests/test_trainer.py + test_objectives.py 121 s ->
101 s). Runs outside the tests (the trainer, benchmarks) keep XLA's default."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The test extras install jax[tpu] (libtpu: test_plan compiles for a TPU topology, which needs no
# TPU). Without this JAX would try to open a TPU at first use in every worker, and libtpu's
# host-wide lock would make the two xdist workers fight over one that is not there.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

try:  # torch is the parity reference; its intra-op threads fight XLA's for 2 cores otherwise
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass

import jax  # noqa: E402  (after XLA_FLAGS: the fake devices are fixed at import)
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache per test process (tmp_path_factory is per xdist
    worker, so no two processes write one file): many tests train the same tiny configs in
    process, and a program compiled once is then read back instead of compiled again. Programs
    that compile in under 0.2 s are not worth the disk."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()
    yield
