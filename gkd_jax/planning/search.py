"""The planner's search for the largest batch that fits: one TPU compile per probe, so few
probes. Works on any planner with `.target` (`.name`, `.hbm_bytes`), `.batch_unit()` and
`.plan(batch)` returning a plan with `.peak`, `.hbm` and `.fits` (planner.Planner)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

GIB = 1 << 30


def gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.2f}"


def is_out_of_memory(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text


def try_plan(planner: Any, batch: int, log: Callable[[str], None]) -> Any | None:
    """The plan at `batch`, None when the compiler says it runs out of memory."""
    t0 = time.time()
    try:
        plan = planner.plan(batch)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        log(f"[plan] batch {batch}: out of memory at compile ({time.time() - t0:.0f} s): "
            f"{str(e).splitlines()[0][:160]}")  # fmt: skip
        return None
    verdict = {None: "?", True: "fits", False: "does not fit"}[plan.fits]
    log(f"[plan] batch {batch}: peak {gib(plan.peak)} GiB of {gib(plan.hbm)}: {verdict} "
        f"({time.time() - t0:.0f} s)")  # fmt: skip
    return plan


def largest_batch(planner: Any, log: Callable[[str], None], limit: int = 4096):
    """(largest batch that fits, its plan, the smallest that does not or None), in multiples of
    the smallest batch the trainer accepts (the unit), one compile per probe. ValueError when
    even the unit does not fit.

    A 7-9B plan compiles for 10-20 min of a CPU core, so probes are few: the peak is roughly
    affine in the batch (resident state + per-row activations; the TPU scheduler's overlap, which
    grows into free HBM, bends it down a little), so after two compiles the next
    probe is where the line through the nearest two measured peaks meets the HBM, then one
    above it to confirm: 4 compiles when the line holds, where doubling then bisecting takes
    2 log2 of the answer. When a probe's outcome contradicts the line (the compiler chose a
    different schedule, or ran out of memory with no peak to fit), the next probe bisects the
    bracket, so the worst case stays within about twice bisection's count."""
    if planner.target.hbm_bytes is None:
        raise ValueError("--batch=bisect needs a capacity: a TPU topology, or --hbm_gib")
    unit, hbm = planner.batch_unit(), planner.target.hbm_bytes
    cap = max(1, limit // unit)
    peaks: dict[int, int] = {}  # k -> peak of a plan that compiled (fitting or not)

    def fits(k):
        plan = try_plan(planner, k * unit, log)
        if plan is not None:
            peaks[k] = plan.peak
        return plan, plan is not None and plan.fits

    plan, ok = fits(1)
    if not ok:
        peak = "" if plan is None else f" (peak {gib(plan.peak)} GiB of {gib(plan.hbm)})"
        raise ValueError(
            f"the run does not fit on {planner.target.name} even at batch {unit}{peak}: shard "
            "more (config.mesh.fsdp), use a bigger slice, config.remat='full', "
            "config.teacher_param_dtype='bfloat16' or config.param_dtype='bfloat16'"
        )
    lo, best, hi, trust = 1, plan, None, True
    while True:
        predicted = line_prediction(lo, peaks, hbm)
        if (k := next_probe(lo, hi, cap, predicted if trust else None)) is None:
            break
        plan, ok = fits(k)
        # the line predicted "fits" for k <= predicted; a contradiction bisects next time
        trust = predicted is None or ok == (k <= predicted)
        if ok:
            lo, best = k, plan
        else:
            hi = k
    return lo * unit, best, None if hi is None else hi * unit


def line_prediction(lo: int, peaks: dict[int, int], hbm: int) -> int | None:
    """The largest k whose peak the line through lo's measured peak and the nearest other
    measured one keeps within hbm; None with one point or a line that does not rise."""
    others = [k for k in peaks if k != lo]
    if lo not in peaks or not others:
        return None
    k2 = min(others, key=lambda k: abs(k - lo))
    slope = (peaks[k2] - peaks[lo]) / (k2 - lo)
    if slope <= 0:
        return None
    return lo + math.floor((hbm - peaks[lo]) / slope)


def next_probe(lo: int, hi: int | None, cap: int, predicted: int | None) -> int | None:
    """The next k to compile, within the bracket (lo fits, hi does not), or None when done;
    `predicted`: the line's largest k, None to double (no hi yet) or bisect."""
    top = cap if hi is None else hi - 1  # the largest k still open
    if top <= lo:
        return None
    if predicted is None:
        return min(2 * lo, top) if hi is None else (lo + hi) // 2
    # the predicted largest, or one above lo to confirm lo when the line says lo is the largest
    return min(max(predicted, lo + 1), top)
