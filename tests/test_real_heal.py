"""The real-model healing study's pieces, on tiny random Hugging Face models made here (the real
SmolLM2 is not needed): the prompt families and their disjoint splits, the records and the chat
loader's "answer"/"family" fields, the answer-accuracy metric against hand-worked cases, the
teacher's greedy replies through our sampler, configs/real_heal.py, the real_heal sweep and its
table.
"""

import collections
import json
import os
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from gkd_jax import teacher_replies
from gkd_jax.config.checks import validate_config
from gkd_jax.config.loading import load_config_file
from gkd_jax.data import real_prompts
from gkd_jax.data.tasks import load_chat
from gkd_jax.evaluation.metrics import answer_correct, answer_scores

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "launch")]
import real_heal_table  # noqa: E402
import sweep  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "real_heal.py")
TEACHER = "smollm2-135m-instruct"  # configs/real_heal.py reads MODELS/TEACHER
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Any text, one token per byte (byte-level BPE without merges), ChatML specials."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(["<pad>", "<|im_start|>", "<|im_end|>", *sorted(alphabet)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> str:
    """DIR/smollm2-135m-instruct: a random 30-layer Llama (SmolLM2's depth, tiny widths)."""
    root = tmp_path_factory.mktemp("models")
    path = root / TEACHER
    tok = byte_tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=30,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(root)


# ---------------------------------------------------------------------------------- prompts
def expected_answer(p: real_prompts.Prompt) -> str | None:
    """The answer worked out from the prompt's text alone (capital: the hand-written table)."""
    t = p.text.split()
    if p.family in ("add", "sub"):
        a, b = int(t[2]), int(t[4].rstrip("?"))
        return str(a + b if p.family == "add" else a - b)
    if p.family == "copy":
        return p.text.split(": ")[-1]
    if p.family == "capital":
        return dict(real_prompts.CAPITALS)[p.text.removeprefix("What is the capital of ")[:-1]]
    return None


def test_families_and_disjoint_splits():
    train, heldout = real_prompts.make_prompts(70, 21, seed=3)
    assert len(train) == 70 and len(heldout) == 21
    counts = collections.Counter(p.family for p in train)
    assert counts == {f: 10 for f in real_prompts.FAMILIES}
    assert collections.Counter(p.family for p in heldout) == {f: 3 for f in real_prompts.FAMILIES}
    assert not {p.text for p in train} & {p.text for p in heldout}
    assert not {(p.family, p.key) for p in train} & {(p.family, p.key) for p in heldout}
    assert len({p.text for p in train}) == 70  # no prompt twice
    assert [p.family for p in heldout[:7]] == list(real_prompts.FAMILIES)  # interleaved
    assert real_prompts.make_prompts(70, 21, seed=3) == (train, heldout)  # seeded
    assert real_prompts.make_prompts(70, 21, seed=4)[0] != train
    for p in train + heldout:  # the answers are right, the uncheckable families have none
        assert p.answer == expected_answer(p), p
    names = {p.text for p in real_prompts.FAMILIES["name"](np.random.default_rng(0), 80)}
    assert {"Name an animal.", "Give one example of a colour."} <= names  # articles


def test_too_many_prompts_for_a_hand_written_family():
    with pytest.raises(ValueError, match=r"family capital has \d+ prompts"):
        real_prompts.make_prompts(7 * 80, 7 * 10)


# ----------------------------------------------------------------------------------- metric
@pytest.mark.parametrize(
    "reply, answer, right",
    [
        ("52 plus 72 is 124.", "124", True),
        ("The answer is 1,024", "1024", True),
        ("124? No wait, it is 123.", "124", False),  # the LAST number counts
        ("90 minus 56 equals 34.", "34", True),
        ("It is -7.", "-7", True),
        ("There is no number here.", "3", False),
        ("Sure! Sun, dog, cat.", "sun dog cat", True),  # case-insensitive, punctuation ignored
        ("sun cat dog", "sun dog cat", False),  # order matters
        ("Here: 1. sun\n2. dog\n3. cat", "sun dog cat", True),
        ("The capital of India is NEW DELHI.", "New Delhi", True),
        ("The capital of India is New York, not Delhi.", "New Delhi", False),  # contiguous
        ("cathedral", "cat", False),  # whole words
        ("anything", "", False),
    ],
)
def test_answer_correct(reply, answer, right):
    assert answer_correct(reply, answer) is right


