"""Tests for gkd_jax.objectives.rewards: each reward against values worked out by hand from its
definition
(the answer after "####", bigram counts, BLEU's n-gram precisions), the registry's look-up by name
and import path with its error messages, and the contract every reward keeps on bad input."""

import math
import textwrap

import numpy as np
import pytest

from gkd_jax.objectives import rewards
from gkd_jax.objectives.rewards import (
    REWARDS,
    bleu,
    combine,
    exact_answer,
    get_reward,
    gsm8k_answer,
    length_penalty,
    rouge2,
    sentence_bleu,
)


def call(reward, completions, references):
    """Call a reward with one dummy prompt per completion."""
    return reward(["prompt"] * len(completions), completions, references)


# ----------------------------------------------------------------------------- exact_answer


def test_exact_answer_by_hand():
    cases = [
        ("23+45=68 68+12=80 #### 80", 80, 1.0),  # right answer
        ("23+45=68 68+12=81 #### 81", 80, 0.0),  # wrong answer
        ("23+45=68 68+12=80", 80, 0.0),  # no "####": the 80 in the reasoning does not count
        ("", 80, 0.0),  # empty completion
        ("#### 80 and then some junk 99", 80, 1.0),  # trailing junk after the answer
        ("####80", 80, 1.0),  # no space after the marker
        ("10-25=-15 #### -15", -15, 1.0),  # negative answer
        ("#### 15", -15, 0.0),  # sign matters
        ("#### 70 #### 80", 80, 1.0),  # the last "####" counts
        ("#### eighty", 80, 0.0),  # marker with no number after it
        ("#### 80", "80", 1.0),  # an integer-string reference counts as the integer
    ]
    got = call(exact_answer, [c for c, _, _ in cases], [r for _, r, _ in cases])
    np.testing.assert_array_equal(got, np.array([e for _, _, e in cases], dtype=np.float32))


def test_exact_answer_bad_references_score_zero():
    got = call(exact_answer, ["#### 80"] * 4, [None, float("nan"), "eighty", 80.5])
    np.testing.assert_array_equal(got, np.zeros(4, np.float32))


# ----------------------------------------------------------------------------- gsm8k_answer


def test_gsm8k_answer_by_hand():
    cases = [
        ("She pays 3 * 24 = 72 dollars. The answer is 72.", "72", 1.0),
        ("She pays 3 * 24 = 72 dollars. The answer is 71.", "72", 0.0),
        ("The answer is $1,000.", "1000", 1.0),  # "$" and thousands commas
        ("The answer is 3.0", 3, 1.0),  # int reference, "3.0" == "3"
        ("So 5 - 8 = -3. The answer is -3.", "-3", 1.0),  # negative
        ("Half of 48 is 24. Q: Tom has 5 cats", "24", 1.0),  # last number before a new "Q:"
        ("no numbers at all", "72", 0.0),
        ("", "72", 0.0),
        ("The answer is 72.", "Natalia sold 48/2 = 24 clips... #### 72", 1.0),  # full solution
        ("The answer is 72.", None, 0.0),
        ("The answer is 72.", float("nan"), 0.0),
        ("The answer is 72.", "no answer here", 0.0),
    ]
    got = call(gsm8k_answer, [c for c, _, _ in cases], [r for _, r, _ in cases])
    np.testing.assert_array_equal(got, np.array([e for _, _, e in cases], dtype=np.float32))


# ---------------------------------------------------------------------------------- rouge2


def test_rouge2_by_hand():
    # Lowercased, split on non-alphanumerics; all words <= 3 letters, so the stemmer is a no-op.
    # pred bigrams: (the cat) (cat sat) (sat on) (on the) (the mat)             -> 5
    # ref bigrams:  (a cat) (cat sat) (sat on) (on a) (a red) (red mat)         -> 6
    # shared: (cat sat) (sat on) -> 2; F1 = 2 * 2 / (5 + 6).
    got = call(rouge2, ["The cat sat on the mat."], ["a cat sat on a red mat"])
    assert got[0] == pytest.approx(2 * 2 / (5 + 6), abs=1e-6)


