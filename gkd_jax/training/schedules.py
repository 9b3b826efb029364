"""Schedules of the student data fraction `lmbda` over training (pure Python, deterministic).

`lmbda` is the probability that a step's completions are sampled from the current student
(on-policy) rather than taken from the dataset (DESIGN.md). The paper's GKD keeps it constant;
ImitKD (Lin et al., 2020) raises the student share during training.
"""

from __future__ import annotations

import math
import numbers

LMBDA_SCHEDULES = ("constant", "imitkd", "linear", "exponential")

# The GKD paper's ImitKD baseline: half student samples, half dataset outputs, forward KL.
IMITKD_LMBDA = 0.5
# ImitKD's exponential decay base for the dataset share, 200 ** -(step / total_steps), the value
# in its WMT and CNN/DM configs (github.com/asappresearch/imitkd, `exp_base`).
IMITKD_EXP_BASE = 200.0


def lmbda_at(step: int, total_steps: int, *, kind: str, lmbda: float | None = None) -> float:
    """The student data fraction at `step` (0-based) of a `total_steps`-step run.

    kind:
      "constant":    `lmbda` at every step: the paper's GKD (Algorithm 1).
      "imitkd":      0.5 at every step: the GKD paper's ImitKD baseline (its appendix: lmbda = 0.5
                     with forward KL, i.e. divergence "fkl"). `lmbda` may be left unset; if given
                     it must be 0.5, since anything else is not that baseline.
      "linear":      lmbda * step / total_steps, rising from 0 at the first step: ImitKD's own
                     annealed mix, whose dataset (teacher-forcing) share beta_t = 1 - t / N decays
                     linearly (Lin et al., 2020; lmbda < 1 plays its `final_beta` = 1 - lmbda).
      "exponential": lmbda * (1 - 200 ** (-step / total_steps)): ImitKD's exponential decay of the
                     dataset share, the schedule of its published WMT/CNN-DM configs.

    Raises ValueError naming the bad argument: `kind` unknown, `total_steps` < 1, `step` outside
    [0, total_steps], `lmbda` missing or outside [0, 1].
    """
    if kind not in LMBDA_SCHEDULES:
        raise ValueError(f"unknown lmbda schedule kind {kind!r}; expected one of {LMBDA_SCHEDULES}")
    # bool is an Integral; a True step is a bug, not step 1.
    if not isinstance(total_steps, numbers.Integral) or isinstance(total_steps, bool):
        raise ValueError(f"total_steps must be an int, got {total_steps!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not isinstance(step, numbers.Integral) or isinstance(step, bool):
        raise ValueError(f"step must be an int, got {step!r}")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must be in [0, total_steps={total_steps}], got {step}")

    if kind == "imitkd":
        if lmbda is not None and lmbda != IMITKD_LMBDA:
            raise ValueError(
                f"lmbda={lmbda!r} contradicts kind 'imitkd' (the GKD paper's ImitKD baseline, "
                f"lmbda={IMITKD_LMBDA}); leave lmbda unset or use kind 'constant'"
            )
        return IMITKD_LMBDA
    if lmbda is None:
        raise ValueError(f"lmbda schedule kind {kind!r} needs lmbda (in [0, 1])")
    if not isinstance(lmbda, numbers.Real) or not 0.0 <= lmbda <= 1.0:
        raise ValueError(f"lmbda must be in [0, 1], got {lmbda!r}")

    lmbda = float(lmbda)
    progress = int(step) / int(total_steps)  # in [0, 1]
    if kind == "constant":
        return lmbda
    if kind == "linear":
        return lmbda * progress
    # "exponential"
    return lmbda * (1.0 - math.pow(IMITKD_EXP_BASE, -progress))