def test_answer_scores_over_the_rows_with_an_answer():
    replies = ["It is 5.", "4", "Paris", "a poem", "Lyon"]
    answers = ["5", "5", "Paris", None, "Paris"]
    families = ["add", "add", "capital", "name", None]
    scores = answer_scores(replies, answers, families)
    assert scores == {
        "answer_accuracy": 2 / 4,
        "answer_accuracy/add": 1 / 2,
        "answer_accuracy/capital": 1.0,
        "answer_accuracy/other": 0.0,
    }
    assert answer_scores(["x"], [None], [None]) == {}


# ---------------------------------------------------------------- records, loader, teacher
def write_data(path, n_train: int = 14, n_heldout: int = 7) -> None:
    os.makedirs(path, exist_ok=True)
    train, heldout = real_prompts.make_prompts(n_train, n_heldout)
    for name, prompts in (("train", train), ("heldout", heldout)):
        replies = [p.answer or "I think so." for p in prompts]  # a perfect teacher, say
        replies[0] = "  "  # an empty reply: left out
        assert (
            teacher_replies.write_split(os.path.join(path, f"{name}.jsonl"), prompts, replies) == 1
        )


def test_records_and_the_chat_loader(tmp_path, models_dir):
    write_data(tmp_path / "data")
    with open(tmp_path / "data" / "heldout.jsonl") as f:
        recs = [json.loads(line) for line in f]
    assert len(recs) == 6
    assert set(recs[0]) == {"messages", "family", "answer"}  # recs[0] is sub (add was left out)
    assert [m["role"] for m in recs[0]["messages"]] == ["user", "assistant"]
    assert recs[0]["messages"][1]["content"] == recs[0]["answer"]
    assert all(("answer" in r) == (r["family"] in ("add", "sub", "copy", "capital")) for r in recs)
    c = load_config_file(f"{CONFIG}:models={models_dir},data={tmp_path / 'data'}")
    tok = byte_tokenizer()
    c.data.max_prompt_len, c.max_new_tokens, c.eval.num_examples = 256, 48, 6
    train, evals = load_chat(c, tok, [tok.eos_token_id], log=lambda s: None)
    assert evals.answers == [r.get("answer") for r in recs]
    assert evals.families == [r["family"] for r in recs]
    assert len(train.answers) == 13
    scores = answer_scores(evals.references, evals.answers, evals.families)
    assert scores["answer_accuracy"] == 1.0  # the references are the (perfect) replies


def test_teacher_replies_greedy_through_our_sampler(models_dir):
    teacher = os.path.join(models_dir, TEACHER)
    texts = ["What is 12 plus 30?", "Name a colour.", "What is 99 minus 10?"]
    lines = []
    replies, truncated = teacher_replies.teacher_replies(
        teacher, texts, max_new_tokens=5, batch_size=2, log=lines.append
    )
    assert len(replies) == len(truncated) == 3 and len(lines) == 2  # 2 batches
    again, _ = teacher_replies.teacher_replies(teacher, texts[::-1], max_new_tokens=5, batch_size=2)
    assert again == replies[::-1]  # greedy, and rows do not interact


