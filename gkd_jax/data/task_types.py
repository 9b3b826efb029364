"""What a task is: `Task` (how its data load and how its completions are scored) and `Split`
(the token ids one load gives). The task modules build these; tasks.py holds the registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence


@dataclasses.dataclass
class Split:
    """Token ids of one split, ready for `pipeline.pack`."""

    prompt_ids: list[Sequence[int]]  # lists, or int32 array.array (paper tasks: 10x smaller)
    completion_ids: list[Sequence[int]]  # each ends with a stop token unless truncated
    references: list  # what the metric compares decoded completions against
    prompts: list[str]  # prompt texts, for the samples shown in the logs
    # Chat records' optional checkable answers and task families (None per row where absent;
    # None here: no row has one): evaluation's answer_accuracy (metrics.answer_scores).
    answers: list[str | None] | None = None
    families: list[str | None] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    # (config, tokenizer, stop_ids, log) -> (train Split, eval Split)
    load: Callable[..., tuple[Split, Split]]
    metric_name: str
    # (decoded completions, references) -> score; None: the student's on-policy divergence from
    # the teacher on its own greedy completions (lower is better), for data without answers.
    metric: Callable[[list[str], list], float] | None
    higher_is_better: bool = True
    # (decoded completions, references) -> more scores to report beside `metric_name`'s
    # (e.g. xsum's rouge1/rougeL/rougeLsum); not used to pick the best model.
    extra_metrics: Callable[[list[str], list], dict[str, float]] | None = None
