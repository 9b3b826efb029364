"""configs/xsum.py, wmt_en_de.py, gsm8k.py, flan2021.py: their `:arg`, the paper's values, and
each config's three stages (SFT of the student, SFT of the teacher, GKD from the two) end to end
through the real loop on JSONL fixtures, with tiny random T5 models (Hugging Face dirs made
here)."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from gkd_jax.config.checks import validate_config  # noqa: E402
from gkd_jax.config.loading import load_config_file  # noqa: E402
from gkd_jax.training import trainer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("xsum", "wmt_en_de", "gsm8k", "flan2021")
V = 64
WORDS = [f"w{i}" for i in range(V - 3)]


def config(task, arg=""):
    path = os.path.join(REPO, "configs", f"{task}.py")
    return load_config_file(f"{path}:{arg}" if arg else path)


# ---------------------------------------------------------------- the paper's values
def test_paper_recipe_values():
    x = config("xsum")
    assert (x.steps, x.batch_size, x.optim.name, x.optim.schedule) == (40_000, 32, "adafactor",
                                                                       "linear")  # fmt: skip
    assert (x.optim.warmup_steps, x.optim.cooldown_steps) == (2_000, 10_000)
    assert (x.data.max_prompt_len, x.max_new_tokens, x.dropout_rate) == (1024, 64, 0.0)
    assert x.optim.learning_rate == 1e-3  # T5-small, not reverse KL
    assert config("xsum", "div=rkl").optim.learning_rate == 3e-4
    assert config("xsum", "base").optim.learning_rate == 3e-4
    assert x.init.checkpoint == "google/t5-small-lm-adapt"
    assert x.teacher.checkpoint == "google/t5-xl-lm-adapt"
    assert (x.gkd.divergence, x.gkd.beta, x.gkd.lmbda) == ("jsd", 0.9, 1.0)
    assert (x.gkd.reduction, x.sampling.temperature, x.gkd.teacher_temperature) == (
        "sequence", 1.0, 1.0)  # fmt: skip
    w = config("wmt_en_de", "student=large,div=fkl,lmbda=0.5")
    assert (w.steps, w.optim.warmup_steps, w.optim.cooldown_steps) == (100_000, 5_000, 0)
    assert (w.data.max_prompt_len, w.max_new_tokens) == (80, 80)
    assert (w.eval.decoding, w.eval.beam_size) == ("beam", 4)
    assert (w.init.checkpoint, w.gkd.divergence, w.gkd.lmbda) == (
        "google/t5-large-lm-adapt", "fkl", 0.5)  # fmt: skip
    g = config("gsm8k", "stage=sft_teacher")
    assert (g.objective, g.init.checkpoint, g.dropout_rate) == ("sft", "google/flan-t5-xl", 0.05)
    assert (g.data.max_prompt_len, g.max_new_tokens) == (512, 320)
    assert config("gsm8k").gkd.teacher_temperature == 0.1
    r = config("gsm8k", "student=base,runs=/r")
    assert r.init.checkpoint == "/r/gsm8k_sft_student_base/hf_model"
    assert r.teacher.checkpoint == "/r/gsm8k_sft_teacher_xl/hf_model"
    for task in TASKS:
        validate_config(config(task))


def test_flan2021_recipe_values():
    """configs/flan2021.py: the paper's models and divergence; FLAN 2021 from the hub by name
    (its last rows held out); nothing is downloaded to build the config."""
    f = config("flan2021", "student=large")
    assert f.init.checkpoint == "google/flan-t5-large"
    assert f.teacher.checkpoint == "google/flan-t5-xl"
    assert (f.objective, f.gkd.divergence, f.gkd.lmbda) == ("gkd", "rkl", 1.0)
    assert (f.data.source, f.data.dataset) == ("hf", "")  # "": paper_tasks' hub name
    assert f.data.train_split == "train[:-2000]" and f.eval.num_examples == 2000
    shape = (f.steps, f.batch_size, f.data.max_prompt_len, f.max_new_tokens)
    assert shape == (50_000, 128, 2048, 256)
    assert (f.data.prompt_overflow, f.data.strict) == ("truncate_left", False)
    assert config("flan2021", "div=jsd0.9,lmbda=0").gkd.divergence == "jsd"
    local = config("flan2021", "data=/d")
    assert (local.data.source, local.data.train_file) == ("jsonl", "/d/train.jsonl")
    validate_config(f)
    tfds = config("flan2021")
    tfds.data.source = "tfds"
    with pytest.raises(ValueError, match="no TFDS dataset"):
        validate_config(tfds)


@pytest.mark.parametrize(
    "arg, match",
    [("div=kl", "div='kl'"), ("div=jsd1.5", "jsd1.5"), ("student=xxl", "student='xxl'"),
     ("stage=rl", "stage='rl'"), ("lr=1", "unknown key 'lr'"), ("tiny", "'tiny'")],
)  # fmt: skip
def test_bad_arg_parts_name_themselves(arg, match):
    with pytest.raises(ValueError, match=match):
        config("xsum", arg)


# ---------------------------------------------------------------- end to end
def tokenizer(path):
    specials = ["<pad>", "</s>", "<unk>"]  # T5's ids: pad 0 (also the decoder start), eos 1
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + WORDS)}, "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def t5_dir(path, tok, seed, d_model):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(
        vocab_size=V, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    transformers.T5ForConditionalGeneration(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))


def words(rng, n):
    return " ".join(rng.choice(WORDS, n))


def record(task, rng):
    if task == "xsum":
        return {"document": words(rng, 12), "summary": words(rng, 4)}
    if task == "wmt_en_de":
        return {"en": words(rng, 6), "de": words(rng, 6)}
    if task == "flan2021":
        return {"inputs": words(rng, 10), "targets": words(rng, 3)}
    n = int(rng.integers(1, 9))
    return {"question": words(rng, 8), "answer": f"{words(rng, 4)} <<{n}*1={n}>>{n}\n#### {n}"}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Tiny T5 student ("small") and teacher ("xl") sharing a tokenizer, and JSONL per task.
    One shape for both (different weights): the wiring is under test, not the sizes."""
    root = tmp_path_factory.mktemp("paper")
    tok = tokenizer(root / "tok")
    t5_dir(root / "models" / "small", tok, 0, 16)
    t5_dir(root / "models" / "xl", tok, 1, 16)
    rng = np.random.default_rng(0)
    for task in TASKS:
        for split, n in (("train", 32), ("eval", 8)):
            path = root / "data" / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(record(task, rng)) + "\n" for _ in range(n)))
    return root


