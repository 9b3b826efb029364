"""Multi-host runs: one process per host (or per GPU), started from the environment.

`initialize_from_env()` runs before anything touches a device. It finds the run's processes in
this order, and does nothing for a plain single-process run:

  1. JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=n, JAX_PROCESS_ID=i (all three; a GPU
     cluster without a scheduler jax knows, or several processes on one machine for a test);
  2. the cluster environments jax itself detects (`jax._src.clusters`): TPU VM pods (GCE
     metadata / GKE), Slurm (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
     SLURM_LOCALID: one process per task, coordinator on the first node), Open MPI (mpirun),
     Kubernetes. JAX_COORDINATOR_ADDRESS / JAX_COORDINATOR_PORT override the coordinator there.

GKD_DISTRIBUTED=off skips all of it (e.g. one process that should see every local GPU inside a
Slurm step of several tasks). Every process then runs the same program on the global mesh;
each host materializes only its rows of a batch (`host_rows`, `global_batch`), and files are
written by process 0 only (`is_main_process`), except orbax checkpoints, which every process
saves together. The workdir must be one shared directory (NFS, a GCS FUSE mount) for all hosts.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
SWITCH = "GKD_DISTRIBUTED"  # "auto" (default) or "off"

_initialized = False


def detected_cluster() -> str | None:
    """The name of the cluster environment jax would initialize from (None: none found).

    jax's detection is a private module; if it moves, multi-host runs need the explicit
    JAX_* variables, and single-process runs are unaffected."""
    try:
        from jax._src import clusters

        kinds = clusters.ClusterEnv._cluster_types
    except (ImportError, AttributeError):
        return None
    for env in kinds:
        if not env.opt_in_only_method and env.is_env_present():
            # A TPU pod's size comes from its metadata server; other schedulers say it here.
            if "Tpu" in env.__name__ or env.get_process_count() > 1:
                return env.__name__
    return None


def _explicit_settings() -> tuple[str, int, int] | None:
    values = {k: os.environ.get(k, "") for k in EXPLICIT_VARS}
    if not values["JAX_NUM_PROCESSES"] and not values["JAX_PROCESS_ID"]:
        return None  # JAX_COORDINATOR_ADDRESS alone only overrides a detected cluster's
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise ValueError(
            f"multi-process run: {', '.join(missing)} not set. Set all of "
            f"{', '.join(EXPLICIT_VARS)} (e.g. JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 "
            "JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0), or none of them."
        )
    try:
        n, i = int(values["JAX_NUM_PROCESSES"]), int(values["JAX_PROCESS_ID"])
    except ValueError as e:
        raise ValueError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers: {e}") from None
    if not 0 <= i < n:
        raise ValueError(f"JAX_PROCESS_ID={i} must be in [0, JAX_NUM_PROCESSES={n})")
    return values["JAX_COORDINATOR_ADDRESS"], n, i


def initialize_from_env() -> bool:
    """Join the run's other processes (see the module docstring); True if this is a
    multi-process run. Idempotent: later calls return at once."""
    global _initialized
    if _initialized or jax.distributed.is_initialized():
        _initialized = True
        return jax.process_count() > 1
    switch = os.environ.get(SWITCH, "auto").lower()
    if switch not in ("auto", "off"):
        raise ValueError(f"{SWITCH}={switch!r}: use 'auto' (the default) or 'off'")
    explicit = None if switch == "off" else _explicit_settings()
    cluster = None if switch == "off" or explicit else detected_cluster()
    if explicit:
        address, n, i = explicit
        jax.distributed.initialize(address, num_processes=n, process_id=i)
    elif cluster:
        jax.distributed.initialize()
    _initialized = True
    if not (explicit or cluster):
        return False
    how = "JAX_* variables" if explicit else cluster
    print(
        f"[distributed] process {jax.process_index()}/{jax.process_count()} ({how}): "
        f"{jax.local_device_count()} local devices, {jax.device_count()} global devices "
        f"({jax.devices()[0].platform})",
        flush=True,
    )
    return jax.process_count() > 1


def is_main_process() -> bool:
    """Process 0 writes the files every process would otherwise write the same."""
    return jax.process_index() == 0


def log(msg: str) -> None:
    """Print `msg` once: every process runs the same program, process 0 says what it does."""
    if is_main_process():
        print(msg, flush=True)


def barrier(name: str) -> None:
    """Wait until every process got here (e.g. process 0 finished a file the others read)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def host_rows(global_batch_size: int, sharding: jax.sharding.Sharding) -> np.ndarray:
    """Indices of the rows of a [global_batch_size, ...] batch that this process's devices
    hold under `sharding`, in the order `jax.make_array_from_process_local_data` expects
    them: all rows in one process; a contiguous block per host on a batch-sharded mesh."""
    # A 2-D shape fits a spec of one entry and a spec naming only the rows' axes.
    index_map = sharding.addressable_devices_indices_map((global_batch_size, 1))
    starts = sorted({(idx[0].start or 0) for idx in index_map.values()})
    sizes = {len(range(*idx[0].indices(global_batch_size))) for idx in index_map.values()}
    (size,) = sizes  # an even split: the trainer checks batch_size against the device count
    return np.concatenate([np.arange(s, s + size) for s in starts])


def global_batch(local: np.ndarray, sharding: jax.sharding.Sharding, global_batch_size: int):
    """The global jax.Array [global_batch_size, ...] from this host's rows `local` [b, ...]
    (the rows `host_rows` names): no host ever holds the whole batch."""
    shape = (global_batch_size, *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, shape)


def to_host(tree):
    """The whole value of each array as numpy, on every process: arrays whose shards live on
    other hosts are gathered (a collective, so every process must call this)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.device_get(x)

    return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (e.g. a SIGTERM one host received)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.array(flag)).any())
