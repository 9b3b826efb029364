"""Tests for the embedded arith task, the character tokenizer and exact-match accuracy."""

import json
import re

import pytest
from transformers import AutoTokenizer

from gkd_jax.data import arith
from gkd_jax.data.arith import (
    PROMPT_CHARS,
    TARGET_CHARS,
    Example,
    extract_answer,
    make_examples,
)
from gkd_jax.data.char_tokenizer import build_char_tokenizer, load_tokenizer
from gkd_jax.evaluation.metrics import exact_match_accuracy

STEP_RE = re.compile(r"(\d+)\+(\d+)=(\d+)")
TARGET_RE = re.compile(r"^(\d+\+\d+=\d+ )+#### \d+$")


@pytest.fixture(scope="module")
def train5k():
    return make_examples("train", 5000, seed=0)


@pytest.fixture(scope="module")
def test5k():
    return make_examples("test", 5000, seed=0)


def _prompt_terms(ex: Example) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", ex.prompt))


def test_splits_never_overlap():
    train = make_examples("train", 3000, seed=1)
    test = make_examples("test", 500, seed=1)
    train_keys = {tuple(sorted(_prompt_terms(e))) for e in train}
    test_keys = {tuple(sorted(_prompt_terms(e))) for e in test}
    assert train_keys and test_keys
    assert not train_keys & test_keys
    # also disjoint for differing seeds
    other = {tuple(sorted(_prompt_terms(e))) for e in make_examples("test", 500, seed=7)}
    assert not train_keys & other


def test_test_split_unique(test5k):
    assert len({_prompt_terms(e) for e in test5k}) == len(test5k)


def test_determinism():
    a = make_examples("train", 200, seed=3)
    assert a == make_examples("train", 200, seed=3)
    assert a != make_examples("train", 200, seed=4)
    t = make_examples("test", 200, seed=3)
    assert t == make_examples("test", 200, seed=3)
    assert t != make_examples("test", 200, seed=4)
    assert len(a) == 200 and all(isinstance(e, Example) for e in a)
    assert make_examples("train", 0, seed=0) == []


def test_bad_split():
    with pytest.raises(ValueError):
        make_examples("validation", 10, seed=0)


def test_lengths_and_arithmetic(train5k, test5k):
    n_terms = set()
    for ex in train5k + test5k:
        assert len(ex.prompt) <= PROMPT_CHARS, ex.prompt
        assert len(ex.target) <= TARGET_CHARS, ex.target
        terms = _prompt_terms(ex)
        n_terms.add(len(terms))
        assert all(10 <= t <= 99 for t in terms)
        assert ex.answer == sum(terms)
        assert TARGET_RE.match(ex.target), ex.target
        steps = [tuple(map(int, s)) for s in STEP_RE.findall(ex.target)]
        assert len(steps) == len(terms) - 1
        running = terms[0]
        for (a, b, c), t in zip(steps, terms[1:], strict=True):
            assert a == running and b == t and c == a + b
            running = c
        assert extract_answer(ex.target) == ex.answer == running
    assert n_terms == {2, 3, 4}


def test_worst_case_lengths():
    worst = [99] * arith.MAX_TERMS
    for k in range(arith.MIN_TERMS, arith.MAX_TERMS + 1):
        assert len(arith.render_target(worst[:k])) <= TARGET_CHARS
        for t in range(len(arith.TEMPLATES)):
            for name in arith.NAMES:
                for obj in arith.OBJECTS:
                    p = arith.render_prompt(worst[:k], t, name, obj)
                    assert len(p) <= PROMPT_CHARS, p


def test_target_format_example():
    assert arith.render_target([23, 45, 12]) == "23+45=68 68+12=80 #### 80"
    assert arith.render_target([23, 45, 12, 33]) == "23+45=68 68+12=80 80+33=113 #### 113"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("23+45=68 68+12=80 #### 80", 80),
        ("#### 113", 113),
        ("####7", 7),
        ("#### -5", -5),
        ("#### 42 and then junk", 42),
        ("#### 1 #### 2", 2),
        ("#### 12<eos>xx", 12),
        ("no answer here", None),
        ("", None),
        ("#### ", None),
        ("#### abc", None),
        ("#### 5 ####", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_char_tokenizer(tmp_path, train5k, test5k):
    built = build_char_tokenizer(str(tmp_path))
    assert (tmp_path / "tokenizer.json").exists()
    assert (tmp_path / "tokenizer_config.json").exists()
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["eos_token"] == "<eos>"
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    for t in (built, tok, load_tokenizer(str(tmp_path))):
        assert len(t) == 99
        assert (t.pad_token_id, t.bos_token_id, t.eos_token_id, t.unk_token_id) == (0, 1, 2, 3)
        assert t.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert tok.convert_tokens_to_ids([" ", "~", "#"]) == [4, 98, 4 + ord("#") - 32]
    all_chars = "".join(chr(c) for c in range(32, 127))
    texts = [all_chars, "  ####  x ", " a  b "]
    texts += [e.prompt for e in train5k[:300] + test5k[:300]]
    texts += [e.target for e in train5k[:300] + test5k[:300]]
    for s in texts:
        ids = tok.encode(s, add_special_tokens=False)
        assert ids == tok.encode(s)  # no automatic bos/eos
        assert len(ids) == len(s)
        assert all(4 <= i < 99 for i in ids)
        assert tok.decode(ids) == s
    assert tok.decode([1, 4 + ord("A") - 32, 2, 0], skip_special_tokens=True) == "A"


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_char_tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path))


def test_exact_match_accuracy():
    assert exact_match_accuracy([1, 2, 3], [1, 2, 3]) == 1.0
    assert exact_match_accuracy([1, None, 4, 0], [1, 2, 3, 0]) == 0.5
    assert exact_match_accuracy([None], [0]) == 0.0
    with pytest.raises(ValueError):
        exact_match_accuracy([], [])
    with pytest.raises(ValueError):
        exact_match_accuracy([1], [1, 2])


def test_a_smaller_training_set_is_a_prefix_of_a_larger_one(train5k):
    """The paper's regime rests on this: the teacher, the SFT student and every distillation run
    on `n=N` see the same N problems, and N_d < N distills on a subset of them."""
    assert make_examples("train", 500, seed=0) == train5k[:500]
    assert make_examples("train", 500, seed=1) != train5k[:500]


def test_train_seed_fixes_the_training_set_across_run_seeds():
    from gkd_jax.config.defaults import base_config
    from gkd_jax.data.tasks import load_arith

    tok = _FakeTokenizer()
    c = base_config()
    c.data.train_examples, c.eval.num_examples = 50, 10
    sets = {}
    for train_seed, seed in ((-1, 0), (-1, 3), (0, 3), (0, 7)):
        c.seed, c.data.train_seed = seed, train_seed
        train, _ = load_arith(c, tok, (tok.eos_token_id,))
        sets[train_seed, seed] = train.prompts
    assert sets[-1, 0] == sets[0, 3] == sets[0, 7]  # train_seed 0 = what seed 0 draws
    assert sets[-1, 3] != sets[-1, 0]  # -1: the run's own seed


class _FakeTokenizer:
    eos_token_id = 1

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(ch) for ch in t] for t in texts]}
