"""Tests for gkd_jax.evaluation.metrics: ROUGE/BLEU against values computed by hand from the
definitions,
GSM8K answer extraction edge cases."""

import math

import pytest

from gkd_jax.evaluation.metrics import (
    bleu,
    exact_match_accuracy,
    gsm8k_accuracy,
    gsm8k_answer,
    normalize_number,
    rouge,
)


def f1(overlap: int, n_pred: int, n_ref: int) -> float:
    """ROUGE-N / ROUGE-L F-measure x 100 from the overlap count and the two lengths."""
    p, r = overlap / n_pred, overlap / n_ref
    return 0.0 if overlap == 0 else 100.0 * 2 * p * r / (p + r)


# ------------------------------------------------------------------------------------ ROUGE


def test_rouge_by_hand():
    # pred unigrams: the x2, cat, sat, on, mat; ref: the x2, cat, is, on, mat -> 5 of 6 match.
    # bigrams: (the cat) (cat sat) (sat on) (on the) (the mat) vs (the cat) (cat is) (is on)
    # (on the) (the mat) -> 3 of 5. LCS: "the cat on the mat" -> 5 of 6.
    out = rouge(["The cat sat on the mat."], ["the cat is on the mat"])
    assert set(out) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert out["rouge1"] == pytest.approx(f1(5, 6, 6))
    assert out["rouge2"] == pytest.approx(f1(3, 5, 5))
    assert out["rougeL"] == pytest.approx(f1(5, 6, 6))


def test_rouge_precision_recall_asymmetric():
    # pred a b c, ref a b c d e: unigram P = 3/3, R = 3/5; bigram P = 2/2, R = 2/4.
    out = rouge(["a b c"], ["a b c d e"])
    assert out["rouge1"] == pytest.approx(75.0)
    assert out["rouge2"] == pytest.approx(f1(2, 2, 4))
    assert out["rougeL"] == pytest.approx(75.0)


def test_rouge_stems():
    # Porter stemming (tokens longer than 3 characters): "cats" ~ "cat", "running" ~ "run".
    out = rouge(["the cats running"], ["the cat run"])
    assert out["rouge1"] == pytest.approx(100.0)
    assert out["rouge2"] == pytest.approx(100.0)


def test_rouge_mean_over_examples_and_no_overlap():
    out = rouge(["a b c", "x y"], ["a b c d e", "p q"])
    assert out["rouge1"] == pytest.approx((75.0 + 0.0) / 2)
    assert rouge([""], ["a b"])["rouge1"] == 0.0


def test_rouge_lsum_uses_newline_sentences():
    # Joined, "d e a b c" vs "a b c d e" has LCS "a b c" (3 of 5) and bigrams 3 of 4; sentence by
    # sentence, each reference sentence is matched whole by a prediction sentence (5 of 5).
    out = rouge(["d e\na b c"], ["a b c\nd e"])
    assert out["rougeL"] == pytest.approx(60.0)
    assert out["rouge2"] == pytest.approx(75.0)
    assert out["rougeLsum"] == pytest.approx(100.0)
    assert out["rouge1"] == pytest.approx(100.0)


def test_rouge_bad_input():
    with pytest.raises(ValueError, match="length mismatch"):
        rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        rouge([], [])


# ------------------------------------------------------------------------------------- BLEU


def ref_bleu(matches, totals, hyp_len, ref_len):
    """BLEU x 100 from n-gram (matches, totals), n = 1..4, and the corpus lengths (Papineni)."""
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_p)


REF = "the cat sat on the mat"
LONG = "the cat sat on the mat today"  # 7 tokens: 1..4-gram matches 6/7, 5/6, 4/5, 3/4
SHORT = "the cat sat on the"  # 5 tokens: every n-gram matches, brevity penalty exp(1 - 6/5)


def test_bleu_by_hand():
    assert bleu([LONG], [REF]) == pytest.approx(ref_bleu([6, 5, 4, 3], [7, 6, 5, 4], 7, 6))
    assert bleu([SHORT], [REF]) == pytest.approx(100.0 * math.exp(1 - 6 / 5))
    assert bleu([REF], [REF]) == pytest.approx(100.0)


