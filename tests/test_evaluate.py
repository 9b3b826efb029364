"""`python -m gkd_jax.evaluate`: the CLI's accuracy on the shipped arith student equals one
computed here independently (hand-padded prompts, the greedy sampler, arith.extract_answer), its
files hold the right rows; bad checkpoints fail naming the fix; the trainer's evaluation follows
config.eval.decoding."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gkd_jax.config.loading import load_config_file
from gkd_jax.data import arith
from gkd_jax.data.char_tokenizer import build_char_tokenizer
from gkd_jax.data.resources import resolve_path
from gkd_jax.data.tasks import Task, get_task
from gkd_jax.decoding.sampling import Decoding, SamplingConfig, make_sampler
from gkd_jax.evaluation import checkpoints
from gkd_jax.evaluation.checkpoints import evaluate_checkpoint, locate_checkpoint
from gkd_jax.evaluation.evaluator import (
    eval_scalars,
    make_divergence_to_teacher,
    make_eval_decoder,
    make_reference_nll,
    mean_divergence,
    per_row,
    reply_stats,
    results_table,
    task_scores,
)
from gkd_jax.models import DecoderConfig, build_decoder, functional_lm
from gkd_jax.models.t5 import T5, T5Config
from gkd_jax.parallel import sharding
from gkd_jax.training import checkpoint, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARITH = os.path.join(ROOT, "configs", "arith.py")
STUDENT = "builtin:arith/student_sft"


def independent_greedy(config, n: int, tmp_path, arrays: bool = False):
    """(predictions, answers, accuracy) of the shipped student on the first n test problems;
    with `arrays`, (prompt, prompt_mask, tokens, mask) [n, ...] instead."""
    tok = build_char_tokenizer(str(tmp_path / "ref_tokenizer"))
    examples = arith.make_examples("test", n, config.data.eval_seed)
    ids = tok([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    p = config.data.max_prompt_len
    prompt = np.full((n, p), tok.pad_token_id, np.int32)
    mask = np.zeros((n, p), bool)
    for i, row in enumerate(ids):  # left-padded
        prompt[i, p - len(row) :], mask[i, p - len(row) :] = row, True
    params, fns = functional_lm(checkpoint.load_model(resolve_path(STUDENT)))
    greedy = SamplingConfig(
        config.max_new_tokens, 0.0, stop_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id
    )
    out = make_sampler(fns.decoding, greedy)(params, prompt, mask, jax.random.key(0))
    tokens, keep = np.asarray(out.tokens), np.asarray(out.mask)
    if arrays:
        return prompt, mask, tokens, keep
    texts = [tok.decode(t[m], skip_special_tokens=True) for t, m in zip(tokens, keep, strict=True)]
    answers = [e.answer for e in examples]
    hits = [arith.extract_answer(t) == a for t, a in zip(texts, answers, strict=True)]
    return texts, answers, float(np.mean(hits))


def check_outputs(out, n: int, tmp_path) -> None:
    texts, answers, accuracy = independent_greedy(load_config_file(ARITH), n, tmp_path)
    assert 0.2 < accuracy < 1.0  # the student is good but not perfect: a real comparison
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"accuracy", *reply_stats.NAMES}  # teacher_forced: auto
    assert metrics["metrics"]["accuracy"] == accuracy
    # Characters are tokens: a reply's content tokens are its text's characters.
    assert metrics["metrics"]["reply_tokens"] == pytest.approx(np.mean([len(t) for t in texts]))
    assert metrics["metrics"]["reply_stopped"] == 1.0  # the EOS read as the stop token
    assert (metrics["examples"], metrics["split"], metrics["decoding"]) == (n, "eval", "greedy")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    prompts = [e.prompt for e in arith.make_examples("test", n, 0)]
    assert rows == [
        {"prompt": p, "prediction": t, "reference": a}
        for p, t, a in zip(prompts, texts, answers, strict=True)
    ]


def test_accuracy_equals_independent_greedy(tmp_path, capsys):
    n, out = 32, tmp_path / "out"
    config = load_config_file(ARITH)
    config.eval.batch_size = 16
    evaluate_checkpoint(config, STUDENT, out=str(out), num_examples=n)
    printed = capsys.readouterr().out
    assert "| accuracy |" in printed and f"{n // 2}/{n} decoded" in printed
    check_outputs(out, n, tmp_path)


@pytest.mark.slow
def test_cli_subprocess_equals_independent_greedy(tmp_path):
    n, out = 32, tmp_path / "out"
    cmd = [
        sys.executable, "-m", "gkd_jax.evaluate", f"--config={ARITH}", f"--checkpoint={STUDENT}",
        f"--out={out}", f"--num_examples={n}", "--config.eval.batch_size=16",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| accuracy |" in proc.stdout
    check_outputs(out, n, tmp_path)


def test_task_scores_add_the_extra_metrics():
    def overlap(texts, refs):
        pairs = zip(texts, refs, strict=True)
        return float(np.mean([set(t.split()) == set(r.split()) for t, r in pairs]))

    def lengths(texts, refs):
        return {"chars": float(np.mean([len(t) for t in texts])), "refs": float(len(refs))}

    texts, refs = ["a b", "c d e", "f"], ["b a", "c d", "f"]
    plain = Task("t", None, "overlap", overlap)
    assert task_scores(plain, texts, refs) == {"overlap": 2 / 3}
    both = dataclasses.replace(plain, extra_metrics=lengths)
    assert task_scores(both, texts, refs) == {"overlap": 2 / 3, "chars": 3.0, "refs": 3.0}
    assert task_scores(dataclasses.replace(plain, metric=None), texts, refs) == {}


def test_eval_decoders_by_config():
    """Decoding by config.eval: at a tiny temperature "sample" is greedy, at 1 it draws (rng-
    dependent); "beam" searches (on a bigram table where greedy's first pick leads nowhere)."""
    table = np.full((4, 4), -9.0, np.float32)  # logits[previous token, next token]; 0 stops
    table[1, 2], table[1, 3] = 0.0, -0.5  # greedy picks 2 ...
    table[2, :] = [-1.0, -1.2, -1.4, -1.6]  # ... after which nothing is likely (stop: 0.30)
    table[3, 0] = 0.0  # 3 is followed by the stop, surely
    decoding = Decoding(lambda t, p, m, n: (t[p[:, -1]], p[:, -1]), lambda t, x, i, s: (t[x], x))
    config = load_config_file(ARITH)
    config.max_new_tokens = 3
    prompt = jnp.ones((8, 1), jnp.int32)

    def decode(decoding_name, rng=0, **eval_fields):
        config.eval.decoding = decoding_name
        config.eval.update(eval_fields)
        fn = make_eval_decoder(decoding, config, stop_ids=(0,), pad_id=0, vocab_size=4)
        out = fn(jnp.asarray(table), prompt, jnp.ones_like(prompt), jax.random.key(rng))
        return np.asarray(out.tokens)

    greedy = decode("greedy")
    assert (greedy[:, 0] == 2).all()
    np.testing.assert_array_equal(decode("sample", temperature=1e-4), greedy)
    a, b = decode("sample", 1, temperature=1.0), decode("sample", 2, temperature=1.0)
    assert (a != b).any()
    beam = decode("beam", beam_size=2, length_penalty=0.0)
    np.testing.assert_array_equal(beam, np.tile([3, 0, 0], (8, 1)))  # 1 -> 3 -> stop


def log_softmax64(x) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def numpy_jsd(s_logits, t_logits, beta: float) -> np.ndarray:
    """Generalized JSD per position from its definition, float64: beta KL(T||M) + (1 - beta)
    KL(S||M), M = beta T + (1 - beta) S."""

    ls, lt = log_softmax64(s_logits), log_softmax64(t_logits)
    ps, pt = np.exp(ls), np.exp(lt)
    lm = np.log(beta * pt + (1 - beta) * ps)
    return beta * (pt * (lt - lm)).sum(-1) + (1 - beta) * (ps * (ls - lm)).sum(-1)


def reference_logits(config, n: int, tmp_path):
    """(mask [n, N], [student logits, teacher logits] [n, N, V]) of the shipped student's
    independently decoded greedy completions of the first n test problems."""
    prompt, prompt_mask, tokens, mask = independent_greedy(config, n, tmp_path, arrays=True)
    logits = []
    for source in (STUDENT, config.teacher.checkpoint):
        params, fns = functional_lm(checkpoint.load_model(resolve_path(source)))
        logits.append(np.asarray(jax.jit(fns.score)(params, prompt, prompt_mask, tokens, mask)))
    return mask, logits


@pytest.mark.slow
def test_metricless_task_is_scored_by_divergence_from_the_teacher(tmp_path, monkeypatch):
    n, config = 16, load_config_file(ARITH)  # teacher: builtin:arith/teacher; JSD(0.5)
    config.eval.batch_size = 16
    metricless = dataclasses.replace(
        get_task("arith"), metric_name="on_policy_jsd", metric=None, higher_is_better=False
    )
    monkeypatch.setattr(checkpoints, "get_task", lambda name: metricless)
    summary = evaluate_checkpoint(config, STUDENT, out=str(tmp_path / "out"), num_examples=n)

    mask, logits = reference_logits(config, n, tmp_path)
    per_token = numpy_jsd(*logits, beta=config.gkd.beta)  # [n, N]
    per_seq = (per_token * mask).sum(1) / mask.sum(1)
    assert summary["metrics"]["on_policy_jsd"] == pytest.approx(per_seq.mean(), rel=1e-5)
    assert per_seq.mean() > 1e-3  # the student is not the teacher


def numpy_rkl(s_logits, t_logits) -> np.ndarray:
    """KL(S||T) per position from its definition, float64."""
    ls, lt = log_softmax64(s_logits), log_softmax64(t_logits)
    return (np.exp(ls) * (ls - lt)).sum(-1)


def test_divergence_to_teacher_beside_the_metric(tmp_path):
    """eval.divergence_to_teacher="rkl": the exact reverse KL of the student's greedy
    completions from the teacher, whatever the training divergence (JSD here), beside the
    accuracy; equal to a float64 reference on independently decoded completions."""
    n, config = 8, load_config_file(ARITH)  # trains by JSD(0.5): the measure must ignore it
    config.eval.batch_size, config.eval.divergence_to_teacher = 8, "rkl"
    summary = evaluate_checkpoint(config, STUDENT, out=str(tmp_path / "out"), num_examples=n)

    mask, logits = reference_logits(config, n, tmp_path)
    per_token = numpy_rkl(*logits)  # [n, N]
    per_seq = (per_token * mask).sum(1) / mask.sum(1)
    assert set(summary["metrics"]) == {"accuracy", "rkl_to_teacher", *reply_stats.NAMES}
    assert summary["metrics"]["rkl_to_teacher"] == pytest.approx(per_seq.mean(), rel=1e-5)
    jsd = (numpy_jsd(*logits, beta=0.5) * mask).sum(1) / mask.sum(1)
    assert abs(jsd.mean() - per_seq.mean()) > 1e-3  # a different number from the JSD's


def reference_arrays(config, n: int, tmp_path):
    """(prompt, prompt_mask, completion, completion_mask) [n, ...]: the first n test problems'
    prompts, left-padded, and their reference completions (target + EOS), right-padded."""
    prompt, prompt_mask, *_ = independent_greedy(config, n, tmp_path, arrays=True)
    tok = build_char_tokenizer(str(tmp_path / "ref_tokenizer"))
    examples = arith.make_examples("test", n, config.data.eval_seed)
    ids = tok([e.target for e in examples], add_special_tokens=False)["input_ids"]
    t = config.max_new_tokens
    completion = np.full((n, t), tok.pad_token_id, np.int32)
    mask = np.zeros((n, t), bool)
    for i, row in enumerate(ids):
        completion[i, : len(row) + 1], mask[i, : len(row) + 1] = [*row, tok.eos_token_id], True
    return prompt, prompt_mask, completion, mask


def numpy_nll(s_logits, completion, mask) -> tuple[np.ndarray, np.ndarray]:
    """(sum [n], count [n]) of -log p_S(token) over each row's masked tokens, float64."""
    logp = np.take_along_axis(log_softmax64(s_logits), completion[..., None], -1)[..., 0]
    return -(logp * mask).sum(1), mask.sum(1)


def test_teacher_forced_scores_equal_a_float64_reference(tmp_path, monkeypatch):
    """A chat-like task (no metric: scored by the on-policy JSD) with eval.divergence_to_teacher
    = "rkl": eval.teacher_forced "auto" scores the references too; each of the six divergences
    and NLLs equals a float64 reference from both models' logits (the references' on
    independently packed arrays, the greedy replies' on independently decoded ones)."""
    n, config = 8, load_config_file(ARITH)  # JSD(0.5) trains; teacher builtin:arith/teacher
    config.eval.batch_size, config.eval.divergence_to_teacher = 8, "rkl"
    metricless = dataclasses.replace(
        get_task("arith"), metric_name="on_policy_jsd", metric=None, higher_is_better=False
    )
    monkeypatch.setattr(checkpoints, "get_task", lambda name: metricless)
    summary = evaluate_checkpoint(config, STUDENT, out=str(tmp_path / "out"), num_examples=n)
    got = summary["metrics"]
    assert set(got) == {
        "on_policy_jsd", "rkl_to_teacher", "teacher_forced_jsd", "teacher_forced_rkl_to_teacher",
        "reference_nll", "reference_nll_per_reply", *reply_stats.NAMES,
    }  # fmt: skip

    def row_means(per_token, mask):  # [n, N] -> the mean over rows of each row's token mean
        return ((per_token * mask).sum(1) / mask.sum(1)).mean()

    mask, (s, t) = reference_logits(config, n, tmp_path)  # the greedy replies
    want = dict(on_policy_jsd=row_means(numpy_jsd(s, t, 0.5), mask))
    want["rkl_to_teacher"] = row_means(numpy_rkl(s, t), mask)
    arrays = reference_arrays(config, n, tmp_path)
    logits = []
    for source in (STUDENT, config.teacher.checkpoint):
        params, fns = functional_lm(checkpoint.load_model(resolve_path(source)))
        logits.append(np.asarray(jax.jit(fns.score)(params, *arrays)))
    s, t = logits  # [n, N, V] each, on the references
    mask = arrays[3]
    want["teacher_forced_jsd"] = row_means(numpy_jsd(s, t, 0.5), mask)
    want["teacher_forced_rkl_to_teacher"] = row_means(numpy_rkl(s, t), mask)
    total, count = numpy_nll(s, arrays[2], mask)
    want["reference_nll"], want["reference_nll_per_reply"] = total.sum() / count.sum(), total.mean()
    assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-5)
    assert got["teacher_forced_jsd"] != pytest.approx(got["on_policy_jsd"], rel=1e-2)
    assert summary["reference_replies"]["reply_stopped"] == 1.0  # every target ends with EOS


