"""Hugging Face directories in and out: safetensors, load_pretrained / save_pretrained against
transformers' own loader, tokenizer stop ids, shared vocabularies, and the export entry point."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from gkd_jax.data.hf_tokenizer import (  # noqa: E402
    check_same_vocabulary,
    load_hf_tokenizer,
    stop_ids,
)
from gkd_jax.models import load_pretrained, save_pretrained, sources  # noqa: E402
from gkd_jax.models.safetensors_io import SafetensorsReader, write_safetensors  # noqa: E402
from gkd_jax.training import (  # noqa: E402
    checkpoint,
    trainer,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 96


# ---------------------------------------------------------------- safetensors
def test_safetensors_match_the_reference_library(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "b.bias": rng.standard_normal((7,)).astype(np.float16),
        "c.ids": rng.integers(0, 9, (2, 2, 2)).astype(np.int32),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))  # written by the reference
    reader = SafetensorsReader(str(tmp_path))
    assert reader.names == set(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(reader.get(k), v)
    out = tmp_path / "ours"
    write_safetensors(str(out), tensors)
    for k, v in load_file(str(out / "model.safetensors")).items():  # read by the reference
        np.testing.assert_array_equal(v, tensors[k])


def test_safetensors_bfloat16_and_shards(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"t{i}": rng.standard_normal((64, 32)).astype(ml_dtypes.bfloat16) for i in range(5)}
    files = write_safetensors(str(tmp_path), tensors, max_shard_bytes=3 * 64 * 32 * 2)
    assert len(files) == 2 and (tmp_path / "model.safetensors.index.json").exists()
    reader = SafetensorsReader(str(tmp_path))
    for k, v in tensors.items():
        got = reader.get(k)
        assert got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got.astype(np.float32), v.astype(np.float32))
    with pytest.raises(KeyError, match="nope"):
        reader.get("nope")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        SafetensorsReader(str(tmp_path / "empty_dir_missing"))


# ---------------------------------------------------------------- tiny models
def tiny_tokenizer(path, vocab=V, eos="<eos>", word="w"):
    specials = ["<pad>", "<bos>", "<eos>", "<|end|>"]
    words = [f"{word}{i}" for i in range(vocab - len(specials))]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, "<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token=eos
    )
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    fast.save_pretrained(str(path))
    return fast


def torch_qwen2(path, seed=0, vocab=V, hidden=32, layers=2, **kw):
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, tie_word_embeddings=False,
        attn_implementation="eager", **kw,
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # biases and norms away from their 0/1 init
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(path), max_shard_size="40KB")  # sharded: index + several files
    return model


def batch(seed=0, b=3, t=9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, V, (b, t)).astype(np.int64)
    mask = np.ones((b, t), np.int64)
    mask[1, 6:] = 0  # right padding
    mask[2, 3:] = 0
    return ids, mask


def torch_logits(model, ids, mask, **kw):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw)
    return out.logits.float().numpy()


def assert_valid_close(ours, ref, mask, tol=1e-4):
    m = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[m], ref[m], atol=tol, rtol=0)


def test_load_pretrained_sharded_qwen2_matches_transformers(tmp_path):
    ref = torch_qwen2(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    ours = load_pretrained(str(tmp_path / "m"))
    ids, mask = batch()
    assert_valid_close(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask)),
                       torch_logits(ref, ids, mask), mask)  # fmt: skip


def test_save_pretrained_round_trip_through_transformers(tmp_path):
    ref = torch_qwen2(tmp_path / "m", seed=3)
    tok = tiny_tokenizer(tmp_path / "tok")
    ours = load_pretrained(str(tmp_path / "m"))
    save_pretrained(ours, str(tmp_path / "out"), tokenizer=tok, stop_ids=(2, 3))
    back = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "out"), attn_implementation="eager"
    ).eval()
    assert type(back).__name__ == "Qwen2ForCausalLM"
    ids, mask = batch(1)
    np.testing.assert_allclose(torch_logits(back, ids, mask), torch_logits(ref, ids, mask),
                               atol=1e-6, rtol=0)  # fmt: skip
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 3] and gen["pad_token_id"] == 0
    # transformers may add a default <|endoftext|> past the end when it sees a qwen2 config.
    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out")).get_vocab()
    assert tok.get_vocab().items() <= loaded.items()


def test_bfloat16_export_loads(tmp_path):
    torch_qwen2(tmp_path / "m", seed=4)
    save_pretrained(load_pretrained(str(tmp_path / "m")), str(tmp_path / "bf"), dtype="bfloat16")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf"))
    assert next(back.parameters()).dtype == torch.bfloat16
    again = load_pretrained(str(tmp_path / "bf"))  # and we read bf16 checkpoints
    ids, mask = batch(2)
    ref = torch_logits(back.float(), ids, mask)
    assert_valid_close(again(jnp.asarray(ids), attention_mask=jnp.asarray(mask)), ref, mask)


def test_our_arith_decoder_exports_as_llama(tmp_path):
    """The embedded task's student (our format) becomes a transformers LlamaForCausalLM."""
    from gkd_jax.data.resources import resolve_path

    model = checkpoint.load_model(resolve_path("builtin:arith/student_sft"))
    save_pretrained(model, str(tmp_path / "hf"))
    back = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "hf"), attn_implementation="eager"
    ).eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    ids, mask = batch(3)
    ids = ids % 99
    assert_valid_close(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)),
                       torch_logits(back, ids, mask), mask)  # fmt: skip


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        load_pretrained(str(tmp_path / "missing" / "x" / "y"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' is not supported; supported: .*llama"):
        load_pretrained(str(tmp_path / "odd"))
    torch_qwen2(tmp_path / "m", seed=5)
    index = tmp_path / "m" / "model.safetensors.index.json"
    meta = json.loads(index.read_text())
    dropped = "model.layers.1.mlp.up_proj.weight"
    del meta["weight_map"][dropped]
    index.write_text(json.dumps(meta))
    with pytest.raises((KeyError, ValueError), match="up_proj"):
        load_pretrained(str(tmp_path / "m"))


# ---------------------------------------------------------------- tokenizers and vocabularies
def test_stop_ids_come_from_tokenizer_and_generation_config(tmp_path):
    tok = tiny_tokenizer(tmp_path, eos="<|end|>")
    assert stop_ids(tok, str(tmp_path)) == (3,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3]}))
    assert stop_ids(tok, str(tmp_path)) == (3, 2)  # Llama 3 style: several stops