def test_rouge2_identical_disjoint_and_degenerate():
    text = "the quick brown fox jumps over the lazy dog"
    got = call(
        rouge2,
        [text, "red green blue", "", "fox"],
        [text, "one two three", text, text],
    )
    np.testing.assert_allclose(got, [1.0, 0.0, 0.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------------------------ bleu


def test_bleu_by_hand():
    # "a b c d e" vs "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2 (none zero, so no
    # smoothing), equal lengths (brevity penalty 1): BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4).
    # "a b c d" vs "a b c d e f": all precisions 1, brevity penalty exp(1 - 6/4).
    got = call(bleu, ["a b c d e", "a b c d"], ["a b c d f", "a b c d e f"])
    expected = [(4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, math.exp(1 - 6 / 4)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bleu_range_identical_and_empty():
    text = "The quick brown fox jumps over the lazy dog."
    got = call(
        bleu,
        [text, "", "   ", "fox dog", "completely unrelated words here"],
        [text, text, text, text, text],
    )
    assert got.dtype == np.float32 and np.all((got >= 0) & (got <= 1))
    assert got[0] == pytest.approx(1.0, abs=1e-6)
    assert got[1] == 0.0 and got[2] == 0.0
    assert 0.0 < got[3] < 1.0  # partial match: smoothed, strictly between


def test_sentence_bleu_factory():
    assert call(sentence_bleu("intl"), ["a b c d e"], ["a b c d e"])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown sacrebleu tokenizer 'nope'"):
        sentence_bleu("nope")  # an unknown tokenizer fails when the reward is built


# -------------------------------------------------------------------------- length_penalty


def test_length_penalty_exact_values():
    reward = length_penalty(target_chars=10, scale=0.5)
    got = call(reward, ["x" * 10, "", "x" * 15, "x" * 5, "x" * 30, None], [None] * 6)
    # -0.5 * |len - 10| / 10
    np.testing.assert_allclose(got, [0.0, -0.5, -0.25, -0.25, -1.0, -0.5], atol=1e-7)


def test_length_penalty_default_and_bad_arguments():
    got = call(REWARDS["length_penalty"], ["x" * 48, "x" * 24], [1, 2])
    np.testing.assert_allclose(got, [0.0, -0.5], atol=1e-7)  # target 48 chars, scale 1
    for target, scale in [(0, 1.0), (-3, 1.0), (10.5, 1.0), (10, -1.0), (10, math.inf)]:
        with pytest.raises(ValueError, match="length_penalty"):
            length_penalty(target, scale)


# --------------------------------------------------------------------------------- combine


def test_combine_weighted_sum():
    completions = ["#### 80", "#### 7", "x" * 48]
    references = [80, 80, 80]
    reward = combine({"exact_answer": 2.0, "length_penalty": 0.5})
    # exact: 1, 0, 0; default length penalty: -|len - 48| / 48 with lengths 7, 6, 48.
    expected = [2.0 - 0.5 * 41 / 48, 0.0 - 0.5 * 42 / 48, 0.0]
    got = call(reward, completions, references)
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_combine_errors():
    with pytest.raises(ValueError, match="empty"):
        combine({})
    with pytest.raises(ValueError, match="unknown reward 'exact_anwser'"):
        combine({"exact_anwser": 1.0})
    with pytest.raises(ValueError, match="finite"):
        combine({"exact_answer": math.nan})


# ------------------------------------------------------------------------------- get_reward


def test_get_reward_registered_names():
    for name in ["exact_answer", "gsm8k_answer", "rouge2", "bleu", "length_penalty"]:
        assert get_reward(name) is REWARDS[name]
    assert get_reward("gkd_jax.objectives.rewards:exact_answer") is exact_answer


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's reward module, importable as `user_rewards_for_test` from a temporary dir."""
    (tmp_path / "user_rewards_for_test.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            NOT_A_FUNCTION = 3

            def entailment(prompts, completions, references):
                return np.array([float(len(c)) for c in completions], dtype=np.float32)

            class Scorer:
                @staticmethod
                def score(prompts, completions, references):
                    return np.ones(len(completions), dtype=np.float32)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "user_rewards_for_test", raising=False)
    yield "user_rewards_for_test"


def test_get_reward_import_path(user_module):
    fn = get_reward(f"{user_module}:entailment")
    np.testing.assert_array_equal(call(fn, ["ab", ""], [None, None]), [2.0, 0.0])
    assert call(get_reward(f"{user_module}:Scorer.score"), ["a"], ["b"])[0] == 1.0
    # Import paths work inside combine too.
    mixed = combine({f"{user_module}:entailment": 1.0, "exact_answer": 10.0})
    np.testing.assert_allclose(call(mixed, ["#### 5", "#### 4"], [5, 5]), [16.0, 6.0])


def test_get_reward_errors(user_module):
    cases = [
        ("exact_anwser", ["unknown reward 'exact_anwser'", "exact_answer", "module:attribute"]),
        ("", ["non-empty"]),
        (":entailment", ["not an import path"]),
        (f"{user_module}:", ["not an import path"]),
        (
            "no_such_package_xyz.rewards:entailment",
            ["'no_such_package_xyz.rewards:entailment'", "cannot import", "PYTHONPATH"],
        ),
        (
            f"{user_module}:entailmnt",
            [f"'{user_module}:entailmnt'", "no attribute 'entailmnt'", "fix the name"],
        ),
        (f"{user_module}:NOT_A_FUNCTION", [f"'{user_module}:NOT_A_FUNCTION'", "not callable"]),
    ]
    for spec, fragments in cases:
        with pytest.raises(ValueError) as info:
            get_reward(spec)
        for fragment in fragments:
            assert fragment in str(info.value), (spec, fragment, str(info.value))
    with pytest.raises(ValueError, match="non-empty string"):
        get_reward(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_reward_is_float32_finite_on_a_messy_batch(name):
    completions = [
        "",
        "23+45=68 #### 68",
        "The answer is 72.",
        "the cat sat on the mat",
        "####",
        "x" * 500,
        None,
    ]
    references = [68, 68, None, "a cat sat on a mat", float("nan"), "72", 68]
    got = call(REWARDS[name], completions, references)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == (len(completions),)
    assert np.all(np.isfinite(got))
    # The empty completion and the None completion score alike (None is read as "").
    assert got[0] == got[-1]


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_reward_empty_batch_and_length_mismatch(name):
    got = REWARDS[name]([], [], [])
    assert got.dtype == np.float32 and got.shape == (0,)
    with pytest.raises(ValueError, match="one prompt and one reference per completion"):
        REWARDS[name](["p", "p"], ["a", "b"], [1])


def test_module_docstring_lists_every_registered_reward():
    for name in REWARDS:
        assert name in rewards.__doc__
