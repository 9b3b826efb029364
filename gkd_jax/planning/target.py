"""Where a plan compiles: the devices of a TPU topology (a Cloud TPU slice name or CHIP:AxB[xC],
from `jax.experimental.topologies`: no TPU needed) or of this host's CPUs, the HBM a program may
use on each, and the run's mesh over them (planner.py)."""

from __future__ import annotations

import dataclasses
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from gkd_jax.parallel import backends, sharding
from gkd_jax.planning.search import GIB, gib

# HBM per chip by device kind (what jax reports); a chip whose cores are separate devices
# (v4 here) gives each its share. Only where the compiler does not state its own limit
# (compiler_hbm_bytes), which is what a program must fit in.
CHIP_HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}
AVAILABLE_HBM_RE = re.compile(r"exceeds available HBM \(([\d.]+)G\)")
# Cloud TPU slice names -> topologies. v5e-N / v6e-N count chips; v4-N and v5p-N count
# TensorCores, two per chip (v5p-8 is 4 chips).
SLICES = {
    "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4",
    "v5e-16": "v5e:4x4",
    "v5e-32": "v5e:4x8",
    "v6e-4": "v6e:2x2",
    "v6e-8": "v6e:2x4",
    "v6e-16": "v6e:4x4",
    "v5p-8": "v5p:2x2x1",
    "v5p-16": "v5p:2x2x2",
    "v5p-32": "v5p:2x2x4",
    "v4-8": "v4:2x2x1",
    "v4-16": "v4:2x2x2",
}
TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):\d+(x\d+){1,2}$")


def known_topologies() -> str:
    return (
        f"{', '.join(SLICES)}; or CHIP:AxB[xC] with CHIP in v4, v5e, v5p, v6e (e.g. v5e:2x4, "
        "v5p:2x2x1); or cpu:N (host CPU devices, for tests)"
    )


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # as given
    devices: tuple  # jax devices (TPU devices of a topology description, or host CPUs)
    hbm_bytes: int | None  # per device; None: unknown (cpu)
    kind: str


def topology(name: str, *, hbm_gib: float | None = None) -> Target:
    """The devices of `name` (a Cloud TPU slice name, CHIP:AxB[xC] or cpu:N) and each one's HBM
    (`hbm_gib` overrides). ValueError for a name it does not know."""
    spec = SLICES.get(name, name)
    if spec.startswith("cpu:"):
        n = spec[4:]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--topology={name!r}: cpu:N needs N >= 1")
        cpus = jax.devices("cpu")
        if len(cpus) < int(n):
            raise ValueError(
                f"--topology={name}: this process has {len(cpus)} CPU devices; set XLA_FLAGS="
                f"--xla_force_host_platform_device_count={n} before starting it"
            )
        hbm = None if hbm_gib is None else int(hbm_gib * GIB)
        return Target(name, tuple(cpus[: int(n)]), hbm, "cpu")
    if not TOPOLOGY_RE.match(spec):
        raise ValueError(
            f"--topology={name!r} is not a topology this planner knows: use {known_topologies()}"
        )
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - old jax
        raise ValueError(f"this jax has no jax.experimental.topologies ({e})") from e
    try:
        with backends.quiet_libtpu_start():  # libtpu's lines about this host, which has no TPU
            desc = topologies.get_topology_desc(topology_name=spec, platform="tpu")
    except Exception as e:
        raise ValueError(
            f"--topology={name}: the TPU compiler could not describe {spec} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Is libtpu installed (pip install -e "
            ".[tpu-plan])? If another process holds libtpu's lock: ALLOW_MULTIPLE_LIBTPU_LOAD=1 "
            "(the planner only compiles, it never runs on a TPU)"
        ) from e
    devices = tuple(desc.devices)
    kind = devices[0].device_kind
    per_chip = len(devices) // len({tuple(d.coords) for d in devices})
    if hbm_gib is not None:
        return Target(name, devices, int(hbm_gib * GIB), kind)
    hbm = compiler_hbm_bytes(devices[0])
    if hbm is None:
        if kind not in CHIP_HBM_GIB:
            raise ValueError(f"--topology={name}: unknown HBM for {kind!r}; pass --hbm_gib")
        hbm = CHIP_HBM_GIB[kind] * GIB // per_chip
        print(f"[plan] the TPU compiler did not state its HBM limit for {kind}: planning against "
              f"the chip's {gib(hbm)} GiB per device", file=sys.stderr)  # fmt: skip
    return Target(name, devices, hbm, kind)


def compiler_hbm_bytes(device) -> int | None:
    """The HBM the TPU compiler lets one program on `device` use, or None where it does not say.

    Less than the chip's: 15.75 GiB of a v5e's 16, 31.25 of a v6e's 32 (95.74 on a v5p; libtpu
    0.0.42.1); a program past it is refused at compile time, so a plan must be judged against
    it, not the chip. The compiler states it only in that refusal, so it is read from one: a
    1 TiB output no chip holds (compiles in well under a second)."""
    x = jax.ShapeDtypeStruct((256, 1024), jnp.float32, sharding=SingleDeviceSharding(device))
    try:  # [256, 1024] float32 = 1 MiB, tiled 2^20 times
        jax.jit(lambda x: jnp.sin(jnp.tile(x, (1 << 20, 1)))).lower(x).compile()
    except Exception as e:
        if m := AVAILABLE_HBM_RE.search(str(e)):
            return int(float(m.group(1)) * GIB)  # the compiler's "G" is GiB (tests/test_plan.py)
    return None


def make_mesh(config, devices) -> Mesh:
    """config.mesh over `devices` as sharding.make_mesh lays it (checked the same way), along the
    physical TPU torus where mesh_utils can."""
    shape = sharding.mesh_shape(
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor, len(devices)
    )
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, list(devices))
    except Exception:  # CPU devices, or cores that are separate devices (v4): plain order
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, sharding.AXES)