def test_pad_falls_back_to_eos(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path / "nopad"))
    loaded = load_hf_tokenizer(str(tmp_path / "nopad"))
    assert loaded.pad_token_id == loaded.eos_token_id == 2


def test_different_tokenizers_are_refused(tmp_path):
    a = tiny_tokenizer(tmp_path / "a")
    b = tiny_tokenizer(tmp_path / "b", word="x")
    check_same_vocabulary(a, tiny_tokenizer(tmp_path / "c"), "a", "c")
    with pytest.raises(ValueError, match="share one vocabulary"):
        check_same_vocabulary(a, b, "a", "b")


def test_padded_teacher_vocabulary_is_cut_to_the_shared_one(tmp_path):
    """Qwen2.5-3B vs 72B: one tokenizer, embedding tables padded to different sizes."""
    from gkd_jax.config.loading import load_config_file

    tok = tiny_tokenizer(tmp_path / "s")
    torch_qwen2(tmp_path / "s", seed=6)
    torch_qwen2(tmp_path / "t", seed=7, vocab=V + 32)
    tok.save_pretrained(str(tmp_path / "t"))
    config = load_config_file(os.path.join(REPO, "configs", "chat.py"))
    config.unlock()
    config.init.checkpoint = config.tokenizer = str(tmp_path / "s")
    config.teacher.checkpoint = str(tmp_path / "t")
    student, teacher = (
        load_pretrained(config.init.checkpoint),
        load_pretrained(config.teacher.checkpoint),
    )
    assert sources.shared_vocab_size(config, tok, student, teacher) == V
    loaded = load_hf_tokenizer(str(tmp_path / "s"))  # as the trainer loads it
    assert sources.shared_vocab_size(config, loaded, student, teacher) == V
    tiny_tokenizer(tmp_path / "t", vocab=V + 32, word="x")  # now the teacher's differs
    with pytest.raises(ValueError, match="share one vocabulary"):
        sources.shared_vocab_size(config, tok, student, teacher)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def bench_pair(tmp_path_factory):
    """The shared benchmark pair, made small: ../shared/bench/make_tiny_hf_models.py if present,
    else the same layout built here (Qwen2 teacher/student, word tokenizer, messages JSONL)."""
    out = tmp_path_factory.mktemp("bench")
    maker = os.path.join(REPO, "..", "shared", "bench", "make_tiny_hf_models.py")
    if os.path.exists(maker):
        subprocess.run(
            [sys.executable, maker, "--out", str(out), "--vocab", "512", "--examples", "48",
             "--prompt-words", "8", "--completion-words", "8"],
            check=True, capture_output=True,
        )  # fmt: skip
        return out
    tok = tiny_tokenizer(out / "tokenizer", vocab=512, eos="<|end|>")
    for name, seed, hidden in (("student", 0, 32), ("teacher", 1, 64)):
        torch_qwen2(out / name, seed=seed, vocab=512, hidden=hidden)
        tok.save_pretrained(str(out / name))
    rng = np.random.default_rng(0)
    with open(out / "prompts.jsonl", "w") as f:
        for _ in range(48):
            words = [f"w{i}" for i in rng.integers(0, 500, 16)]
            f.write(json.dumps({"messages": [
                {"role": "user", "content": " ".join(words[:8])},
                {"role": "assistant", "content": " ".join(words[8:])},
            ]}) + "\n")  # fmt: skip
    return out


