"""Task registry: how to make examples and how to score a decoded completion."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gkd_jax.data import arith
from gkd_jax.metrics import exact_match_accuracy


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    make_examples: Callable  # (split, n, seed) -> list of objects with .prompt .target .answer
    extract: Callable[[str], object]  # decoded completion -> prediction
    metric: Callable[[list, list], float]  # (predictions, references) -> score
    metric_name: str


TASKS: dict[str, Task] = {
    "arith": Task(
        "arith", arith.make_examples, arith.extract_answer, exact_match_accuracy, "accuracy"
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