def test_reference_nll_and_divergence_of_a_tiny_t5_pair():
    """make_reference_nll and make_divergence_to_teacher through per_row (batches of 8 over 8
    devices, 12 rows: a padded last batch) equal float64 references on a random encoder-
    decoder pair (the decoders' case: test_teacher_forced_scores_equal_a_float64_reference)."""
    cfg = dict(vocab_size=32, d_model=16, d_kv=4, d_ff=24, num_heads=2)
    pair = [functional_lm(T5(T5Config(**cfg, num_layers=k), rngs=nnx.Rngs(k))) for k in (1, 2)]
    (s_params, s_fns), (t_params, t_fns) = pair
    config = load_config_file(ARITH)
    config.eval.divergence_to_teacher = "fkl"
    rng = np.random.default_rng(0)
    n, p, c = 12, 6, 5
    prompt = rng.integers(3, 32, (n, p)).astype(np.int32)
    prompt_mask = np.arange(p)[None] >= rng.integers(0, p - 1, n)[:, None]  # left-padded
    completion = rng.integers(3, 32, (n, c)).astype(np.int32)
    mask = np.arange(c)[None] < rng.integers(1, c + 1, n)[:, None]  # right-padded, >= 1
    data = dict(prompt=prompt, prompt_mask=prompt_mask)
    mesh = sharding.make_mesh()
    args = (data, completion, mask, 8, mesh)
    total, count = per_row(make_reference_nll(config, s_fns), s_params, None, *args)
    to_teacher = make_divergence_to_teacher(config, s_fns, t_fns)
    fkl = mean_divergence(to_teacher, s_params, t_params, *args)

    arrays = prompt, prompt_mask, completion, mask
    s = np.asarray(jax.jit(s_fns.score)(s_params, *arrays))  # [n, c, V]
    t = np.asarray(jax.jit(t_fns.score)(t_params, *arrays))
    want_total, want_count = numpy_nll(s, completion, mask)
    np.testing.assert_allclose(total, want_total, rtol=1e-5)
    np.testing.assert_array_equal(count, want_count)
    ls, lt = log_softmax64(s), log_softmax64(t)
    per_token = (np.exp(lt) * (lt - ls)).sum(-1)  # KL(T||S), [n, c]
    assert fkl == pytest.approx(((per_token * mask).sum(1) / mask.sum(1)).mean(), rel=1e-5)


