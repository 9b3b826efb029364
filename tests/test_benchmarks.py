"""Held-out benchmarks (gkd_jax/evaluation/benchmarks): MMLU's prompt (the standard format,
exactly), its
three data layouts, its per-choice log-likelihoods against transformers' torch models (a
decoder and a T5, one-token and two-token continuations), BBH's prompt files, prompts and
answer extraction, BBH's greedy decoding against torch's, and the evaluate CLI end to end, all
on tiny random models and files written here."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: E402

from gkd_jax.evaluation.benchmarks import bbh, mmlu  # noqa: E402
from gkd_jax.evaluation.benchmarks.likelihood import Scorer  # noqa: E402
from gkd_jax.evaluation.checkpoints import benchmark_checkpoint  # noqa: E402
from gkd_jax.models import functional_lm, load_pretrained  # noqa: E402

LETTERS = ["A", "B", "C", "D"]
# Two subjects, five dev questions each (the exemplars), three test questions each.
QUESTIONS = {
    "high_school_physics": [
        ("What is the SI unit of force?", ["joule", "newton", "watt", "pascal"], "B"),
        ("Light travels fastest in", ["water", "glass", "vacuum", "air"], "C"),
        ("Sound is a wave that is", ["transverse", "longitudinal", "static", "none"], "B"),
        ("Mass times acceleration is", ["force", "work", "power", "energy"], "A"),
        ("The unit of power is the", ["volt", "ohm", "tesla", "watt"], "D"),
        ("Current is measured in", ["amperes", "volts", "ohms", "farads"], "A"),
        ("Work is force times", ["time", "mass", "distance", "speed"], "C"),
        ("An object at rest stays", ["moving", "at rest", "hot", "cold"], "B"),
    ],
    "world_religions": [
        ("The Torah is sacred in", ["Judaism", "Jainism", "Shinto", "Taoism"], "A"),
        ("Diwali is a festival of", ["ice", "lights", "harvest", "rain"], "B"),
        ("Mecca is in", ["Egypt", "Iran", "Saudi Arabia", "Iraq"], "C"),
        ("The Dalai Lama leads", ["Zen", "Sufis", "Amish", "Tibetan Buddhists"], "D"),
        ("Easter marks the", ["resurrection", "birth", "exodus", "flood"], "A"),
        ("The Vedas are texts of", ["Islam", "Hinduism", "Sikhism", "Bahai"], "B"),
        ("The Quran was revealed to", ["Moses", "Jesus", "Muhammad", "Buddha"], "C"),
        ("Shinto is native to", ["China", "Korea", "India", "Japan"], "D"),
    ],
}


# ------------------------------------------------------------------------------- fixtures
def byte_tokenizer(letter_merges: bool, closing_eos: bool):
    """Byte-level BPE (every string round-trips). `letter_merges`: " A".." D" are one token
    each (as in real tokenizers: the one-forward path), else two. `closing_eos`: T5's </s>."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(alphabet)}}
    vocab |= {f"Ġ{x}": len(vocab) + i for i, x in enumerate(LETTERS)}  # same size either way
    merges = [("Ġ", x) for x in LETTERS] if letter_merges else []
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    if closing_eos:
        t.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 1)]
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=t, pad_token="<pad>", eos_token="</s>"
    )


def tiny_llama(path, vocab: int):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(path))
    byte_tokenizer(True, False).save_pretrained(str(path))
    return model


