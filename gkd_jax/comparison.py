"""The same distillation at other `lmbda` values, run by one command and printed side by side.

`config.compare_lmbdas` (e.g. `(0.0,)` in configs/arith.py) makes `python -m gkd_jax.train` first
train a copy of the run at each of those `lmbda` values, each in WORKDIR/compare_lmbdaL (its own
checkpoints, metrics and results.json; a rerun resumes or skips it as any run), then the run
itself, and print one table: supervised KD (lmbda 0) beside on-policy GKD (lmbda 1), from the same
teacher, start and compute. The run's results.json gets the comparisons' final scores too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from gkd_jax import distributed

LABELS = {0.0: "supervised KD", 1.0: "on-policy GKD"}


def lmbda_label(lmbda: float) -> str:
    name = LABELS.get(lmbda, "mixed")
    return f"{name} (λ={lmbda:g})"


def variant_dir(workdir: str, lmbda: float) -> str:
    return os.path.join(workdir, f"compare_lmbda{lmbda:g}")


def at_lmbda(config: ml_collections.ConfigDict, lmbda: float) -> ml_collections.ConfigDict:
    """The run's config with gkd.lmbda set and no comparisons of its own."""
    variant = ml_collections.ConfigDict(config.to_dict())  # an unlocked deep copy
    variant.gkd.lmbda = lmbda
    variant.compare_lmbdas = ()
    variant.lock()
    return variant


def check_comparisons(config) -> None:
    """Before anything trains: the values must be lmbdas, and there must be a distillation."""
    values = tuple(config.compare_lmbdas)
    if values and config.objective != "gkd":
        raise ValueError(
            f"config.compare_lmbdas={values}: comparisons are of distillation runs; "
            f"config.objective={config.objective!r} (set compare_lmbdas=() or objective='gkd')"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"config.compare_lmbdas={values}: each must be a number in [0, 1]")


def train_with_comparisons(
    config: ml_collections.ConfigDict, workdir: str, train: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """`train(config, workdir) -> summary` (trainer.train_and_evaluate) at each compared lmbda,
    then for the run itself; returns the run's summary with the comparisons' final scores."""
    check_comparisons(config)
    compared = {}
    for lmbda in config.compare_lmbdas:
        log(f"[compare] training the same run at lmbda={lmbda:g} first")
        summary = train(at_lmbda(config, float(lmbda)), variant_dir(workdir, float(lmbda)))
        compared[float(lmbda)] = summary["scores"]["final"]
    summary = train(config, workdir)
    if compared:
        summary["compared"] = {f"{k:g}": v for k, v in compared.items()}
        if distributed.is_main_process():  # it wrote results.json
            with open(os.path.join(workdir, "results.json"), "w") as f:
                json.dump(summary, f, indent=2)
        log(comparison_table(summary, compared, float(config.gkd.lmbda)))
    return summary


def log(msg: str) -> None:
    if distributed.is_main_process():
        print(msg, flush=True)


def comparison_table(summary: dict[str, Any], compared: dict[float, float], lmbda: float) -> str:
    metric, scores = summary["metric"], summary["scores"]
    rows = [("teacher", scores.get("teacher")), ("student (start)", scores.get("start"))]
    finals = {**compared, lmbda: scores["final"]}
    rows += [(f"student after {lmbda_label(k)}", v) for k, v in sorted(finals.items())]
    lines = [f"| model | {metric} |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows if value is not None]
    head = f"The same {summary['steps']} steps from the same start, by lmbda:"
    return head + "\n" + "\n".join(lines)