def test_bleu_pools_counts_over_the_corpus():
    # Corpus BLEU sums matches and lengths before the geometric mean; lengths 7 + 5 = 6 + 6.
    want = ref_bleu([6 + 5, 5 + 4, 4 + 3, 3 + 2], [7 + 5, 6 + 4, 5 + 3, 4 + 2], 12, 12)
    assert bleu([LONG, SHORT], [REF, REF]) == pytest.approx(want)
    assert want != pytest.approx((bleu([LONG], [REF]) + bleu([SHORT], [REF])) / 2)


def test_bleu_13a_splits_punctuation():
    # 13a tokenization: "mat." -> "mat ." on both sides, so a final period is one more match.
    assert bleu([REF + "."], [REF + "."]) == pytest.approx(100.0)
    # 7 tokens vs 7: 1..4-gram matches 6/7, 5/6, 4/5, 3/4 (the "." is unmatched), no penalty.
    want = ref_bleu([6, 5, 4, 3], [7, 6, 5, 4], 7, 7)
    assert bleu([REF + " !"], [REF + " ."]) == pytest.approx(want)


def test_bleu_bad_input():
    with pytest.raises(ValueError, match="length mismatch"):
        bleu(["a"], [])
    with pytest.raises(ValueError, match="at least one"):
        bleu([], [])


# ------------------------------------------------------------------------------------ GSM8K


@pytest.mark.parametrize(
    "text, answer",
    [
        ("5 + 3 = 8\n#### 8", "8"),
        ("#### 1,000", "1000"),
        ("####1000", "1000"),
        ("#### 3.0", "3"),
        ("#### -0", "0"),
        ("#### -7", "-7"),
        ("#### $12.50", "12.5"),
        ("#### 4 and later #### 7", "7"),  # the last marker wins
        ("#### 72\n\nQ: Tom has 3 cats", "72"),  # the first number after the marker
        ("She has 3 cats and 12 dogs.", "12"),  # no marker: last number, "." not a decimal
        ("The answer is $1,234.50.", "1234.5"),
        ("It is -3 degrees", "-3"),
        ("10-5=5", "5"),  # a minus between numbers is subtraction, not a sign
        ("It costs -$5", "-5"),
        ("half is .5", "0.5"),
        ("list 3,4,5", "5"),  # not a thousands separator
        ("2.75", "2.75"),
        ("sold 48/2 = <<48/2=24>>24 clips", "24"),  # GSM8K calculator annotation
        ("no number here", None),
        ("", None),
        ("I got 12 ####", None),  # marker without an answer: reasoning numbers don't count
    ],
)
def test_gsm8k_answer(text, answer):
    assert gsm8k_answer(text) == answer


@pytest.mark.parametrize(
    "text, canonical",
    [("1,000", "1000"), ("$3.", "3"), ("3.0", "3"), ("-0.0", "0"), ("0.50", "0.5"), ("x", None)],
)
def test_normalize_number(text, canonical):
    assert normalize_number(text) == canonical


def test_gsm8k_accuracy():
    preds = [
        "48 / 2 = 24 and 48 + 24 = 72. #### 72",
        "The total is 1,000.",
        "So 3.0 apples.",
        "I don't know",
        "#### 5",
    ]
    refs = [
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
        "1000",
        3,
        "#### 4",
        "#### 6",
    ]
    assert gsm8k_accuracy(preds, refs) == pytest.approx(3 / 5)


def test_gsm8k_accuracy_bad_input():
    with pytest.raises(ValueError, match="reference 1"):
        gsm8k_accuracy(["1", "2"], ["1", "no answer"])
    with pytest.raises(ValueError, match="length mismatch"):
        gsm8k_accuracy(["1"], ["1", "2"])
    with pytest.raises(ValueError, match="at least one"):
        gsm8k_accuracy([], [])


def test_exact_match_accuracy_unchanged():
    assert exact_match_accuracy([1, None, 4, 0], [1, 2, 3, 0]) == 0.5