def tiny_t5(path, vocab: int):
    torch.manual_seed(1)
    cfg = transformers.T5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    model.save_pretrained(str(path))
    byte_tokenizer(True, True).save_pretrained(str(path))
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{"decoder": (hf dir, torch model), "t5": (...)}: one vocabulary for every tokenizer."""
    root = tmp_path_factory.mktemp("benchmark_models")
    vocab = len(byte_tokenizer(True, False))
    return {
        "decoder": (root / "decoder", tiny_llama(root / "decoder", vocab)),
        "t5": (root / "t5", tiny_t5(root / "t5", vocab)),
    }


def write_csv_layout(root) -> str:
    for split, rows in (("dev", slice(0, 5)), ("test", slice(5, 8))):
        (root / split).mkdir(parents=True, exist_ok=True)
        for subject, qs in QUESTIONS.items():
            with open(root / split / f"{subject}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([q, *choices, a] for q, choices, a in qs[rows])
    return str(root)


def hf_rows(split: str) -> list[dict]:
    rows = slice(0, 5) if split == "dev" else slice(5, 8)
    return [
        dict(question=q, subject=subject, choices=choices, answer=LETTERS.index(a))
        for subject, qs in QUESTIONS.items()
        for q, choices, a in qs[rows]
    ]


# ------------------------------------------------------------------------------- MMLU
def test_mmlu_prompt_is_the_standard_format():
    shots = [mmlu.Question(q, tuple(c), a) for q, c, a in QUESTIONS["high_school_physics"][:2]]
    q = mmlu.Question(" Current is measured in\n", ("amperes", "volts", "ohms", "farads"), "A")
    expected = (
        "The following are multiple choice questions (with answers) about high school "
        "physics.\n\n"
        "What is the SI unit of force?\nA. joule\nB. newton\nC. watt\nD. pascal\nAnswer: B\n\n"
        "Light travels fastest in\nA. water\nB. glass\nC. vacuum\nD. air\nAnswer: C\n\n"
        "Current is measured in\nA. amperes\nB. volts\nC. ohms\nD. farads\nAnswer:"
    )
    assert mmlu.few_shot_prompt("high_school_physics", shots, q) == expected
    zero = mmlu.few_shot_prompt("world_religions", [], q)
    assert zero.startswith(
        "The following are multiple choice questions (with answers) about "
        "world religions.\n\nCurrent is measured in\nA. amperes"
    )


def test_mmlu_layouts_read_alike(tmp_path):
    """The original CSVs, a save_to_disk copy of cais/mmlu and a snapshot of its parquet files
    give the same questions."""
    from_csv = mmlu.load(write_csv_layout(tmp_path / "csv"))
    splits = {s: datasets.Dataset.from_list(hf_rows(s)) for s in ("dev", "test")}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    for subject in QUESTIONS:  # the hub repo: one folder per subject, parquet per split
        (tmp_path / "hub" / subject).mkdir(parents=True)
        for split, ds in splits.items():
            ds.filter(lambda r, s=subject: r["subject"] == s).to_parquet(
                str(tmp_path / "hub" / subject / f"{split}-00000-of-00001.parquet")
            )
    assert mmlu.load(str(tmp_path / "saved")) == from_csv
    assert mmlu.load(str(tmp_path / "hub")) == from_csv
    dev, test = from_csv
    assert list(test) == sorted(QUESTIONS) and [len(v) for v in dev.values()] == [5, 5]
    assert test["world_religions"][0] == mmlu.Question(
        "The Vedas are texts of", ("Islam", "Hinduism", "Sikhism", "Bahai"), "B"
    )
    with pytest.raises(FileNotFoundError, match="holds no MMLU data"):
        mmlu.load(str(tmp_path))


def torch_choice_logprobs(model, tok, prompt: str, is_t5: bool) -> list[float]:
    """log p(" X" | prompt) for each letter, from torch's logits of one unpadded sequence."""
    out = []
    with torch.no_grad():
        for letter in LETTERS:
            if is_t5:  # the prompt (with </s>) to the encoder, the letter to the decoder
                src = tok(prompt)["input_ids"]
                tgt = tok(" " + letter, add_special_tokens=False)["input_ids"]
                logits = model(
                    input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([[0, *tgt[:-1]]])
                ).logits[0]
                logp = torch.log_softmax(logits, -1)
                out.append(sum(float(logp[i, t]) for i, t in enumerate(tgt)))
            else:  # one sequence; the letter's tokens follow the prompt's
                ctx = tok(prompt)["input_ids"]
                whole = tok(prompt + " " + letter)["input_ids"]
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0], -1)
                out.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
    return out


