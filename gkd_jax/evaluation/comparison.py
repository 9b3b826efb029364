"""The same distillation at other `lmbda` values, run by one command and printed side by side.

`config.compare_lmbdas` (a comma list, e.g. "0" in configs/arith.py) makes `python -m
gkd_jax.train` train the run, then a copy of it at each of those `lmbda` values, each in
WORKDIR/compare_lmbdaL (its own checkpoints, metrics and results.json; a rerun resumes it as any
run; a teacher or start that the run trained in WORKDIR is reused), and print one table:
supervised KD (lmbda 0) beside on-policy GKD (lmbda 1), from the same teacher, start and
compute. The run's results.json gets the comparisons' final scores too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from gkd_jax.parallel import distributed

# What lmbda 0 and 1 are called wherever a run is labelled by its lmbda: this comparison's table
# and launch/collect.py's tables and figures.
LMBDA_NAMES = {0.0: "supervised KD", 1.0: "on-policy"}


def lmbda_label(lmbda: float) -> str:
    """'λ=0 (supervised KD)', 'λ=0.5', 'λ=1 (on-policy)'."""
    name = LMBDA_NAMES.get(lmbda)
    return f"λ={lmbda:g}" + (f" ({name})" if name else "")


def variant_dir(workdir: str, lmbda: float) -> str:
    return os.path.join(workdir, f"compare_lmbda{lmbda:g}")


def at_lmbda(
    config: ml_collections.ConfigDict, lmbda: float, workdir: str
) -> ml_collections.ConfigDict:
    """The run's config with gkd.lmbda set, no comparisons of its own, and the models the run
    made in `workdir` from their recipes (checkpoint "") as its teacher and start."""
    variant = ml_collections.ConfigDict(config.to_dict())  # an unlocked deep copy
    variant.gkd.lmbda = lmbda
    variant.compare_lmbdas = ""
    for name in ("teacher", "init"):
        if not variant[name].checkpoint and variant[name].recipe:
            variant[name].checkpoint = os.path.join(os.path.abspath(workdir), name, "model")
    variant.lock()
    return variant


def compared_lmbdas(config) -> list[float]:
    """config.compare_lmbdas ("" or a comma list such as "0,0.5") as numbers, checked before
    anything trains: each in [0, 1], and only for a distillation run."""
    spec = config.compare_lmbdas
    bad = f"config.compare_lmbdas={spec!r} is invalid:"
    if not isinstance(spec, str):
        raise ValueError(f"{bad} must be a comma list of lmbdas such as '0,0.5' ('' = none)")
    try:
        values = [float(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        values = [-1.0]
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{bad} each must be a number in [0, 1], e.g. '0' or '0,0.5'")
    if values and config.objective != "gkd":
        raise ValueError(
            f"{bad} comparisons are of distillation runs, and config.objective="
            f"{config.objective!r} (set compare_lmbdas='' or objective='gkd')"
        )
    return values


def train_with_comparisons(
    config: ml_collections.ConfigDict, workdir: str, train: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """`train(config, workdir) -> summary` (trainer.train_and_evaluate) for the run itself, then
    at each compared lmbda; returns the run's summary with the comparisons' final scores."""
    lmbdas = compared_lmbdas(config)  # a bad value fails before anything trains
    summary = train(config, workdir)
    compared = {}
    for lmbda in lmbdas:
        where = variant_dir(workdir, lmbda)
        distributed.log(f"[compare] the same run at lmbda={lmbda:g}, in {where}")
        variant = train(at_lmbda(config, lmbda, workdir), where)
        compared[lmbda] = variant["scores"]["final"]
    if compared:
        summary["compared"] = {f"{k:g}": v for k, v in compared.items()}
        if distributed.is_main_process():  # it wrote results.json
            with open(os.path.join(workdir, "results.json"), "w") as f:
                json.dump(summary, f, indent=2)
        distributed.log(comparison_table(summary, compared, float(config.gkd.lmbda)))
    return summary


def comparison_table(summary: dict[str, Any], compared: dict[float, float], lmbda: float) -> str:
    metric, scores = summary["metric"], summary["scores"]
    rows = [("teacher", scores.get("teacher")), ("student (start)", scores.get("start"))]
    finals = {**compared, lmbda: scores["final"]}
    rows += [(f"student after GKD {lmbda_label(k)}", v) for k, v in sorted(finals.items())]
    lines = [f"| model | {metric} |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows if value is not None]
    head = f"The same {summary['steps']} steps from the same start, by lmbda:"
    return head + "\n" + "\n".join(lines)