# -------------------------------------------------------------------------- config, sweep
def test_config_builds_and_validates(tmp_path, models_dir, monkeypatch):
    monkeypatch.setenv("GKD_REAL_HEAL_DATA", str(tmp_path))
    c = load_config_file(f"{CONFIG}:lmbda=0.5,seed=2,models={models_dir}")
    validate_config(c)
    teacher = os.path.join(models_dir, "smollm2-135m-instruct")
    assert c.teacher.checkpoint == c.init.checkpoint == c.tokenizer == teacher
    assert c.init.layers == "0-19,26-29" and c.gkd.lmbda == 0.5 and c.seed == 2
    assert c.data.eval_file == str(tmp_path / "heldout.jsonl")
    assert (c.eval.teacher_forced, c.eval.divergence_to_teacher) == ("on", "rkl")
    smoke = load_config_file(f"{CONFIG}:models={models_dir},smoke")
    assert smoke.steps == 2 and smoke.gkd.lmbda == 1.0
    with pytest.raises(ValueError, match="lmbda=1.5"):
        load_config_file(f"{CONFIG}:lmbda=1.5")


def test_sweep_lists_nine_cells_same_compute(models_dir):
    runs = sweep.load_sweep(f"real_heal:models={models_dir}")
    assert len(runs) == 9 and len({r.name for r in runs}) == 9
    assert collections.Counter(r.axes["method"] for r in runs) == {"seqkd": 3, "gkd": 3, "mixed": 3}
    assert {(r.axes["lmbda"], r.axes["seed"]) for r in runs} == {
        (lmbda, s) for lmbda in (0.0, 1.0, 0.5) for s in (0, 1, 2)
    }
    configs = [load_config_file(os.path.join(ROOT, r.config)) for r in runs]
    assert {(c.steps, c.batch_size) for c in configs} == {(60, 8)}
    assert [c.gkd.lmbda for c in configs] == [r.axes["lmbda"] for r in runs]
    assert not any(r.flags for r in runs)


def test_table_means_stds_and_verdict(tmp_path):
    def fake(cell, seed, rkl, nll, rep=0.0):
        d = tmp_path / f"real_heal_{cell}_seed{seed}"
        d.mkdir()
        (d / "sweep_run.json").write_text(json.dumps({"name": d.name, "axes": {"method": cell}}))
        final = {"rkl_to_teacher": rkl, "reference_nll": nll, "answer_accuracy": 0.5,
                 "answer_accuracy/add": 0.25, "repetitive_replies": rep}  # fmt: skip
        start = {"rkl_to_teacher": 0.9, "reference_nll": 3.0}
        (d / "results.json").write_text(
            json.dumps({"evaluations": {"start": start, "final": final}})
        )

    # RKL: GKD 0.11 ± 0.01 < SeqKD 0.32 ± 0.02; reference_nll: 1.01 ± 0.02 overlaps 1.00 ± 0.02
    for s, (a, b, x, y) in enumerate([(0.30, 0.10, 1.0, 1.01), (0.32, 0.12, 1.02, 1.03),
                                      (0.34, 0.11, 0.98, 0.99)]):  # fmt: skip
        fake("seqkd", s, a, x)
        fake("gkd", s, b, y)
    fake("mixed", 0, 0.2, 1.5)  # lower RKL, much worse NLL
    runs, _ = real_heal_table.load_runs(str(tmp_path), r"^real_heal_")
    text = real_heal_table.table(runs, {})
    assert "| GKD (lmbda 1) | 3 | 0.1100 ± 0.0100 |" in text
    assert "| SeqKD (lmbda 0) | 3 | 0.3200 ± 0.0200 |" in text
    assert "| pruned student, before |  | 0.9000 |" in text
    assert "GKD (lmbda 1) vs SeqKD (lmbda 0): WIN" in text
    assert "mixed (lmbda 0.5) vs SeqKD (lmbda 0): no win (lower RKL, but a worse" in text
    fake("mixed", 1, 0.2, 1.0, rep=0.9)  # repetitive replies in one seed: vetoed
    text = real_heal_table.table(real_heal_table.load_runs(str(tmp_path), r"^real_heal_")[0], {})
    assert "mixed (lmbda 0.5) vs SeqKD (lmbda 0): no win (lower RKL, but degenerate" in text