def test_results_table_shows_teacher_forced_scores_replies_and_samples():
    config = load_config_file(ARITH)
    config.eval.num_examples = 64
    replies = dict(
        reply_tokens=48.0, reply_stopped=0.0, reply_truncated=1.0, distinct_1=0.0004,
        distinct_2=0.0003, top_token_share=1.0, repetitive_replies=1.0,
    )  # fmt: skip
    start = dict(on_policy_jsd=0.54, teacher_forced_jsd=0.61, reference_nll=2.25,
                 reference_nll_per_reply=80.5, **replies)  # fmt: skip
    final = dict(start, on_policy_jsd=0.352, teacher_forced_jsd=1.3)
    summary = {
        "task": "chat", "objective": "gkd", "metric": "on_policy_jsd",
        "scores": {"start": 0.54, "final": 0.352},
        "evaluations": {"start": start, "final": final},
        "reference_replies": dict(replies, reply_tokens=35.25, reply_stopped=1.0),
        "samples": [("<|im_start|>user\nHi<|im_end|>\n", "\n" * 48)],
    }  # fmt: skip
    table = results_table(summary, config)
    lines = table.splitlines()
    header = (
        "| model | on_policy_jsd | teacher_forced_jsd | reference_nll | reference_nll_per_reply |"
    )
    assert header in lines
    assert "| student (after) | 0.3520 | 1.3000 | 2.2500 | 80.5000 |" in lines
    assert (
        "| replies of | reply_tokens | reply_stopped | distinct_1 | distinct_2 | "
        "top_token_share | repetitive_replies |"
    ) in lines
    assert "| references | 35.2 | 1.00 | 0.000 | 0.000 | 1.00 | 1.00 |" in lines
    assert "| student (after) | 48.0 | 0.00 | 0.000 | 0.000 | 1.00 | 1.00 |" in lines
    assert lines[-2] == "Sample replies of the student (after), prompt -> reply:"
    assert lines[-1].startswith("  1. <|im_start|>user\\nHi<|im_end|>\\n -> \\n\\n")
    tags = eval_scalars({"final": final}, "on_policy_jsd")
    assert tags["eval/teacher_forced_jsd"] == 1.3 and tags["eval/distinct_2"] == 0.0003