def test_chat_config_trains_and_exports(bench_pair, tmp_path):
    """configs/chat.py on local HF directories: GKD runs, and the exported student loads in
    transformers with the logits of our trained checkpoint; gkd_jax.export reproduces it."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
    )
    work = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "gkd_jax.train", f"--config=configs/chat.py:{bench_pair},smoke",
         f"--workdir={work}", "--config.eval.num_examples=8", "--config.eval.batch_size=8",
         "--config.max_new_tokens=16", "--config.data.max_prompt_len=16"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "kept 48 of 48 records" in proc.stdout
    summary = json.loads((work / "results.json").read_text())
    assert set(summary["scores"]) == {"start", "final"}
    assert all(np.isfinite(v) and v >= 0 for v in summary["scores"].values())
    trained = checkpoint.load_model(str(work / "model"))
    exported = transformers.AutoModelForCausalLM.from_pretrained(
        str(work / "hf_model"), attn_implementation="eager"
    ).eval()
    ids, mask = batch(4)
    ids = ids % 512
    ref = torch_logits(exported, ids, mask)
    assert_valid_close(trained(jnp.asarray(ids), attention_mask=jnp.asarray(mask)), ref, mask)
    # The trained student differs from where it started: training reached the export.
    start = transformers.AutoModelForCausalLM.from_pretrained(str(bench_pair / "student")).eval()
    assert np.abs(torch_logits(start, ids, mask) - ref).max() > 1e-6
    proc = subprocess.run(
        [sys.executable, "-m", "gkd_jax.export", f"--model={work / 'model'}",
         f"--out={tmp_path / 'again'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "again")).eval()
    np.testing.assert_allclose(torch_logits(again, ids, mask), ref, atol=1e-6)
    gen = json.loads((tmp_path / "again" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == transformers.AutoTokenizer.from_pretrained(
        str(bench_pair / "student")
    ).convert_tokens_to_ids("<|end|>")


def test_hub_ids_resolve_through_the_hub_cache(tmp_path, monkeypatch):
    """A hub id goes to huggingface_hub.snapshot_download (here faked: tests never download)."""
    import huggingface_hub

    torch_qwen2(tmp_path / "cache", seed=8)
    calls = []

    def fake_download(repo_id, allow_patterns=None):
        calls.append(repo_id)
        if repo_id != "org/tiny":
            raise huggingface_hub.errors.RepositoryNotFoundError("no such repo")
        return str(tmp_path / "cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert load_pretrained("org/tiny").cfg.vocab_size == V and calls == ["org/tiny"]
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hugging Face hub"):
        load_pretrained("org/missing")


def torch_t5_dir(path, seed, d_model, layers, vocab=V):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=2,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    model.save_pretrained(str(path))
    return model


def test_t5_teacher_and_student_train_end_to_end(tmp_path):
    """Encoder-decoder GKD through the real loop: plain prompt/completion data, on-policy
    samples from a T5 student, a T5 teacher, evaluation, export as T5ForConditionalGeneration."""
    from gkd_jax.config.loading import load_config_file

    tok = tiny_tokenizer(tmp_path / "tok")
    for name, seed, d in (("student", 0, 32), ("teacher", 1, 64)):
        torch_t5_dir(tmp_path / name, seed, d, 2)
        tok.save_pretrained(str(tmp_path / name))
    rng = np.random.default_rng(0)
    with open(tmp_path / "data.jsonl", "w") as f:
        for _ in range(40):
            words = [f"w{i}" for i in rng.integers(0, V - 4, 10)]
            f.write(json.dumps({"prompt": " ".join(words[:6]), "completion": " ".join(words[6:])}))
            f.write("\n")
    config = load_config_file(os.path.join(REPO, "configs", "chat.py:smoke"))
    config.unlock()
    config.init.checkpoint = config.tokenizer = str(tmp_path / "student")
    config.teacher.checkpoint = str(tmp_path / "teacher")
    config.data.train_file = str(tmp_path / "data.jsonl")
    config.max_new_tokens, config.data.max_prompt_len = 8, 8
    config.gkd.lmbda, config.steps = 1.0, 3
    summary = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert set(summary["scores"]) == {"start", "final"}
    assert all(np.isfinite(v) for v in summary["scores"].values())
    trained = checkpoint.load_model(str(tmp_path / "run" / "model"))
    exported = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        str(tmp_path / "run" / "hf_model")
    ).eval()
    ids, mask = batch(5)
    dec = np.concatenate([np.zeros((3, 1), np.int64), ids[:, :4]], axis=1)
    ref = torch_logits(exported, ids, mask, decoder_input_ids=torch.tensor(dec))
    ours = trained(jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                   decoder_input_ids=jnp.asarray(dec))  # fmt: skip
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)
