"""reply_stats.py: the replies' statistics against hand-computed values and a from-the-definition
reference on random replies (edge cases: an empty reply, an all-pad row, one repeated token, a
reply that hits max length); the collapse warning fires on degenerate replies (48 newlines,
digit soup) and stays quiet on healthy ones, also from the Evaluator; sample lines stay on one
line."""

import itertools
import os

import numpy as np
import pytest

from gkd_jax.config.loading import load_config_file
from gkd_jax.data.char_tokenizer import build_char_tokenizer
from gkd_jax.data.task_types import Split
from gkd_jax.data.tasks import get_task
from gkd_jax.evaluation.evaluator import Evaluator
from gkd_jax.evaluation.reply_stats import (
    collapse_evidence,
    distinct_n,
    one_line,
    sample_lines,
    split_replies,
)
from gkd_jax.evaluation.reply_stats import reply_stats as stats_of

ARITH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "arith.py"
)
STOPS = (0, 1)  # two stop ids, as ChatML's <|im_end|> beside EOS
PAD = 2
T = 5


def pack(rows: list[list[int]], masked: list[int] | None = None):
    """tokens [N, T] (PAD after each row) and mask [N, T] (True on each row's first
    `masked[i]` positions; default: all of the row's tokens)."""
    tokens = np.full((len(rows), T), PAD, np.int32)
    mask = np.zeros((len(rows), T), bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        mask[i, : len(row) if masked is None else masked[i]] = True
    return tokens, mask


# stopped after 2 tokens | empty (stops at once) | all pad | one token to max length |
# stop id 1 at the last position | max length, no stop
ROWS = [[5, 6, 0], [1], [], [7, 7, 7, 7, 7], [3, 4, 3, 4, 1], [8, 9, 8, 8, 8]]


def test_split_replies_by_hand():
    replies, stopped, truncated = split_replies(*pack(ROWS), STOPS)
    expected = [[5, 6], [], [], [7, 7, 7, 7, 7], [3, 4, 3, 4], [8, 9, 8, 8, 8]]
    assert [r.tolist() for r in replies] == expected
    assert stopped.tolist() == [True, True, False, False, True, False]
    assert truncated.tolist() == [False, False, False, True, False, True]


def test_stats_by_hand():
    s = stats_of(*pack(ROWS), STOPS)
    # content lengths 2, 0, 0, 5, 4, 5: 16 tokens, unigrams {3, 4, 5, 6, 7, 8, 9}
    assert s.reply_tokens == pytest.approx(16 / 6)
    assert (s.reply_stopped, s.reply_truncated) == (pytest.approx(3 / 6), pytest.approx(2 / 6))
    assert s.distinct_1 == pytest.approx(7 / 16)
    # bigrams: (5,6) | (7,7)x4 | (3,4),(4,3),(3,4) | (8,9),(9,8),(8,8),(8,8): 12, 7 unique
    assert s.distinct_2 == pytest.approx(7 / 12)
    assert (s.top_token, s.top_token_share) == (7, pytest.approx(5 / 16))  # 7 x5, 8 x4
    # repetitive: [7]*5 (5/5) and [8,9,8,8,8] (4/5) of 6 replies; [3,4,3,4] is 2/4, not > 1/2
    assert s.repetitive_replies == pytest.approx(2 / 6)


def test_edge_cases():
    empty = stats_of(*pack([[0], [1]]), STOPS)  # replies that stop at once
    assert empty.scores() == {
        "reply_tokens": 0.0, "reply_stopped": 1.0, "reply_truncated": 0.0, "distinct_1": 0.0,
        "distinct_2": 0.0, "top_token_share": 0.0, "repetitive_replies": 0.0,
    }  # fmt: skip
    assert empty.top_token == -1
    pad = stats_of(*pack([[], []]), STOPS)  # all-pad rows: neither stopped nor truncated
    assert (pad.reply_tokens, pad.reply_stopped, pad.reply_truncated) == (0.0, 0.0, 0.0)
    one = stats_of(*pack([[4] * T] * 3), STOPS)  # one token repeated to max length
    assert (one.distinct_1, one.distinct_2) == (pytest.approx(1 / 15), pytest.approx(1 / 12))
    assert (one.top_token_share, one.repetitive_replies, one.reply_truncated) == (1.0, 1.0, 1.0)
    short = stats_of(*pack([[4, 4, 4, 0]]), STOPS)  # 3 tokens: too short to call repetitive
    assert short.repetitive_replies == 0.0 and short.top_token_share == 1.0
    # the mask decides, not the ids: a stop id past the mask is not the reply's
    masked = stats_of(*pack([[5, 6, 0]], masked=[2]), STOPS)
    assert (masked.reply_stopped, masked.reply_tokens) == (0.0, 2.0)


def reference_stats(tokens, mask, stops) -> dict[str, float]:
    """The statistics from their definitions, another way: content = masked ids with a final
    stop dropped; n-grams by sliding windows of numpy arrays."""
    contents, stopped = [], []
    for row, m in zip(tokens, mask, strict=True):
        n = int(m.sum())
        ends_in_stop = n > 0 and row[n - 1] in stops
        stopped.append(ends_in_stop)
        contents.append(list(row[: n - 1] if ends_in_stop else row[:n]))

    def distinct(k):
        grams = [tuple(c[i : i + k]) for c in contents for i in range(len(c) - k + 1)]
        return len(set(grams)) / len(grams) if grams else 0.0

    flat = np.array(list(itertools.chain(*contents)), np.int64)
    counts = np.bincount(flat) if flat.size else np.zeros(1)
    repetitive = [len(c) >= 4 and np.bincount(c).max() > len(c) / 2 for c in contents]
    return {
        "reply_tokens": np.mean([len(c) for c in contents]),
        "reply_stopped": np.mean(stopped),
        "reply_truncated": np.mean([not s and m.all() for s, m in zip(stopped, mask, strict=True)]),
        "distinct_1": distinct(1),
        "distinct_2": distinct(2),
        "top_token_share": counts.max() / flat.size if flat.size else 0.0,
        "repetitive_replies": np.mean(repetitive),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_equal_a_reference_on_random_replies(seed):
    rng = np.random.default_rng(seed)
    n, t = 40, 12
    tokens = rng.integers(0, 6, (n, t)).astype(np.int32)  # small vocabulary: repeats happen
    lengths = rng.integers(0, t + 1, n)  # 0 (all pad) .. t (max length)
    mask = np.arange(t)[None] < lengths[:, None]
    s = stats_of(tokens, mask, STOPS)
    for name, value in reference_stats(tokens, mask, set(STOPS)).items():
        assert getattr(s, name) == pytest.approx(value), name


def test_distinct_n_without_ngrams_is_zero():
    assert distinct_n([np.array([3]), np.array([], np.int32)], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def healthy(rng, n=32, t=48, vocab=500):
    """Replies of 10-40 tokens drawn from a Zipf-like vocabulary, ending with the stop id 0."""
    probs = 1.0 / np.arange(1, vocab + 1)
    tokens = np.full((n, t), PAD, np.int32)
    mask = np.zeros((n, t), bool)
    for i in range(n):
        k = rng.integers(10, 41)
        tokens[i, :k] = 3 + rng.choice(vocab, k, p=probs / probs.sum())
        tokens[i, k] = 0
        mask[i, : k + 1] = True
    return tokens, mask


def test_collapse_evidence_names_each_sign():
    rng = np.random.default_rng(0)
    refs = stats_of(*healthy(rng), STOPS)
    assert collapse_evidence(stats_of(*healthy(rng), STOPS), refs) == []
    newlines = np.full((32, 48), 198, np.int32)  # 48 newlines, no stop
    evidence = collapse_evidence(
        stats_of(newlines, np.ones_like(newlines, bool), STOPS), refs, {198: "\n"}.get
    )
    assert len(evidence) == 3
    assert evidence[0].startswith("100% of replies ran to max_new_tokens")
    assert evidence[0].endswith("(references: 0%)")
    assert "'\\n' (id 198), is 100% of all reply tokens" in evidence[1]
    assert evidence[2].startswith("distinct-2 0.001 (references: ")
    digits = 3 + rng.integers(0, 10, (32, 48)).astype(np.int32)  # digit soup: 10 ids
    evidence = collapse_evidence(stats_of(digits, np.ones_like(digits, bool), STOPS), refs)
    assert [e.split(" ")[1] for e in evidence] == ["of", "0.066"]  # truncated; distinct-2 100/1504


def test_long_references_explain_long_replies():
    """Replies that all hit max length are not a collapse when the references do too (the data
    are longer than max_new_tokens)."""
    rng = np.random.default_rng(1)
    tokens, _ = healthy(rng)
    tokens[tokens == 0] = 7  # no stop anywhere
    full = np.ones_like(tokens, bool)
    tokens[tokens == PAD] = 3 + rng.integers(0, 200, (tokens == PAD).sum())
    refs = stats_of(tokens, full, STOPS)
    assert refs.reply_truncated == 1.0
    assert collapse_evidence(stats_of(tokens[::-1], full, STOPS), refs) == []


def make_evaluator(tmp_path, completions: list[str]) -> Evaluator:
    """An Evaluator of the arith task over prompts whose references are `completions` (no
    model: only host-side scoring is used)."""
    config = load_config_file(ARITH)
    tok = build_char_tokenizer(str(tmp_path / "tokenizer"))
    eos = tok.eos_token_id
    ids = [[*tok(c, add_special_tokens=False)["input_ids"], eos] for c in completions]
    t = config.max_new_tokens
    data = dict(
        completion=np.array([c + [tok.pad_token_id] * (t - len(c)) for c in ids], np.int32),
        completion_mask=np.arange(t)[None] < np.array([len(c) for c in ids])[:, None],
    )
    answers = [int(c.rsplit(" ", 1)[-1]) for c in completions]
    split = Split([[3]] * len(ids), ids, answers, ["q"] * len(ids))
    return Evaluator(config, get_task("arith"), tok, split, data, None, decoders={})


def test_evaluator_warns_on_collapse_only(tmp_path, capsys):
    completions = [f"{a}+{b}={a + b} #### {a + b}" for a, b in [(12, 30), (7, 8), (45, 51)] * 4]
    ev = make_evaluator(tmp_path, completions)
    tokens, mask = ev.data["completion"], ev.data["completion_mask"]  # [12, 48] the references
    pairs = zip(tokens, mask, strict=True)
    texts = [ev.tokenizer.decode(t[m], skip_special_tokens=True) for t, m in pairs]
    scores = ev.scores(None, texts, tokens, mask)
    assert scores["accuracy"] == 1.0 and scores["reply_stopped"] == 1.0
    assert "WARNING" not in capsys.readouterr().out
    equals = ev.tokenizer("=", add_special_tokens=False)["input_ids"][0]
    soup = np.full_like(tokens, equals)  # "=" x 48, no stop
    scores = ev.scores(None, ["=" * 48] * len(texts), soup, np.ones_like(mask))
    out = capsys.readouterr().out
    assert scores["accuracy"] == 0.0 and scores["top_token_share"] == 1.0
    assert "WARNING: the student's replies look collapsed: 100% of replies ran to" in out
    assert f"one token, '=' (id {equals}), is 100% of all reply tokens" in out
    assert out.count("\n") == 1  # one line


def test_sample_lines_stay_on_one_line():
    lines = sample_lines([("system...\nuser: hi\nassistant:\n", "\n" * 48), ("q", "a\tb")], 40)
    assert lines == [
        "  1. ...r: hi\\nassistant:\\n -> " + "\\n" * 37 + "...",  # 20, 40 characters
        "  2. q -> a\\tb",
    ]
    assert one_line("x" * 10, 10) == "x" * 10 and one_line("abcdefghijk", 8) == "abcde..."
    assert one_line("abcdefghijk", 8, keep_end=True) == "...ghijk"