def test_metricless_task_without_teacher_names_the_fix(tmp_path, monkeypatch):
    config = load_config_file(ARITH)
    config.teacher.checkpoint = ""
    metricless = dataclasses.replace(get_task("arith"), metric_name="on_policy_jsd", metric=None)
    monkeypatch.setattr(checkpoints, "get_task", lambda name: metricless)
    with pytest.raises(FileNotFoundError, match=r"--config.teacher.checkpoint="):
        evaluate_checkpoint(config, STUDENT, out=str(tmp_path / "out"), num_examples=8)


def fake_model_dir(path) -> str:
    """What checkpoint.has_model looks for (no weights: locate_checkpoint does not read them)."""
    os.makedirs(path / "params")
    (path / checkpoint.CONFIG_FILE).write_text("{}")
    return str(path)


def test_checkpoint_paths_resolve_to_the_model_and_its_workdir(tmp_path):
    model = fake_model_dir(tmp_path / "run" / "model")
    best = fake_model_dir(tmp_path / "run" / "best_model")
    run = str(tmp_path / "run")
    assert locate_checkpoint(run) == ("ours", model, run)
    assert locate_checkpoint(model) == ("ours", model, run)
    assert locate_checkpoint(best) == ("ours", best, run)
    assert locate_checkpoint(STUDENT) == ("ours", resolve_path(STUDENT), None)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert locate_checkpoint(str(tmp_path / "hf")) == ("hf", str(tmp_path / "hf"), None)