@pytest.mark.parametrize("task", TASKS)
def test_sft_then_gkd_end_to_end(task, fixtures):
    runs = fixtures / "runs"
    local = f"smoke,models={fixtures / 'models'},data={fixtures / 'data' / task}"
    student = trainer.train_and_evaluate(
        config(task, f"stage=sft,{local}"), str(runs / f"{task}_sft_student_small")
    )
    teacher = trainer.train_and_evaluate(
        config(task, f"stage=sft_teacher,{local}"), str(runs / f"{task}_sft_teacher_xl")
    )
    gkd_config = config(task, f"div=jsd0.5,lmbda=1,runs={runs},{local}")
    # The GKD stage starts from the two SFT stages' exported models.
    assert gkd_config.init.checkpoint == str(runs / f"{task}_sft_student_small" / "hf_model")
    if task == "wmt_en_de":  # or their own checkpoints, as launch/sweeps/paper.py passes them
        gkd_config.init.checkpoint = str(runs / f"{task}_sft_student_small" / "model")
        gkd_config.teacher.checkpoint = str(runs / f"{task}_sft_teacher_xl" / "model")
    gkd = trainer.train_and_evaluate(gkd_config, str(runs / f"{task}_gkd"))
    metric = {"xsum": "rouge2", "wmt_en_de": "bleu", "gsm8k": "accuracy",
              "flan2021": "exact_match"}[task]  # fmt: skip
    for summary in (student, teacher, gkd):
        assert summary["metric"] == metric and summary["steps"] == 3
        assert all(np.isfinite(v) for v in summary["scores"].values())
    assert (student["objective"], teacher["objective"], gkd["objective"]) == ("sft", "sft", "gkd")
    # The teacher GKD loads is the SFT'd one: it scores as the teacher stage's final model did.
    assert gkd["scores"]["teacher"] == pytest.approx(teacher["scores"]["final"])
    assert gkd["scores"]["start"] == pytest.approx(student["scores"]["final"])
