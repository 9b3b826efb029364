"""How much HBM the TPU compiler may plan the sampler to use.

The sampler is its own jitted program, compiled without knowing that the train state, the
teacher and the batch stay resident in HBM beside it. Given the whole chip, the TPU's latency
hiding scheduler starts every layer's FSDP all-gather ahead of its use, so the sampler's
temporaries approach a whole bfloat16 copy of the model: 12.78 GiB per chip for a Llama-3.1-8B
student on a v5e-16 (batch 16 x (512 + 128)), which with 7.48 GiB of resident train state and
teacher is over the 16 GiB chip, although the update itself needs 14.38.
`xla_tpu_scheduler_percent_shared_memory_limit` (per program, through jax.jit's
`compiler_options`) caps that overlap. Measured on that sampler: the limit at 64, 53, 45 and 1 %
gave 10.61, 8.55, 7.35 and 2.26 GiB of temporaries, i.e. the limit's share of 16 GiB plus
0.07-0.37 GiB, down to a floor (one layer's gathered weights, the KV cache, the logits). So the
cap is the share of HBM that everything resident (the sampler's own parameters included) leaves,
less OVERSHOOT_PERCENT. It changes the schedule (less overlap of the gathers with compute, so
possibly slower decoding), not the samples.

`config.sampler_hbm_percent`: 0 (default) = that share, computed at start-up; 1-100 = a fixed
percent; either applies on TPU only (other backends reject the option).

The limit is a target, not a bound: a later sampler (bfloat16 Llama-3.1-8B on a v5e-8) went
1.8 GiB over its share at limits of 40-49 % and stayed under it at 50 and 55 %. So the planner
compiles the sampler again with the limit lowered by the excess while the step is over HBM
(`lower_until_it_fits`) and says which percent to train with; the trainer uses the automatic
share unless given one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import jax

P = TypeVar("P")

SCHEDULER_LIMIT = "xla_tpu_scheduler_percent_shared_memory_limit"
# the scheduler went over its limit by up to 0.37 GiB of 16 (2.3 %) in the measurements above
OVERSHOOT_PERCENT = 3


def free_percent(hbm_bytes: int, resident_bytes: int) -> int:
    """The whole percent of a chip's HBM not held by `resident_bytes`, less OVERSHOOT_PERCENT
    (rounded down, at least 1: a sampler that cannot fit still compiles, and a plan then reports
    the step over HBM)."""
    if hbm_bytes <= 0:
        raise ValueError(f"HBM capacity must be positive, got {hbm_bytes} bytes")
    free = (100 * (hbm_bytes - resident_bytes)) // hbm_bytes - OVERSHOOT_PERCENT
    return max(1, min(100, free))


def sampler_compiler_options(
    setting: int, platform: str, hbm_bytes: int | None, resident_bytes: int
) -> dict[str, str] | None:
    """jax.jit `compiler_options` for a sampler: None off TPU or where the capacity is unknown
    with the automatic setting (0); `resident_bytes`: per device, what stays in HBM while it
    runs (the train state with the student's parameters, the teacher, the batch)."""
    if platform != "tpu":
        return None
    if setting:
        return {SCHEDULER_LIMIT: str(setting)}
    if not hbm_bytes:
        return None
    return {SCHEDULER_LIMIT: str(free_percent(hbm_bytes, resident_bytes))}


def device_hbm_bytes() -> int | None:
    """This host's first device's memory capacity as the runtime reports it (None if it does
    not)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def lower_until_it_fits(
    compile_at: Callable[[int], P], step_peak: Callable[[P], int], percent: int, hbm_bytes: int,
    *, tries: int = 4, log: Callable[[str], None] = print,
) -> tuple[int, P]:  # fmt: skip
    """(percent, program): `compile_at(percent)`, and while the step's peak with it
    (`step_peak(program)`: the program beside everything resident) is over `hbm_bytes`, again
    with the limit lowered by the excess (in whole percents of HBM), up to `tries` compiles; the
    lowest peak wins.

    The scheduler's limit is a target, not a bound, and not a monotone one: for a bfloat16
    Llama-3.1-8B sampler on a v5e-8 (batch 8 x (512 + 128), 7.48 GiB resident), limits of 40, 45,
    47, 49 and 50 % gave 7.95, 8.91, 9.27, 9.61 and 7.95 GiB of temporaries, up to 1.8 GiB more
    than the limit's share of the chip (0.37 GiB at most for the samplers measured before)."""
    best: tuple[int, P, int] | None = None  # (percent, program, step peak)
    for attempt in range(tries):
        program = compile_at(percent)
        peak = step_peak(program)
        if best is None or peak < best[2]:
            best = (percent, program, peak)
        over = peak - hbm_bytes
        if over <= 0 or percent <= 1 or attempt == tries - 1:
            break
        lower = max(1, percent - math.ceil(100 * over / hbm_bytes))
        log(
            f"[plan] sampler at {percent} % of HBM: step peak {peak / 2**30:.2f} GiB, over "
            f"{hbm_bytes / 2**30:.2f}; compiling it again at {lower} %"
        )
        percent = lower
    assert best is not None
    return best[0], best[1]