@pytest.mark.parametrize("family, merges", [("decoder", True), ("decoder", False), ("t5", True)])
def test_mmlu_logprobs_equal_torch(tiny, tmp_path, family, merges):
    """Every question's four log-probs equal torch's, batched and padded (batch 4 over 6
    questions of two prompt lengths: a filler row, two buckets); merges=False makes " A" two
    tokens (one row per choice) instead of one (one forward per question)."""
    path, torch_model = tiny[family]
    tok = byte_tokenizer(merges, closing_eos=family == "t5")
    params, fns = functional_lm(load_pretrained(str(path)))
    scorer = Scorer(params, fns, pad_id=0, batch_size=4, log=lambda _: None)
    data = write_csv_layout(tmp_path)
    summary, rows = mmlu.evaluate(scorer, tok, data, shots=2, log=lambda _: None)
    dev, test = mmlu.load(data)
    assert len(rows) == 6 and summary["examples"] == 6
    for row in rows:
        q = test[row["subject"]][row["index"]]
        prompt = mmlu.few_shot_prompt(row["subject"], dev[row["subject"]][:2], q)
        expected = torch_choice_logprobs(torch_model, tok, prompt, family == "t5")
        np.testing.assert_allclose(row["logprobs"], expected, atol=2e-4, rtol=1e-5)
        assert row["prediction"] == LETTERS[int(np.argmax(expected))]
        assert row["correct"] == (row["prediction"] == q.answer)


def test_mmlu_averages():
    rows = [dict(subject="a", correct=c) for c in (True, True, False, False)]
    rows += [dict(subject="b", correct=True)]
    s = mmlu.summarize(rows, shots=5, truncated=0)
    assert s["metrics"] == {"accuracy_micro": 3 / 5, "accuracy_macro": (0.5 + 1.0) / 2}
    assert s["per_subject"] == {"a": 0.5, "b": 1.0}
    assert s["examples_per_subject"] == {"a": 4, "b": 1}


def test_mmlu_prompt_truncation_keeps_the_end(tiny):
    params, fns = functional_lm(load_pretrained(str(tiny["decoder"][0])))
    scorer = Scorer(params, fns, pad_id=0, batch_size=2, max_prompt_len=8, log=lambda _: None)
    long, short = list(range(5, 25)), list(range(17, 25))  # the long prompt's last 8 tokens
    a, b = scorer([(long, [[30], [31]]), (short, [[30], [31]])])
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert scorer.truncated == 1


# ------------------------------------------------------------------------------- BBH
COT_FILE = """BIG-Bench Hard canary line (not part of the prompt)
-----
Evaluate the result of a random Boolean expression.

Q: not ( True ) and ( True ) is
A: Let's think step by step.
Remember that (i) brackets go first.
not ( True ) = False. So the answer is False.

Q: True and not not ( not False ) is
A: Let's think step by step.
not not ( not False ) = True. So the answer is True.

Q: not True or False or ( False ) is
A: Let's think step by step.
All terms are False. So the answer is False.
"""


def write_bbh(root, n: int = 3) -> str:
    (root / "bbh").mkdir(parents=True)
    (root / "cot-prompts").mkdir()
    (root / "cot-prompts" / "boolean_expressions.txt").write_text(COT_FILE)
    examples = [
        {"input": f"not ( {b} ) is", "target": str(b != "True")}
        for b in ("True", "False", "True", "False")[:n]
    ]
    (root / "bbh" / "boolean_expressions.json").write_text(json.dumps({"examples": examples}))
    return str(root)


def test_bbh_prompts_from_the_prompt_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(COT_FILE)
    description, exemplars = bbh.read_prompt_file(str(path))
    assert description == "Evaluate the result of a random Boolean expression."
    assert [q for q, _ in exemplars] == [
        "not ( True ) and ( True ) is",
        "True and not not ( not False ) is",
        "not True or False or ( False ) is",
    ]
    cot = bbh.build_prompt(description, exemplars, "not ( False ) is", "cot", 3)
    assert cot == COT_FILE.split("-----\n")[1].strip() + (
        "\n\nQ: not ( False ) is\nA: Let's think step by step."
    )
    direct = bbh.build_prompt(description, exemplars, "not ( False ) is", "direct", 2)
    assert direct == (
        "Evaluate the result of a random Boolean expression.\n\n"
        "Q: not ( True ) and ( True ) is\nA: False\n\n"
        "Q: True and not not ( not False ) is\nA: True\n\n"
        "Q: not ( False ) is\nA:"
    )
    assert bbh.build_prompt("", exemplars, "x", "direct", 0) == "Q: x\nA:"


