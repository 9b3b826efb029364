"""WMT14 en->de as the paper's T5 runs: "translate English to German: " + en -> de; corpus BLEU."""

from __future__ import annotations

from gkd_jax.data.records import text_fields
from gkd_jax.evaluation import metrics


def format_wmt_en_de(rec: object) -> tuple[str, str, str]:
    """(prompt text, target text, reference for the metric) of a record."""
    # Hugging Face's wmt14 nests the pair: {"translation": {"de": ..., "en": ...}}.
    if isinstance(rec, dict) and isinstance(rec.get("translation"), dict):
        rec = rec["translation"]
    en, de = text_fields(rec, "en", "de")
    return "translate English to German: " + en, de, de


def wmt_bleu(predictions: list[str], references: list) -> float:
    return metrics.bleu(predictions, references)