@pytest.mark.parametrize("make", ["missing", "empty_dir"])
def test_missing_checkpoint_names_the_path_and_the_fix(tmp_path, make):
    path = tmp_path / "run"
    if make == "empty_dir":
        path.mkdir()
    with pytest.raises(FileNotFoundError, match=r"--checkpoint=.*run.*WORKDIR/model"):
        evaluate_checkpoint(load_config_file(ARITH), str(path), out=str(tmp_path / "out"))


def test_wrong_vocabulary_fails_before_decoding(tmp_path):
    small = DecoderConfig(
        vocab_size=20, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
        intermediate_size=8,
    )  # fmt: skip
    checkpoint.save_model(str(tmp_path / "model"), build_decoder(small))
    with pytest.raises(ValueError, match=r"20 logits, the tokenizer 99 tokens"):
        evaluate_checkpoint(
            load_config_file(ARITH), str(tmp_path), out=str(tmp_path / "out"), num_examples=8
        )


def test_unknown_model_family_names_the_checkpoint(tmp_path):
    hf = tmp_path / "bert"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"--checkpoint=.*bert.*cannot load"):
        evaluate_checkpoint(load_config_file(ARITH), str(hf), out=str(tmp_path / "out"))


class Built(Exception):
    pass


def test_trainer_evaluation_follows_eval_decoding(tmp_path, monkeypatch):
    seen = []

    def record(decoding, config, **kw):
        seen.append((config.eval.decoding, config.eval.beam_size, kw["vocab_size"]))
        raise Built  # the wiring is what this test checks: stop before compiling

    monkeypatch.setattr(trainer, "make_eval_decoder", record)
    config = load_config_file(os.path.join(ROOT, "configs", "arith_sft.py:role=student"))
    config.data.train_examples, config.eval.num_examples = 64, 16
    config.eval.decoding, config.eval.beam_size = "beam", 3
    with pytest.raises(Built):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert seen == [("beam", 3, config.model.vocab_size)]


@pytest.mark.slow
def test_trainer_and_cli_beam_scores_agree(tmp_path):
    """One SFT step from the shipped student, evaluated with beam search by the trainer and then
    by the CLI on WORKDIR/model: the same decoder on the same split gives the same accuracy."""
    config = load_config_file(os.path.join(ROOT, "configs", "arith_sft.py:role=student"))
    config.init.checkpoint = STUDENT
    config.steps, config.batch_size, config.data.train_examples = 1, 16, 64
    config.eval.num_examples, config.eval.batch_size = 32, 16
    config.eval.decoding, config.eval.beam_size, config.export.hf = "beam", 3, False
    summary = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    metrics = evaluate_checkpoint(config, str(tmp_path / "run"))
    assert metrics["metrics"]["accuracy"] == summary["scores"]["final"]
    assert os.path.exists(tmp_path / "run" / "eval_eval" / "predictions.jsonl")