@pytest.mark.parametrize(
    "completion, prompt, answer",
    [
        ("\nnot False = True. So the answer is True.\n\nQ: next", "cot", "True"),
        (" Options compared. So the answer is (C).", "cot", "(C)"),
        (" So THE ANSWER IS 24. And the answer is 25.", "cot", "24"),
        (" I think it is valid", "cot", "I think it is valid"),  # no marker: the whole text
        (" No answer.\nQ: So the answer is True.", "cot", "No answer"),  # next Q: cut first
        (" False\n\nQ: True and True is\nA: True", "direct", "False"),
        (" (B).\nBecause...", "direct", "(B)"),
        ("", "direct", ""),
    ],
)
def test_bbh_answer_extraction(completion, prompt, answer):
    assert bbh.extract_answer(completion, prompt) == answer


def test_bbh_greedy_equals_torch_generate(tiny, tmp_path):
    """bbh.evaluate's completions (batched, left-padded, length buckets) equal torch's greedy
    generate of each prompt alone; accuracy is the mean of the extracted answers' matches."""
    path, torch_model = tiny["decoder"]
    tok = byte_tokenizer(True, closing_eos=False)
    params, fns = functional_lm(load_pretrained(str(path)))
    data = write_bbh(tmp_path)
    summary, rows = bbh.evaluate(
        params,
        fns,
        tok,
        data,
        stop_ids=[1],
        shots=1,
        prompt="direct",
        batch_size=2,
        max_new_tokens=6,
        log=lambda _: None,
    )
    description, exemplars = bbh.read_prompt_file(
        str(tmp_path / "cot-prompts" / "boolean_expressions.txt")
    )
    for row in rows:
        prompt = bbh.build_prompt(description, exemplars, row["input"], "direct", 1)
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            out = torch_model.generate(
                ids, max_new_tokens=6, do_sample=False, eos_token_id=1, pad_token_id=0
            )[0, ids.shape[1] :].tolist()
        assert row["completion"] == tok.decode([t for t in out if t != 1], skip_special_tokens=True)
        assert row["prediction"] == bbh.extract_answer(row["completion"], "direct")
    assert summary["metrics"]["exact_match_micro"] == np.mean([r["correct"] for r in rows])
    assert summary["examples_per_task"] == {"boolean_expressions": 3}


# ------------------------------------------------------------------------------- the CLI
def test_cli_mmlu_end_to_end(tiny, tmp_path):
    """`python -m gkd_jax.evaluate --benchmark=mmlu` on a Hugging Face dir: its files hold one
    row per question and averages that agree with the rows (no --config needed)."""
    data, out = write_csv_layout(tmp_path / "mmlu"), tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "gkd_jax.evaluate",
        "--benchmark=mmlu",
        f"--checkpoint={tiny['decoder'][0]}",
        f"--data_dir={data}",
        "--shots=1",
        "--num_examples=2",
        f"--out={out}",
        "--batch_size=4",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| accuracy_macro |" in proc.stdout and "prompts scored" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert (metrics["benchmark"], metrics["shots"], metrics["examples"]) == ("mmlu", 1, 4)
    assert len(rows) == 4 and {r["subject"] for r in rows} == set(QUESTIONS)
    assert metrics["metrics"]["accuracy_micro"] == np.mean([r["correct"] for r in rows])


def test_run_benchmark_bbh_on_t5(tiny, tmp_path):
    """The BBH path through the runner on a T5 (encoder-decoder generation), CoT prompts."""
    summary = benchmark_checkpoint(
        "bbh",
        str(tiny["t5"][0]),
        data_dir=write_bbh(tmp_path / "bbh", 2),
        out=str(tmp_path / "out"),
        batch_size=2,
    )
    assert (summary["benchmark"], summary["shots"], summary["prompt"]) == ("bbh", 3, "cot")
    assert summary["examples"] == 2 and 0.0 <= summary["metrics"]["exact_match_macro"] <= 1.0
    rows = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(r)["target"] for r in rows] == ["False", "True"]


def test_benchmark_errors_name_the_fix(tiny, tmp_path):
    with pytest.raises(ValueError, match="needs --data_dir"):
        benchmark_checkpoint("mmlu", str(tiny["t5"][0]), data_dir=None)
    with pytest.raises(FileNotFoundError, match="bbh/TASK.json"):
        benchmark_checkpoint("bbh", str(tiny["t5"][0]), data_dir=str(tmp_path), out=str(tmp_path))
    data = write_csv_layout(tmp_path / "m")
    with pytest.raises(ValueError, match="0-5 shots"):
        benchmark_checkpoint("mmlu", str(tiny["t5"][0]), data_dir=data, shots=6, out=str(tmp_path))
