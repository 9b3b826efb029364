"""Evaluation metrics (pure Python). Task-answer metrics now; ROUGE/BLEU to come."""

from __future__ import annotations

from collections.abc import Sequence


def exact_match_accuracy(predictions: Sequence[int | None], references: Sequence[int]) -> float:
    """Fraction of predictions equal to their reference; a None prediction counts as wrong."""
    if len(predictions) != len(references):
        raise ValueError(
            f"length mismatch: {len(predictions)} predictions vs {len(references)} references"
        )
    if not references:
        raise ValueError("exact_match_accuracy needs at least one example")
    correct = sum(p is not None and p == r for p, r in zip(predictions, references, strict=True))
    return correct / len(references)
