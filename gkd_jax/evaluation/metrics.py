"""Evaluation metrics (pure Python): the paper's ROUGE (XSum), BLEU (WMT) and GSM8K accuracy.

ROUGE and BLEU come from the field's reference implementations (Google's `rouge-score`, as used by
T5 and the GKD paper; `sacrebleu`, as WMT papers report) rather than re-implementations, so the
numbers are comparable with published ones.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from decimal import Decimal

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _check_pairs(predictions: Sequence, references: Sequence, metric: str) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{metric}: length mismatch: {len(predictions)} predictions vs "
            f"{len(references)} references"
        )
    if not references:
        raise ValueError(f"{metric} needs at least one example")


def exact_match_accuracy(
    predictions: Sequence[int | str | None], references: Sequence[int | str]
) -> float:
    """Fraction of predictions equal to their reference; a None prediction counts as wrong."""
    if len(predictions) != len(references):
        raise ValueError(
            f"length mismatch: {len(predictions)} predictions vs {len(references)} references"
        )
    if not references:
        raise ValueError("exact_match_accuracy needs at least one example")
    correct = sum(p is not None and p == r for p, r in zip(predictions, references, strict=True))
    return correct / len(references)


# ----------------------------------------------------------------------------------- ROUGE


@functools.cache
def _rouge_scorer():
    # Imported here, not at module level: rouge-score pulls in nltk (~2 s), and every task
    # (arith included) imports this module.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F-measures x 100, averaged over examples (one reference each).

    Google's `rouge-score` with the Porter stemmer, as T5 and the GKD paper (ROUGE-2 on XSum)
    report it: text is lowercased and split on non-alphanumerics; tokens longer than 3 characters
    are stemmed ("cats" ~ "cat"); that tokenizer drops every non-ASCII letter, so it suits English
    (XSum), not e.g. German or Chinese outputs. "rougeLsum" is the summary-level LCS over
    sentences separated by "\\n": put one sentence per line (e.g. with `nltk.sent_tokenize`) or
    it equals "rougeL".

    The average is the plain mean over examples; T5's `metrics.rouge` reports the midpoint of a
    bootstrap of that mean, which differs from it only by resampling noise.
    """
    _check_pairs(predictions, references, "rouge")
    scorer = _rouge_scorer()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        # rouge-score's argument order is (target, prediction).
        scores = scorer.score(ref, pred)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(references) for key, total in totals.items()}


# ------------------------------------------------------------------------------------ BLEU


