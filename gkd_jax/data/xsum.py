"""XSum as the paper's T5 runs: "summarize: " + document -> summary; ROUGE-2 (+ ROUGE-1/L/Lsum)."""

from __future__ import annotations

import functools

from gkd_jax.data.records import text_fields
from gkd_jax.evaluation import metrics


def format_xsum(rec: object) -> tuple[str, str, str]:
    """(prompt text, target text, reference for the metric) of a record."""
    document, summary = text_fields(rec, "document", "summary")
    return "summarize: " + document, summary, summary


@functools.lru_cache(maxsize=1)
def _rouge(predictions: tuple[str, ...], references: tuple[str, ...]) -> dict[str, float]:
    # An evaluation asks for rouge2 and then the extra ROUGEs of the same texts: score once.
    return metrics.rouge(predictions, references)


def xsum_rouge2(predictions: list[str], references: list) -> float:
    return _rouge(tuple(predictions), tuple(references))["rouge2"]


def xsum_extra_rouge(predictions: list[str], references: list) -> dict[str, float]:
    scores = _rouge(tuple(predictions), tuple(references))
    return {k: scores[k] for k in ("rouge1", "rougeL", "rougeLsum")}
