"""FLAN 2021 instruction tuning, the paper's task-agnostic distillation data: Flan Collection
records {"inputs", "targets"} -> the prompt exactly as the collection's template wrote it (the
instruction, options and any few-shot exemplars are already in `inputs`) -> `targets`.

Scored during training by normalized exact match on held-out FLAN prompts: a cheap monitor for
every stage. The paper's numbers are MMLU and BBH, held-out benchmarks any checkpoint is scored
on afterwards (`python -m gkd_jax.evaluate --benchmark=mmlu|bbh`, gkd_jax/evaluation/benchmarks/).
"""

from __future__ import annotations

from gkd_jax.data.records import text_fields
from gkd_jax.evaluation import metrics


def format_flan(rec: object) -> tuple[str, str, str]:
    """(prompt text, target text, reference for the metric) of a Flan Collection record."""
    inputs, targets = text_fields(rec, "inputs", "targets")
    return inputs, targets, normalize(targets)


def normalize(text: str) -> str:
    """Lowercase, whitespace collapsed, end punctuation dropped: "Yes." matches "yes"."""
    return " ".join(text.lower().split()).strip(" .!?")


def flan_exact_match(predictions: list[str], references: list) -> float:
    """References are normalized targets (`format_flan`'s third value)."""
    return metrics.exact_match_accuracy([normalize(p) for p in predictions], references)