def bleu(predictions: Sequence[str], references: Sequence[str], *, tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100) of detokenized text, one reference per prediction, via `sacrebleu`.

    `sacrebleu.corpus_bleu(predictions, [references])` with its defaults (13a tokenization,
    exponential smoothing, case-sensitive), the WMT reporting standard: n-gram matches are pooled
    over the corpus before the geometric mean, so this is not the mean of sentence BLEUs.
    `tokenize` selects another sacrebleu tokenizer ("intl", "zh", "ja-mecab", ...).
    """
    _check_pairs(predictions, references, "bleu")
    import sacrebleu  # here for symmetry with rouge: metrics stays importable without extras

    return float(
        sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize).score
    )


# ----------------------------------------------------------------------------------- GSM8K

# A number as written in GSM8K text: optional sign, optional "$", digits with optional
# thousands commas ("1,000" but not the list "3,4"), optional decimals; or a bare ".5".
# The sign counts only when not glued to a preceding word/number, so "10-5=5" yields 10, 5, 5.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w.])(?P<sign>-))?\$?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)


def normalize_number(text: str) -> str | None:
    """Canonical form of one number: commas and "$" dropped, "3.0" -> "3", "-0" -> "0".

    Returns None if `text` is not a number. Two numbers are equal iff their canonical forms are.
    """
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except ArithmeticError:  # decimal.InvalidOperation
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gsm8k_answer(text: str) -> str | None:
    """The final numeric answer of a GSM8K-style solution, calculator-free, canonicalized.

    Rules, in order:
      1. If "####" occurs, the answer is the first number after its last occurrence (the GSM8K
         convention "... #### 72"); if none follows it, None: the model wrote the marker but no
         answer, and numbers from the reasoning before it are not taken as one.
      2. Otherwise, the last number in the text (the "flexible" extraction for models that end
         with "The answer is 72.").
      3. None if there is no number.
    Numbers may carry a sign, "$", thousands commas and decimals; a sentence-final "." is not a
    decimal point. The result is `normalize_number`'s canonical form ("1,000" -> "1000",
    "$3.50" -> "3.5", "3.0" -> "3"). Calculator annotations ("<<48/2=24>>24") need no special
    handling: the value written after them is the last number.

    This scores the paper's GSM8K setting (greedy decoding, 4-shot chain of thought, exact final
    answer); cut a few-shot completion at the next exemplar's start (e.g. "\\n\\nQ:") before
    calling this, or rule 2 may read a number from a question the model went on to invent.
    """
    if "####" in text:
        match = _NUMBER_RE.search(text.rsplit("####", 1)[1])
        matches = [match] if match else []
    else:
        matches = list(_NUMBER_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return normalize_number((last.group("sign") or "") + last.group("num"))


def gsm8k_accuracy(predictions: Sequence[str], references: Sequence[str | int]) -> float:
    """Fraction (0-1) of predictions whose `gsm8k_answer` equals the reference's, numerically.

    `references` may be full GSM8K solutions ("... #### 72") or bare answers ("72", 72); both
    sides go through `gsm8k_answer`, so "1,000" == "1000" and "3.0" == "3". A prediction with no
    answer counts as wrong; a reference with none is a data error and raises ValueError.
    """
    _check_pairs(predictions, references, "gsm8k_accuracy")
    gold = [gsm8k_answer(str(r)) for r in references]
    for i, (answer, ref) in enumerate(zip(gold, references, strict=True)):
        if answer is None:
            raise ValueError(f"gsm8k_accuracy: reference {i} has no numeric answer: {ref!r}")
    return exact_match_accuracy([gsm8k_answer(p) for p in predictions], gold)


_WORD_RE = re.compile(r"[A-Za-z]+")


def answer_correct(reply: str, answer: str) -> bool:
    """Whether a free-form chat `reply` gives the checkable `answer` (data/real_prompts.py):

      * an integer answer ("124", "-7"): the reply's LAST number (gsm8k_answer's rule 2: sign,
        thousands commas and decimals read, canonicalized) equals it, so "52 plus 72 is 124."
        is right and "124? No, 123." is wrong;
      * any other answer ("sun dog cat", "New Delhi"): its words (maximal runs of ASCII
        letters) appear as a contiguous run of the reply's words, case-insensitively, with
        punctuation and layout ignored ("Sure! Sun, dog, cat." holds "sun dog cat").
    An answer with no number and no word is never matched."""
    if re.fullmatch(r"\s*-?\d+\s*", answer):
        return gsm8k_answer(reply.replace("####", "")) == normalize_number(answer)
    want = _WORD_RE.findall(answer.lower())
    got = _WORD_RE.findall(reply.lower())
    if not want:
        return False
    n = len(want)
    return any(got[i : i + n] == want for i in range(len(got) - n + 1))


def answer_scores(
    replies: Sequence[str], answers: Sequence[str | None], families: Sequence[str | None]
) -> dict[str, float]:
    """Checkable-answer accuracy (0-1, `answer_correct`) over the rows whose answer is not None:
    "answer_accuracy" over all of them, "answer_accuracy/FAMILY" per family (rows without a
    family pool under "other"); {} when no row has an answer."""
    _check_pairs(replies, answers, "answer_scores")
    hits: dict[str, list[bool]] = {}
    for reply, answer, family in zip(replies, answers, families, strict=True):
        if answer is not None:
            hits.setdefault(family or "other", []).append(answer_correct(reply, answer))
    if not hits:
        return {}
    every = [h for rows in hits.values() for h in rows]
    scores = {"answer_accuracy": sum(every) / len(every)}
    return scores | {f"answer_accuracy/{f}": sum(r) / len(r) for f, r in sorted(hits.items())}
